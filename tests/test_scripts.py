"""The README's two commands on a copy of the repo without a venv: scripts/run installs what the toolkit
needs to run and nothing more; scripts/test adds the test and dev extras to the same venv."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import copy_of_repo

pytestmark = pytest.mark.slow


def run_script(copy: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(copy / "scripts" / script), *args], cwd=copy, capture_output=True, text=True)


def importable(copy: Path, module: str) -> bool:
    found = subprocess.run([str(copy / ".venv/bin/python"), "-c", f"import {module}"], capture_output=True)
    return found.returncode == 0


@pytest.mark.timeout(600)
def test_run_installs_the_runtime_and_test_adds_the_extras(tmp_path: Path) -> None:
    copy = copy_of_repo(tmp_path)
    ran = run_script(copy, "run", "--help")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "Usage:" in ran.stdout and "--demo" in ran.stdout
    assert importable(copy, "rq_scheduler") and importable(copy, "PIL")
    assert not importable(copy, "pytest") and not (copy / ".venv/bin/ruff").exists()

    tested = run_script(copy, "test", "--version")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "pytest" in tested.stdout + tested.stderr
    assert importable(copy, "hypothesis") and (copy / ".venv/bin/ruff").exists()
    assert "setting up" not in run_script(copy, "run", "--help").stderr  # the extras don't undo the stamp
