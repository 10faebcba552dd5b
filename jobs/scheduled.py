"""Due jobs out of RQ's scheduled registries, where no worker runs RQ's scheduler.

Retries with an interval, rate-limit deferrals and `enqueue --in/--at` wait in RQ's scheduled
registry of their queue until a scheduler moves them to the queue. RQ's scheduler runs inside workers
started with `--with-scheduler` (as `up` starts them); a bare `rq worker` has none, and `rqscheduler`
moves only rq-scheduler's own entries. So the default schedule runs `release-due` every minute: it
moves the due jobs of every queue with RQ's own code, under RQ's scheduler lock of that queue, and
leaves a queue whose lock a worker's scheduler holds to that scheduler. Then it puts back on their
queue the jobs that a worker's blocking pop took and never received (jobs/orphans.py).
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp

from config import get_settings, redis_client
from config.rq_classes import Queue, configured_serializer
from jobs.orphans import recover_orphans
from jobs.runtime import retry_only_transient


@retry_only_transient
def release_due() -> dict[str, Any]:
    """Move every due scheduled job to its queue, then put back the jobs lost in a blocking pop; how
    many per queue, the queues left to a worker's scheduler, and the orphans' counts."""
    job = get_current_job()
    connection = job.connection if job is not None else redis_client()
    names = sorted({*get_settings().queues, *(queue.name for queue in Queue.all(connection=connection))})
    scheduler = RQScheduler(names, connection=connection, serializer=configured_serializer())
    owned = scheduler.acquire_locks()
    try:
        now = current_timestamp()
        due = {
            name: len(ScheduledJobRegistry(name, connection=connection).get_jobs_to_schedule(now))
            for name in sorted(owned)
        }
        scheduler.enqueue_scheduled_jobs()
    finally:
        scheduler.release_locks()
    return {
        "released": sum(due.values()),
        "by_queue": due,
        "left_to_workers": sorted(set(names) - owned),
        "orphans": recover_orphans(connection),
    }
