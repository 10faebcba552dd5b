"""Due jobs leave RQ's scheduled registries where no worker runs RQ's scheduler (jobs/scheduled.py), and
`enqueue --wait` says who will move a scheduled job, or why nobody will (ops/outcomes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis import Redis
from rq.scheduler import RQScheduler

from config import rq_classes
from jobs import submit
from jobs.scheduled import release_due
from ops.outcomes import waiting_for
from scheduler import sync
from tests.support import run


def test_release_due_moves_the_due_jobs_and_leaves_the_rest(connection: Redis) -> None:
    due = submit("sleep", (0,), at=datetime.now(UTC) + timedelta(seconds=1)).job
    later = submit("sleep", (0,), at=datetime.now(UTC) + timedelta(hours=1)).job
    connection.zadd("rq:scheduled:default", {due.id: datetime.now(UTC).timestamp() - 1})  # now due
    report = release_due()
    assert report["released"] == 1 and report["by_queue"]["default"] == 1
    assert rq_classes.Queue("default", connection=connection).get_job_ids() == [due.id]
    assert later.get_status(refresh=True) == "scheduled"
    assert not connection.keys("rq:scheduler-lock:*")  # its locks are given back


def test_release_due_leaves_a_queue_to_the_worker_scheduler_that_holds_it(connection: Redis) -> None:
    job = submit("sleep", (0,), at=datetime.now(UTC) + timedelta(hours=1)).job
    connection.zadd("rq:scheduled:default", {job.id: 1})
    workers_scheduler = RQScheduler(["default"], connection=connection)
    assert workers_scheduler.acquire_locks() == {"default"}
    report = release_due()
    assert "default" in report["left_to_workers"] and report["by_queue"].get("default") is None
    assert job.get_status(refresh=True) == "scheduled"
    line = waiting_for(job, job.get_status())
    assert line.endswith("a worker's scheduler (--with-scheduler) will move it to the queue when due"), line


def test_waiting_says_why_nobody_will_move_a_scheduled_job(connection: Redis) -> None:
    job = submit("sleep", (0,), at=datetime.now(UTC) + timedelta(hours=1)).job
    line = waiting_for(job, job.get_status())
    assert f"job {job.id} is scheduled for " in line and "(its retry)" not in line
    assert line.endswith(
        "nobody will move it: no worker runs RQ's scheduler for 'default' (--with-scheduler), "
        "and the schedule has no 'release-due' entry (python cli.py schedule sync)"
    ), line
    sync.sync()
    assert waiting_for(job, job.get_status()).endswith("and no rqscheduler runs")


def test_the_redis_command_says_when_a_redis_already_answers(connection: Redis) -> None:
    result = run("redis")
    assert result.exit_code == 0 and "a Redis already answers at redis://" in result.output
