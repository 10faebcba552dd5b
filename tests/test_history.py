"""The job history behind the dashboard's Overview: every run counted once, in its minute's and its hour's
bucket, whichever worker runs it; buckets that expire by themselves, so Redis holds a bounded number."""

from __future__ import annotations

import time
from typing import Any

import pytest
import rq
from redis import Redis
from rq import Queue, SimpleWorker

from config import history
from config.history import HOUR, KEEP, MINUTE, PREFIX
from jobs import enqueue
from tests import compat_jobs
from workers import ForkingWorker, InProcessWorker

WORKERS = {"rq-simple": SimpleWorker, "rq-forking": rq.Worker, "in-process": InProcessWorker}
WORKERS["forking"] = ForkingWorker
TOOLKIT = (InProcessWorker, ForkingWorker)


def totals(connection: Redis, size: int) -> dict[tuple[str, str, str], int]:
    """Every run in the last two buckets of `size` (a test may cross a boundary)."""
    found: dict[tuple[str, str, str], int] = {}
    for runs in history.read(connection, size, 2).values():
        for kind, count in runs.items():
            found[kind] = found.get(kind, 0) + count
    return found


@pytest.mark.parametrize("worker_class", WORKERS.values(), ids=WORKERS.keys())
def test_each_run_is_counted_once_in_its_minute_and_its_hour(connection: Redis, worker_class: Any) -> None:
    queue = Queue("default", connection=connection)
    for _ in range(3):
        enqueue("sleep", 0)
    queue.enqueue("jobs.demo.sleep", -1, meta={"rqkit_job": "sleep"})  # fails in the job: bad input
    queue.enqueue(compat_jobs.add, 1, 2)  # plain functions: no entry point of the toolkit's
    queue.enqueue(compat_jobs.add, 2, 2, result_ttl=0)  # a success on RQ's own path
    queue.enqueue(compat_jobs.fail, "boom")
    forks = worker_class in (rq.Worker, ForkingWorker)
    if forks:
        queue.enqueue(compat_jobs.crash)  # the horse dies: no entry point sees that end
    worker_class(["default"], connection=connection).work(burst=True)

    expected = {("sleep", "default", "succeeded"): 3, ("sleep", "default", "failed"): 1}
    if worker_class in TOOLKIT:  # the toolkit's workers count every job they run
        expected |= {
            ("tests.compat_jobs.add", "default", "succeeded"): 2,
            ("tests.compat_jobs.fail", "default", "failed"): 1,
        }
        if forks:
            expected[("tests.compat_jobs.crash", "default", "failed")] = 1
    assert totals(connection, MINUTE) == expected
    assert totals(connection, HOUR) == expected
    buckets = list(connection.scan_iter(f"{PREFIX}*"))
    assert buckets and all(0 < connection.ttl(key) <= KEEP[HOUR] + HOUR for key in buckets)  # all expire


def test_a_bucket_expires_at_a_fixed_time_after_its_period(connection: Redis) -> None:
    now = time.time()
    for size in (MINUTE, HOUR):
        key = history.bucket_key(size, now)
        with connection.pipeline() as pipe:
            history.add(pipe, history.run_counts("sleep", "default", "succeeded", now))
            pipe.execute()
        start = int(now // size * size)
        assert abs(connection.ttl(key) - (start + size + KEEP[size] - time.time())) <= 2
    # Counts that reach Redis late (kept on disk through an outage) for a bucket past its time leave nothing.
    with connection.pipeline() as pipe:
        history.add(pipe, history.run_counts("sleep", "default", "failed", now - KEEP[HOUR] - 2 * HOUR))
        pipe.execute()
    assert sorted(key.decode() for key in connection.scan_iter(f"{PREFIX}*")) == sorted(
        history.bucket_key(size, now) for size in (MINUTE, HOUR)
    )


def test_the_history_reads_the_last_buckets_oldest_first_with_empty_ones(connection: Redis) -> None:
    now = 1_800_000_000.0 + 30  # a minute's start + 30 s; its buckets have long expired by now
    for back, outcome in ((0, "succeeded"), (2, "failed"), (2, "failed")):
        connection.hincrby(history.bucket_key(MINUTE, now - back * MINUTE), f"x\tq\t{outcome}", 1)
    connection.hset(history.bucket_key(MINUTE, now), "not a run", 1)  # another writer's field: left out
    buckets = history.read(connection, MINUTE, 4, now=now)
    start = int(now // MINUTE * MINUTE)
    assert list(buckets) == [start - 3 * MINUTE, start - 2 * MINUTE, start - MINUTE, start]
    assert list(buckets.values()) == [{}, {("x", "q", "failed"): 2}, {}, {("x", "q", "succeeded"): 1}]


def test_a_job_whose_data_cant_be_read_is_counted_as_unreadable(connection: Redis) -> None:
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 2)
    connection.hset(job.key, "data", b"\x80\x05not pickle")  # what RQ's own suite does to a job
    InProcessWorker(["default"], connection=connection).work(burst=True)
    assert totals(connection, MINUTE) == {(history.UNREADABLE, "default", "failed"): 1}


def test_runs_a_worker_holds_back_go_with_its_next_heartbeat(connection: Redis) -> None:
    """A toolkit worker sends plain successes with a later script call (at most once a second, and as
    it goes idle); while a long job runs, with its heartbeats."""
    worker = ForkingWorker(["default"], connection=connection)
    worker.register_birth()
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 2)
    worker._tally.add(job, "succeeded", time.time())
    assert totals(connection, MINUTE) == {}
    worker.heartbeat(timeout=60)  # as during a job
    assert totals(connection, MINUTE) == {("tests.compat_jobs.add", "default", "succeeded"): 1}
    assert totals(connection, HOUR) == {("tests.compat_jobs.add", "default", "succeeded"): 1}
    worker.heartbeat(timeout=60)
    assert totals(connection, MINUTE) == {("tests.compat_jobs.add", "default", "succeeded"): 1}
