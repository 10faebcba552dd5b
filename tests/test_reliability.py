"""Faults: workers killed, Redis restarted or away. Nothing queued is lost, nothing runs twice."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from redis import Redis

from config import get_settings
from jobs import enqueue
from jobs.monitoring import wait_for
from jobs.registry import RERUN_IF_CUT_SHORT
from launcher.children import descendants
from launcher.stack import WORKER_ARGS
from tests.pictures import photo
from tests.support import wait_until

ABANDONED_WITHIN = 60  # s: heartbeat 5 + 15 s, then a registry sweep every 10 s, at most 25 s apart

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


def test_a_job_cut_short_by_kill_9_is_found_abandoned_and_rerun_elsewhere(
    connection: Redis, start_worker: Any, media: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL to workers and their work-horses mid-job: another worker finds the jobs abandoned
    within the bound that `up`'s worker options give (ABANDONED_WITHIN); it fails the one-off job
    with that reason, and runs the idempotent one (a thumbnail) again to the end."""
    monkeypatch.setenv("RQKIT_THUMBNAIL_MAX_PIXELS", "200000000")
    photo(media.root / "huge.png", (12000, 12000), compress_level=1)  # about a second of work
    victims = [start_worker(*WORKER_ARGS[3:], queue) for queue in ("images", "default")]
    wait_until(lambda: len(blocked_clients(connection)) == 2, what="the first workers")
    job, one_off = enqueue("thumbnail", "huge.png"), enqueue("sleep", 60)
    both_started = lambda: all(j.get_status(refresh=True) == "started" for j in (job, one_off))  # noqa: E731
    wait_until(both_started, 20, "the jobs to start")
    for victim in victims:
        for pid in {victim.pid} | descendants(victim.pid):
            os.kill(pid, signal.SIGKILL)
        victim.wait()
    killed_at = time.monotonic()
    assert job.get_status(refresh=True) == "started"  # killed mid-job, not after it

    start_worker(*WORKER_ARGS[3:], "images", "default")
    wait_until(lambda: job.get_status(refresh=True) != "started", ABANDONED_WITHIN, "the abandoned job")
    detected = time.monotonic() - killed_at
    assert wait_for(job, timeout=60).status == "finished"
    failed = wait_for(one_off, timeout=30)
    assert failed.status == "failed" and "AbandonedJobError" in (failed.reason or ""), failed
    job.refresh()
    assert job.retries_left == len(RERUN_IF_CUT_SHORT) - 1
    assert all(media.output(size, "huge.png.jpg").exists() for size in get_settings().thumbnail_sizes)
    print(f"abandoned job detected {detected:.1f} s after kill -9, then rerun to the end")
