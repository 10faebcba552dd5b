"""Run the toolkit's commands as a user would: `python ...` from the repo root, in a given environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from click.testing import CliRunner, Result

from cli import cli
from config.settings import PROJECT_ROOT


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
