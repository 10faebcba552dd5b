"""A running `python cli.py up` for the tests, with a private environment, and a look at its parts."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from launcher.children import descendants
from launcher.redis_server import free_port
from tests.support import python, start_python, wait_until


class Up:
    """A running `python cli.py up --workers 2` and the CLI beside it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process = start_python(
            "cli.py", "up", "--workers", "2", env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return python("cli.py", *args, env=self.env)

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    def ready(self) -> bool:
        """Both of its workers registered (other tests' workers may share the server)."""
        assert self.process.poll() is None, self.log.read_text()
        done = self.cli("info", "--json")
        if done.returncode:
            return False
        ours = descendants(self.process.pid)
        return sum(worker["pid"] in ours for worker in json.loads(done.stdout)["workers"]) == 2

    def part(self, word: str) -> int | None:
        """The pid of its child process with `word` (e.g. launcher.mail_sink, redis-server) as an argument
        or a program's file name (redis-server rewrites its command line as one string with spaces)."""
        for pid in descendants(self.process.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
            except OSError:
                continue
            if any(arg.rpartition(b"/")[2] == word.encode() for arg in command):
                return pid
        return None

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(60)


@contextmanager
def running_ups(tmp_path: Path) -> Iterator[Callable[[str], Up]]:
    """A function that starts `up` on a Redis URL and waits for its workers; each is killed at the end."""
    started: list[Up] = []

    def start(redis_url: str) -> Up:
        env = {
            "REDIS_URL": redis_url,
            "RQKIT_VAR_DIR": str(tmp_path / "var"),
            "RQKIT_DASHBOARD_PORT": str(free_port()),
            "RQKIT_SCHEDULER_INTERVAL": "1",
            "RQKIT_MEDIA_ROOT": str(tmp_path),
            "RQKIT_SMTP_SINK_PORT": str(free_port()),
        }
        up = Up(env, tmp_path / "up.log")
        started.append(up)
        wait_until(up.ready, what="two workers")
        return up

    try:
        yield start
    finally:
        for up in started:
            if up.process.poll() is None:
                up.process.send_signal(signal.SIGKILL)
                up.process.wait()
