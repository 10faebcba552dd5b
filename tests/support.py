"""Run the toolkit's commands as a user would: `python ...` from the repo root, in a given environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from redis import Redis

from cli import cli
from config.settings import PROJECT_ROOT
from launcher.children import descendants

NOT_COPIED = shutil.ignore_patterns(
    ".venv", ".git", "var", "__pycache__", ".hypothesis", ".mypy_cache", ".ruff_cache"
)


def copy_of_repo(into: Path) -> Path:
    """A copy of the repo as a clone has it (no venv, runtime data or caches), at `into`/rqkit."""
    copy = into / "rqkit"
    shutil.copytree(PROJECT_ROOT, copy, ignore=NOT_COPIED)
    return copy


def python(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` to completion; its output as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_python(*args: str, env: dict[str, str] | None = None, **options: Any) -> subprocess.Popen[Any]:
    """Start `python ARGS` in the background."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=PROJECT_ROOT, env={**os.environ, **(env or {})}, **options
    )


def run(*args: str) -> Result:
    """`python cli.py ARGS` in-process (click's runner)."""
    return CliRunner().invoke(cli, list(args))


def run_json(*args: str) -> Any:
    """The one JSON document `python cli.py ARGS --json` prints, after checking it exited 0."""
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_until(
    condition: Callable[[], Any], timeout: float = 30, what: str = "condition", every: float = 0.1
) -> Any:
    """Poll `condition` until it returns something true, and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def blocked_clients(connection: Redis) -> list[dict[str, Any]]:
    """The clients of this Redis blocked waiting for a job (a worker's BLPOP or BLMOVE)."""
    return [client for client in connection.client_list() if client["cmd"] in ("blpop", "blmove")]


def work_horses(worker: int) -> set[int]:
    """A toolkit worker's work-horses (and what their jobs started): its descendants but its own children,
    the fork server that forks the horses and RQ's scheduler."""
    return {pid for pid in descendants(worker) if parent(pid) != worker}


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None
