"""The example web apps (examples/) as real HTTP servers on 127.0.0.1, started as their READMEs say: the
frameworks' development servers from the repo root (`flask --app examples/flask_app/app.py run`,
`python examples/django_site/manage.py runserver --noreload`), or waitress from the example's folder.
For tests/test_examples.py and bench/web_enqueue.py."""

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
# The same apps under a production WSGI server: the example's folder, and its application there.
WSGI = {"flask": ("flask_app", "app:app"), "django": ("django_site", "config.wsgi:application")}
START_TIMEOUT = 90  # s: the framework's imports and the toolkit's gateway, on a busy machine


@contextmanager
def serving(name: str, log: Path, waitress: bool = False) -> Iterator[str]:
    """Example `name` on a free port (its development server, or `waitress`), in this process's
    environment, its output in `log`; its base URL once its home page answers. Stopped (with its
    gateway) at the end."""
    port = free_port()
    address, folder = f"127.0.0.1:{port}", PROJECT_ROOT
    command = [word.format(port=port, address=address) for word in EXAMPLES[name]]
    if waitress:
        folder = PROJECT_ROOT / "examples" / WSGI[name][0]
        command = [str(BIN / "waitress-serve"), "--listen", address, WSGI[name][1]]
    url = f"http://{address}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=folder, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
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
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as in the server's terminal (SIGINT to its process group); the server and its gateway
    must be gone within 15 s, else they are killed and that is an error."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(15)
        wait_until(lambda: not group_alive(process.pid), timeout=15, what="the gateway to exit")
    except (subprocess.TimeoutExpired, AssertionError):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError("the example or its gateway outlived Ctrl-C") from None


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
