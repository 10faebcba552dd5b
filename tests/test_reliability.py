"""Faults: workers killed, Redis restarted or away. Nothing queued is lost, nothing runs twice."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from redis import Redis

from jobs import enqueue
from jobs.monitoring import wait_for
from launcher.children import descendants
from tests.support import wait_until

pytestmark = pytest.mark.slow


def blocked_clients(connection: Redis) -> list[dict[str, Any]]:
    return [client for client in connection.client_list() if client["cmd"] in ("blpop", "blmove")]


@pytest.mark.parametrize("queues", [("default",), ("email", "default")], ids=["BLMOVE", "BLPOP"])
def test_a_worker_killed_while_idle_takes_no_job_with_it(
    queues: tuple[str, ...], connection: Redis, start_worker: Any
) -> None:
    """kill -9 of a worker must not leave its forked scheduler holding the worker's blocked BLPOP or
    BLMOVE: Redis would hand the next job to that socket, which nobody reads."""
    victim = start_worker("--with-scheduler", *queues)
    children = wait_until(lambda: descendants(victim.pid), what="the worker's scheduler process")
    wait_until(lambda: blocked_clients(connection), what="its dequeue")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_until(lambda: not children & descendants(1), 5, "its children to die with it")
    wait_until(lambda: not blocked_clients(connection), 5, "Redis to drop its blocked connection")
    job = enqueue("sleep", 0)
    start_worker("default")
    assert wait_for(job, timeout=20).status == "finished"
