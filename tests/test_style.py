"""The code stays as STYLE.md asks: ruff-clean, ruff-formatted, mypy-clean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config.settings import PROJECT_ROOT

CHECKS = {
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy", *"config workers jobs scheduler ops launcher commands rqkit cli.py".split()],
}


@pytest.mark.parametrize("name", CHECKS)
def test_style(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *CHECKS[name]], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
