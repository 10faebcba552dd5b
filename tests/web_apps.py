"""The example web apps (examples/) as real HTTP servers on 127.0.0.1, started as their READMEs say, from
the repo root: `flask --app examples/flask_app/app.py run` and `python examples/django_site/manage.py
runserver --noreload`. For tests/test_examples.py and bench/web_enqueue.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from config.settings import PROJECT_ROOT
from launcher.redis_server import free_port
from tests.support import wait_until

BIN = Path(sys.executable).parent
EXAMPLES = {
    "flask": [str(BIN / "flask"), "--app", "examples/flask_app/app.py", "run", "--port", "{port}"],
    "django": [sys.executable, "examples/django_site/manage.py", "runserver", "--noreload", "{address}"],
}
START_TIMEOUT = 90  # s: the framework's imports and the toolkit's gateway, on a busy machine


@contextmanager
def serving(name: str, log: Path) -> Iterator[str]:
    """Example `name` on a free port, in this process's environment, its output in `log`; its base URL
    once its home page answers. Stopped (with its gateway) at the end."""
    port = free_port()
    command = [word.format(port=port, address=f"127.0.0.1:{port}") for word in EXAMPLES[name]]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )

    def answers() -> bool:
        assert process.poll() is None, f"the {name} example exited: {log.read_text()[-3000:]}"
        try:
            return httpx.get(url + "/", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=START_TIMEOUT, what=f"the {name} example's home page", every=0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
