"""Read-only views: queue and worker counts for `info`, and a job's outcome for `enqueue --wait`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.utils import as_text
from rq.worker import BaseWorker

from config import get_settings, ping, redis_client, rq_classes

TERMINAL = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its status, its result if it finished, a one-line reason if not."""

    status: str
    result: Any = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_for(job: Job, poll: float = 0.1, timeout: float | None = None) -> Outcome:
    """Block until the job finishes, fails or disappears (or `timeout` passes); its outcome."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            status = job.get_status(refresh=True)
        except InvalidJobOperation:
            return Outcome("missing", reason=f"job {job.id} no longer exists (deleted or expired)")
        if status == JobStatus.FINISHED:
            return Outcome(status.value, result=job.return_value(refresh=True))
        if status in TERMINAL:
            return Outcome(status.value, reason=failure_reason(job))
        if deadline is not None and time.monotonic() > deadline:
            return Outcome(status.value, reason=f"still {status.value} after {timeout:g}s")
        time.sleep(poll)


def wait_for_all(
    jobs: Sequence[Job], progress: Callable[[int], object] = print, poll: float = 0.2
) -> list[Outcome]:
    """Block until every job has ended, calling `progress(n)` as n more end; their outcomes, in order."""
    outcomes: dict[str, Outcome] = {}
    while len(outcomes) < len(jobs):
        waiting = [job for job in jobs if job.id not in outcomes]
        with waiting[0].connection.pipeline(transaction=False) as pipe:
            for job in waiting:
                pipe.hget(job.key, "status")
            statuses = pipe.execute()
        ended = [
            job
            for job, status in zip(waiting, statuses, strict=True)
            if not status or as_text(status) in TERMINAL
        ]
        for job in ended:
            outcomes[job.id] = wait_for(job)
        if ended:
            progress(len(ended))
        if len(outcomes) < len(jobs):
            time.sleep(poll)
    return [outcomes[job.id] for job in jobs]


def name_of(job: Job) -> str:
    """The registry name a job was enqueued under, else (enqueued without the toolkit) its function."""
    return str(job.meta.get("rqkit_job") or job.func_name)


def failure_reason(job: Job) -> str:
    """The exception line of the job's traceback, e.g. `JobInputError: sleep: SECONDS must be ...`."""
    result = job.latest_result()
    text = (result.exc_string if result else None) or "failed without a traceback"
    return exception_line(text)


def exception_line(traceback_text: str) -> str:
    """The last exception's `Type: message` line, with the type's module path dropped."""
    lines = traceback_text.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    tail = lines[frames[-1] + 1 :] if frames else lines
    line = next(
        (line for line in tail if line.strip() and not line.startswith(" ")), lines[-1] if lines else ""
    )
    kind, colon, message = line.partition(": ")
    return f"{kind.rpartition('.')[2]}{colon}{message}" if " " not in kind else line


def queue_counts(queue: Queue) -> dict[str, Any]:
    return {
        "name": queue.name,
        "queued": queue.count,
        "started": queue.started_job_registry.count,
        "scheduled": queue.scheduled_job_registry.count,
        "deferred": queue.deferred_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "finished": queue.finished_job_registry.count,
    }


def worker_view(worker: BaseWorker) -> dict[str, Any]:
    return {
        "name": worker.name,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "state": worker.get_state(),
        "queues": worker.queue_names(),
        "current_job": worker.get_current_job_id(),
        "finished": worker.successful_job_count,
        "failed": worker.failed_job_count,
    }


def listening_workers(queue_name: str, connection: Redis | None = None) -> list[str]:
    """Names of the workers that listen on `queue_name`."""
    queue = rq_classes.Queue(queue_name, connection=connection or redis_client())
    return [worker.name for worker in rq_classes.Worker.all(queue=queue)]


def overview(connection: Redis) -> dict[str, Any]:
    """Counts for every configured or existing queue, every worker, and rq-scheduler's entries."""
    ping(connection)
    names = list(get_settings().queues)
    names += sorted(q.name for q in rq_classes.Queue.all(connection=connection) if q.name not in names)
    return {
        "queues": [queue_counts(rq_classes.Queue(name, connection=connection)) for name in names],
        "workers": [
            worker_view(w) for w in sorted(rq_classes.Worker.all(connection=connection), key=lambda w: w.name)
        ],
        "rq_scheduler_jobs": connection.zcard(rq_classes.Scheduler.scheduled_jobs_key),
    }
