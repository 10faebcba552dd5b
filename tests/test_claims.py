"""A job id that a worker's blocking wait handed over is claimed once, whoever else reaches for it: a
late BLPOP reply, a claim retried after an outage, a BLMOVE into the intermediate list."""

from __future__ import annotations

from redis import Redis
from rq import Queue

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
