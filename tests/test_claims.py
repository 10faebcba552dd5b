"""A job id that a worker's blocking wait handed over is claimed once, whoever else reaches for it: a
late BLPOP reply, a claim retried after an outage, a BLMOVE into the intermediate list; and a pop that
a failover kept without its claim is run."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from launcher.redis_server import RedisServer, free_port
from tests import compat_jobs
from workers import InProcessWorker
from workers.claims import WHERE_INTERMEDIATE, WHERE_NOWHERE, WHERE_UNKNOWN, Popped


def test_a_job_moved_to_the_intermediate_list_goes_to_one_claim(connection: Redis) -> None:
    """Worker B's BLMOVE took the job; worker A retries a claim of it after an outage: one of them."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1)
    connection.lmove("rq:queue:default", "rq:queue:default:intermediate", "LEFT", "RIGHT")
    retried = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", job.id, WHERE_UNKNOWN)
    )
    moved = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", job.id, WHERE_INTERMEDIATE)
    )
    assert bool(retried) + bool(moved) == 1
    assert connection.zcard("rq:executions:" + job.id) == 1


def test_a_late_blpop_reply_never_runs_a_job_put_back_and_taken(connection: Redis) -> None:
    """The orphan recovery put the job back and another worker took it: the late reply claims nothing;
    put back and not yet taken, the late reply takes it, and its copy leaves the queue."""
    queue = Queue("default", connection=connection)
    job = queue.enqueue(compat_jobs.add, 1, 1)
    taken = InProcessWorker(["default"], connection=connection).claim()
    assert taken and taken[0].id == job.id
    late = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", job.id, WHERE_NOWHERE)
    )
    assert late is None
    other = queue.enqueue(compat_jobs.add, 2, 2)
    connection.lpush("rq:queue:default", other.id)  # popped once, put back: a copy on the queue
    late = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", other.id, WHERE_NOWHERE)
    )
    assert late and late[0].id == other.id
    assert connection.lrange("rq:queue:default", 0, -1) == []


def test_a_job_whose_claim_a_failover_lost_is_put_back_once_the_worker_is_past_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The new master got the blocking wait's pop of a job, not the claim that followed on the old
    one: queued on no list. The worker, past the outage (its writes refused while its Redis is a
    replica), puts it back and runs it; a job it had claimed before is not run again."""
    server = RedisServer(free_port(), tmp_path, admin_commands=True).start()
    try:
        connection = Redis(port=server.port)
        queue = Queue("default", connection=connection)
        worker = InProcessWorker(["default", "email"], connection=connection)
        done = queue.enqueue(compat_jobs.add, 1, 1)
        worker.work(burst=True)
        lost = queue.enqueue(compat_jobs.add, 2, 2)
        assert worker.wait_for_job(1) == Popped("rq:queue:default", lost.id, WHERE_NOWHERE)
        connection.replicaof("127.0.0.1", free_port())  # a failover as the worker sees it: READONLY
        threading.Timer(1.5, connection.replicaof, ("NO", "ONE")).start()  # then the new master
        with caplog.at_level(logging.WARNING):
            claimed = worker.claim_or_wait(None, None)  # as in a burst: claim, or stop
        assert claimed and claimed[0].id == lost.id
        worker.execute_job(*claimed)
        worker.record()
        assert "refusing writes" in caplog.text and f"Job {lost.id}: popped before an outage" in caplog.text
        assert [Job.fetch(job.id, connection).get_status() for job in (done, lost)] == ["finished"] * 2
        assert [connection.xlen(f"rq:results:{job.id}") for job in (done, lost)] == [1, 1]
        assert connection.llen("rq:queue:default") == 0
    finally:
        server.stop()
