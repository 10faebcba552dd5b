"""How jobs end, for `enqueue --wait`, `thumbnails --wait` and the demo: waited for, saying what a job
waits for meanwhile (a worker, a retry's time and who will move it then, its dependencies), with a
one-line reason when it fails."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import as_text

from config import redis_client, rq_classes
from config.rq_classes import ENDED
from jobs import get_spec
from scheduler.periodic import ENTRIES

RELEASE_DUE = "release-due"  # the schedule's entry that moves due jobs where no worker's scheduler does
RECHECK = 5.0  # s between two looks at what a waiting job waits for, while its status stays the same


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its status, its result if it finished, a one-line reason if not."""

    status: str
    result: Any = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_for(
    job: Job, poll: float = 0.1, timeout: float | None = None, tell: Callable[[str], object] | None = None
) -> Outcome:
    """Block until the job finishes, fails or disappears (or `timeout` passes); its outcome. `tell`
    gets a line each time what the job waits for changes (see `waiting_for`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    told, looked_at, looked_status = "", 0.0, None
    while True:
        try:
            status = job.get_status(refresh=True)
        except InvalidJobOperation:
            return Outcome("missing", reason=f"job {job.id} no longer exists (deleted or expired)")
        if status == JobStatus.FINISHED:
            return Outcome(status.value, result=job.return_value(refresh=True))
        if status in ENDED:
            return Outcome(status.value, reason=failure_reason(job))
        if deadline is not None and time.monotonic() > deadline:
            return Outcome(status.value, reason=f"still {status.value} after {timeout:g}s")
        if tell and (status != looked_status or time.monotonic() - looked_at > RECHECK):
            looked_at, looked_status = time.monotonic(), status
            if (line := waiting_for(job, status)) != told:
                tell(line)
                told = line
        time.sleep(poll)


def waiting_for(job: Job, status: JobStatus) -> str:
    """What a job that has not ended waits for, in one line."""
    connection = job.connection
    if status == JobStatus.STARTED:
        worker = as_text(connection.hget(job.key, "worker_name") or b"?")
        return f"job {job.id} is running on worker {worker}"
    if status == JobStatus.DEFERRED:
        return f"job {job.id} waits for the jobs it depends on: {', '.join(job.dependency_ids)}"
    if status == JobStatus.SCHEDULED:
        registry = ScheduledJobRegistry(job.origin, connection=connection)
        try:
            when = f"for {registry.get_scheduled_time(job.id).isoformat(timespec='seconds')}"
        except NoSuchJobError:  # not in RQ's registry: rq-scheduler's own entry
            when = "in rq-scheduler"
        why = " (its retry)" if connection.hget(job.key, "started_at") else ""  # it ran before
        return f"job {job.id} is scheduled {when}{why}; {who_moves(connection, job.origin)}"
    if not listening_workers(job.origin, connection):
        return f"job {job.id} is queued on {job.origin!r}, where no worker listens yet"
    return f"job {job.id} is queued on {job.origin!r}"


def who_moves(connection: Redis, queue: str) -> str:
    """Who will move a due job of `queue` from RQ's scheduled registry to the queue, or why nobody will."""
    if connection.exists(RQScheduler.get_locking_key(queue)):
        return "a worker's scheduler (--with-scheduler) will move it to the queue when due"
    maintenance = get_spec(RELEASE_DUE).queue
    schedulers = [
        key for key in connection.scan_iter("rq:scheduler_instance:*") if not connection.hexists(key, "death")
    ]
    if not connection.hexists(ENTRIES, RELEASE_DUE):
        missing = f"the schedule has no {RELEASE_DUE!r} entry (python cli.py schedule sync)"
    elif not schedulers:
        missing = "no rqscheduler runs"
    elif not listening_workers(maintenance, connection):
        missing = f"no worker listens on {maintenance!r}, where {RELEASE_DUE!r} runs"
    else:
        return (
            f"the schedule's {RELEASE_DUE!r} (on {maintenance!r}) will move it within about a minute of then"
        )
    return (
        f"nobody will move it: no worker runs RQ's scheduler for {queue!r} (--with-scheduler), and {missing}"
    )


def listening_workers(queue_name: str, connection: Redis | None = None) -> list[str]:
    """Names of the workers that listen on `queue_name`."""
    queue = rq_classes.Queue(queue_name, connection=connection or redis_client())
    return [worker.name for worker in rq_classes.Worker.all(queue=queue)]


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
            if not status or as_text(status) in ENDED
        ]
        for job in ended:
            outcomes[job.id] = wait_for(job)
        if ended:
            progress(len(ended))
        if len(outcomes) < len(jobs):
            time.sleep(poll)
    return [outcomes[job.id] for job in jobs]


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
