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


@pytest.mark.parametrize("queues", [("default",), ("email", "default")], ids=["BLMOVE", "BLPOP"])
def test_a_worker_killed_while_idle_takes_no_job_with_it(
    queues: tuple[str, ...], connection: Redis, start_worker: Any
) -> None:
    """kill -9 of a worker must not leave its forked scheduler holding the worker's blocked BLPOP or
    BLMOVE: Redis would hand the next job to that socket, which nobody reads."""
    victim = start_worker("--with-scheduler", *queues)
    wait_until(lambda: descendants(victim.pid), what="the worker's scheduler process")
    wait_until(lambda: {"blpop", "blmove"} & {c["cmd"] for c in connection.client_list()}, what="its dequeue")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    job = enqueue("sleep", 0)
    start_worker("default")
    assert wait_for(job, timeout=20).status == "finished"
