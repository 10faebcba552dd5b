"""`up` supervises: a part that dies is started again alone, with back-off, and a dead worker's jobs are
handed to RQ's abandoned-job handling at once; the rest of the stack, Redis included, runs on."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from config.connection import answers
from launcher.children import descendants
from launcher.redis_server import free_port
from ops.outcomes import wait_for
from tests.support import wait_until
from tests.up_stack import Up, running_ups

pytestmark = pytest.mark.slow

RELEASED_WITHIN = 10  # s from a worker's kill -9 to its job failed or queued again (about 0.3 s measured)


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[[str], Up]]:
    with running_ups(tmp_path) as start:
        yield start


def embedded_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def others(up: Up) -> dict[str, int | None]:
    """The pids of the parts other than the workers."""
    words = ("redis-server", "scheduler", "launcher.dashboard", "launcher.mail_sink")
    return {word: up.part(word) for word in words}


def kill_worker_of(job: Job, connection: Redis) -> None:
    """kill -9 the worker running `job` (its work-horse dies with it)."""
    job.refresh()
    pid = int(connection.hget(f"rq:worker:{job.worker_name}", "pid") or 0)
    assert pid, f"no worker runs {job.id}"
    os.kill(pid, signal.SIGKILL)


def left_started(job: Job) -> float:
    """Seconds until `job` is no longer started (handled as abandoned), polled closely."""
    start = time.monotonic()
    wait_until(
        lambda: job.get_status(refresh=True) != JobStatus.STARTED, RELEASED_WITHIN, "the release", 0.02
    )
    return time.monotonic() - start


def test_a_worker_killed_mid_job_is_restarted_alone_and_its_job_released_at_once(
    start_up: Callable[[str], Up],
) -> None:
    """Given `up` with its embedded Redis and two workers busy, kill -9 of one worker and then of the
    other: each job goes at once through RQ's abandoned-job handling (the one with a retry runs again to
    the end, the one-off fails with AbandonedJobError), each worker comes back under a new name, and
    Redis, the scheduler, the dashboard and the mail sink run on untouched."""
    url = embedded_url()
    up = start_up(url)
    connection = Redis.from_url(url)
    parts = others(up)
    assert all(parts.values()), parts
    rerun = Queue("default", connection=connection).enqueue("tests.compat_jobs.sleep", 3, retry=Retry(max=1))
    one_off = Job.fetch(up.cli_json("enqueue", "sleep", "60")["id"], connection=connection)
    started = lambda: all(j.get_status(refresh=True) == JobStatus.STARTED for j in (rerun, one_off))  # noqa: E731
    wait_until(started, 30, "both jobs to start")

    kill_worker_of(rerun, connection)
    first_worker = str(rerun.worker_name)
    released = left_started(rerun)
    assert wait_for(rerun, timeout=30).status == "finished"
    kill_worker_of(one_off, connection)
    failed_after = left_started(one_off)
    failed = wait_for(one_off, timeout=10)
    assert failed.status == "failed" and "AbandonedJobError" in (failed.reason or ""), failed

    wait_until(up.ready, 30, "both workers back")
    assert others(up) == parts  # no other part was stopped or restarted
    assert up.cli_json("enqueue", "sleep", "0", "--wait")["status"] == "finished"
    log = up.log.read_text()
    assert re.search(r"up +\| worker-\d exited with code -9; restarting in 1 s", log), log
    assert f"died during job {rerun.id}: RQ runs it again (retries left: 0)" in log
    assert f"died during job {one_off.id}: RQ failed it (AbandonedJobError)" in log
    child = first_worker.partition(".")[0]
    assert f"Worker {child}.2." in log  # the restarted worker, under a name of its own
    assert up.stop(signal.SIGTERM) == 0
    print(
        f"kill -9 of a worker mid-job: job queued again {released:.2f} s, failed {failed_after:.2f} s after"
    )


def test_a_part_that_keeps_dying_comes_back_ever_later_and_a_stop_ends_the_wait(
    start_up: Callable[[str], Up],
) -> None:
    """The mail sink killed as soon as it is back, three times: 1 s, 2 s, then 4 s before its next
    start, each death one line; a SIGTERM during that wait stops everything, exit code 0, and the sink
    is not started again."""
    up = start_up(embedded_url())
    log = lambda: up.log.read_text()  # noqa: E731
    starts = lambda: log().count("mail      | SMTP sink on")  # noqa: E731
    started = lambda n: starts() == n  # noqa: E731
    for start in range(1, 4):
        wait_until(partial(started, start), 20, f"start {start} of the mail sink")
        pid = up.part("launcher.mail_sink")
        assert pid
        os.kill(pid, signal.SIGKILL)
    third = "mail exited with code -9 (3 times in a row); restarting in 4 s"
    wait_until(lambda: third in log(), 5, "the third death's line")
    assert "up        | mail exited with code -9; restarting in 1 s" in log()
    assert "mail exited with code -9 (2 times in a row); restarting in 2 s" in log()
    parts = descendants(up.process.pid)

    assert up.stop(signal.SIGTERM) == 0
    assert not parts & descendants(os.getpid()), "a child of `up` is still running"
    assert starts() == 3  # none after the stop


def test_the_embedded_redis_comes_back_on_its_own_data(start_up: Callable[[str], Up], tmp_path: Path) -> None:
    """kill -9 of the embedded redis-server: `up` starts it again on the same data dir, a job queued
    before is still queued (its append-only file), and the workers, which waited, run new jobs."""
    url = embedded_url()
    up = start_up(url)
    connection = Redis.from_url(url)
    kept = Queue("nobody-listens", connection=connection).enqueue("tests.compat_jobs.add", 1, 2)
    written = lambda: any(kept.id.encode() in aof.read_bytes() for aof in (tmp_path / "var").rglob("*.aof"))  # noqa: E731
    wait_until(written, 10, "the job in the append-only file")  # (written at once, unless a fsync lags)
    server = up.part("redis-server")
    assert server
    os.kill(server, signal.SIGKILL)

    wait_until(lambda: up.part("redis-server") not in (None, server) and answers(url), 20, "Redis again")
    assert Job.fetch(kept.id, connection=connection).get_status() == JobStatus.QUEUED
    assert up.cli_json("enqueue", "sleep", "0", "--wait")["status"] == "finished"
    log = up.log.read_text()
    assert "up        | redis exited with code -9; restarting in 1 s" in log
    assert "redis     | embedded redis-server started again" in log
    assert up.stop(signal.SIGTERM) == 0
