"""Every shell example of the README and docs/ runs as printed (tests/readme_driver.py), on a copy of the
repo, in network and PID namespaces of its own so that the defaults the examples rely on (Redis on
127.0.0.1:6379, the dashboard on :9181, the SMTP sink on :8025) belong to this run alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rq_suite.suite import CLEARED, namespace, namespace_refused
from tests.support import copy_of_repo

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_every_shell_example_runs_as_printed(tmp_path: Path) -> None:
    if refused := namespace_refused():
        pytest.skip(refused)
    copy = copy_of_repo(tmp_path)
    venv = Path(sys.executable).parent
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in CLEARED and not name.startswith(("RQKIT_", "RQ_", "PYTEST_"))
    }
    env |= {
        "PATH": os.pathsep.join([str(venv), env.get("PATH", os.defpath)]),
        "VIRTUAL_ENV": str(venv.parent),
    }
    report = tmp_path / "report.json"
    command = [*namespace(), sys.executable, "-m", "tests.readme_driver", str(report)]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=840)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(report.read_text())
    assert found["ran"] > 40 and found["services"] >= 8, found
    assert found["failures"] == {}, json.dumps(found, indent=1)
