"""rqkit.Toolkit, the web app's way in: a project with packages named like the toolkit's enqueues through
it; what the toolkit refuses is refused in one line and nothing is queued; a Redis that is down, a
gateway that dies or hangs, threads and forks each get a clear answer, and the next call works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from redis import Redis

from launcher.redis_server import free_port
from rqkit import Refused, Toolkit, Unavailable
from tests.conftest import Media


@pytest.fixture
def toolkit() -> Iterator[Toolkit]:
    with Toolkit(timeout=20) as made:
        yield made


def queued(connection: Redis) -> int:
    return sum(connection.llen(key) for key in connection.scan_iter("rq:queue:*"))


def test_a_project_with_its_own_config_jobs_and_scheduler_packages_enqueues(
    tmp_path: Path, connection: Redis, toolkit: Toolkit, run_jobs: Callable[[], None]
) -> None:
    for package in ("config", "jobs", "scheduler"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"OWNER = 'the web app'  # {package}\n")
    script = textwrap.dedent(
        """
        import json, sys
        import config, jobs, scheduler
        from rqkit import Toolkit
        with Toolkit(timeout=20) as toolkit:
            job = toolkit.enqueue("sleep", 0)
        owners = {name: sys.modules[name].OWNER for name in ("config", "jobs", "scheduler")}
        print(json.dumps({"job": job, "owners": owners}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["owners"] == dict.fromkeys(("config", "jobs", "scheduler"), "the web app")
    assert (said["job"]["job"], said["job"]["queue"], said["job"]["status"]) == ("sleep", "default", "queued")
    run_jobs()
    view = toolkit.job(said["job"]["id"])
    assert view is not None
    assert (view["status"], view["result"], view["reason"]) == ("finished", {"slept": 0}, None)
    assert view["enqueued_at"] <= view["started_at"] <= view["ended_at"]


def test_a_failed_job_says_why_in_one_line(
    media: Media, connection: Redis, run_jobs: Callable[[], None]
) -> None:
    (media.root / "notes.jpg").write_bytes(b"not an image at all")
    with Toolkit(timeout=20) as toolkit:  # made in the media root the fixture set
        job = toolkit.enqueue("thumbnail", "notes.jpg")
        run_jobs()
        view = toolkit.job(job["id"])
    assert view is not None and view["status"] == "failed" and view["result"] is None
    assert view["reason"].startswith("JobInputError: ") and "\n" not in view["reason"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.enqueue("thumbnial", "cat.jpg"), "did you mean 'thumbnail'?"),
        (lambda t: t.enqueue("sleep", -1), "SECONDS must be a number"),
        (lambda t: t.enqueue("sleep", 1, 2, 3), "sleep: too many positional arguments"),
        (lambda t: t.submit("sleep", (1,), queue="nobody-listens"), "is not configured"),
        (lambda t: t.submit("sleep", (1,), at=datetime(2030, 1, 1)), "timezone-aware"),
        (lambda t: t.enqueue("email", to="not an address", subject="Hi", text="."), "not an address"),
        (lambda t: t.enqueue("sleep", float("nan")), "is not a JSON number"),
    ],
    ids=["unknown", "range", "arguments", "queue", "naive-time", "address", "not-json"],
)
def test_what_the_toolkit_refuses_is_refused_and_nothing_is_queued(
    call: Callable[[Toolkit], object], message: str, toolkit: Toolkit, connection: Redis
) -> None:
    with pytest.raises(Refused) as refused:
        call(toolkit)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert queued(connection) == 0
    assert toolkit.enqueue("sleep", 0)["status"] == "queued"  # and the gateway goes on


def test_a_redis_that_is_down_is_unavailable_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with Toolkit(timeout=60) as toolkit, pytest.raises(Unavailable) as down:
        toolkit.enqueue("sleep", 0)
    assert "not reachable" in str(down.value) or "Redis" in str(down.value)


def test_settings_that_cannot_load_are_refused_when_the_toolkit_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RQKIT_SERIALIZER", "yaml")
    with pytest.raises(Refused, match="RQKIT_SERIALIZER"):
        Toolkit(timeout=20)


def test_a_gateway_that_dies_or_hangs_is_replaced(toolkit: Toolkit, connection: Redis) -> None:
    assert toolkit._child is not None
    toolkit._child.kill()
    toolkit._child.wait()
    assert toolkit.enqueue("sleep", 0)["status"] == "queued"  # a new gateway, at once
    hung = toolkit._child
    assert hung is not None
    toolkit.timeout = 1
    os.kill(hung.pid, signal.SIGSTOP)
    with pytest.raises(Unavailable, match="may or may not have been carried out"):
        toolkit.enqueue("sleep", 0)
    assert hung.poll() == -signal.SIGKILL  # killed at once, not left behind
    toolkit.timeout = 20
    assert toolkit.enqueue("sleep", 0)["status"] == "queued"
    assert queued(connection) == 2  # the hung gateway never read its request


def test_threads_share_one_toolkit(toolkit: Toolkit, connection: Redis) -> None:
    ids: list[str] = []

    def enqueue_some() -> None:
        for _ in range(25):
            ids.append(toolkit.enqueue("sleep", 0)["id"])

    threads = [threading.Thread(target=enqueue_some) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(set(ids)) == 200 and queued(connection) == 200


def test_a_forked_process_gets_its_own_gateway(toolkit: Toolkit, connection: Redis) -> None:
    parents = toolkit._child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a pre-forking server's worker process
        try:
            os.write(write, toolkit.enqueue("sleep", 0)["id"].encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    childs = os.read(read, 100).decode()
    os.close(read)
    assert toolkit.enqueue("sleep", 0)["id"] != childs and childs
    assert toolkit._child is parents and parents is not None and parents.poll() is None
    assert queued(connection) == 2
