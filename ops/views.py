"""What an operator sees, read-only: queue and worker counts, one job, job lists, failed jobs grouped.
Nothing here reads a whole registry: ids come a page at a time."""

from __future__ import annotations

import hashlib
import math
import re
import socket
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue
from rq.defaults import DEFAULT_WORKER_TTL
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.worker import BaseWorker

from config import get_settings, ping, rq_classes
from config.history import job_type, meta_of
from config.rq_classes import STATES
from config.worker_fields import MEMORY_FIELD, TTL_FIELD, resident_kb
from jobs.errors import JobInputError
from jobs.tags import tag_key
from ops.outcomes import failure_reason
from scheduler.runner import Scheduler

PAGE = 500  # ids fetched at a time: a registry is never loaded whole


def fetch(job_id: str, connection: Redis) -> Job:
    try:
        return rq_classes.Job.fetch(job_id, connection=connection)
    except (NoSuchJobError, ValueError):  # ValueError: not even a possible id (RQ checks the characters)
        raise JobInputError(f"no job {job_id!r} (it never existed, or expired)") from None


def iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def queue_names(connection: Redis) -> list[str]:
    names = list(get_settings().queues)
    return names + sorted(q.name for q in rq_classes.Queue.all(connection=connection) if q.name not in names)


def queue_counts(queue: Queue) -> dict[str, Any]:
    """How many jobs the queue holds in each state (its list, then one registry per state)."""
    return {"name": queue.name, "queued": queue.count} | {
        state: getattr(queue, f"{state}_job_registry").count for state in STATES[1:]
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
        "rq_scheduler_jobs": connection.zcard(Scheduler.scheduled_jobs_key),
    }


def job_view(job_id: str, connection: Redis) -> dict[str, Any]:
    """Everything about one job: call, policy, timings, attempts, worker, and its result or traceback."""
    job = fetch(job_id, connection)
    result = job.latest_result()
    return {
        "id": job.id,
        "job": job_type(job),
        "function": job.func_name,
        "args": list(job.args),
        "kwargs": job.kwargs,
        "queue": job.origin,
        "status": job.get_status().value,
        "description": job.description,
        "timeout": job.timeout,
        "result_ttl": job.result_ttl,
        "failure_ttl": job.failure_ttl,
        "retries_left": job.retries_left,
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "worker": job.worker_name,
        "result": result.return_value
        if result is not None and result.type == result.Type.SUCCESSFUL
        else None,
        "traceback": result.exc_string if result is not None and result.exc_string else None,
    }


def failed_registry(queue: str, connection: Redis) -> FailedJobRegistry:
    return rq_classes.Queue(queue, connection=connection).failed_job_registry


def failed_jobs(connection: Redis, job_name: str | None = None, newest: int | None = None) -> Iterator[Job]:
    """Every failed job of every queue (or the `newest` of each queue), a page at a time, optionally
    of one job type."""
    for name in queue_names(connection):
        registry = failed_registry(name, connection)
        start = 0
        while start < (newest or math.inf):
            size = PAGE if newest is None else min(PAGE, newest - start)
            if not (ids := registry.get_job_ids(start, start + size - 1, desc=newest is not None)):
                break
            start += size
            for job in readable(ids, connection):
                if job is not None and (job_name is None or job_type(job) == job_name):
                    yield job


def readable(ids: list[str], connection: Redis) -> list[Job | None]:
    """The jobs of `ids` (None for one that is gone, or whose hash RQ can't read: one bad record
    doesn't hide the others)."""
    try:
        return rq_classes.Job.fetch_many(ids, connection=connection)
    except Exception:  # noqa: BLE001 - a field RQ can't parse: read them one at a time, skip that one
        jobs: list[Job | None] = []
        for job_id in ids:
            try:
                jobs.append(rq_classes.Job.fetch(job_id, connection=connection))
            except Exception:  # noqa: BLE001
                jobs.append(None)
        return jobs


def failed_groups(connection: Redis, newest: int | None = None) -> list[dict[str, Any]]:
    """Failed jobs (or the `newest` of each queue) grouped by job and reason, the largest groups first;
    a time in a reason (RQ's abandoned jobs carry when they were found) doesn't split a group. Each
    group has a key that names it to the actions whatever its text holds."""
    counts = Counter((job_type(job), group_reason(job)) for job in failed_jobs(connection, newest=newest))
    return [
        {"job": job, "reason": reason, "count": count, "key": group_key(job, reason)}
        for (job, reason), count in counts.most_common()
    ]


def group_key(job_name: str, reason: str) -> str:
    return hashlib.sha256(f"{job_name}\0{reason}".encode(errors="replace")).hexdigest()[:32]


def group_reason(job: Job) -> str:
    """The reason a failed job is grouped by: its failure reason with any time in it as <time>."""
    return MOMENT.sub("<time>", failure_reason(job))


MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:?\d{2}|Z)?")


def workers(connection: Redis) -> list[dict[str, Any]]:
    """Every registered worker, with its last heartbeat, current job and since when, and its memory."""
    views = []
    for worker in sorted(rq_classes.Worker.all(connection=connection), key=lambda w: w.name):
        view = worker_view(worker)
        job = worker.get_current_job()
        memory, ttl = (whole(value) for value in connection.hmget(worker.key, MEMORY_FIELD, TTL_FIELD))
        if memory is None and worker.hostname == hostname():  # not one of the toolkit's: read it here
            memory = resident_kb(worker.pid)
        view |= {
            "state": view["state"] if is_alive(worker, ttl) else "dead",
            "last_heartbeat": iso(worker.last_heartbeat),
            "job_started_at": iso(job.started_at) if job is not None else None,
            "rss_mb": round(memory / 1024, 1) if memory is not None else None,
        }
        views.append(view)
    return views


def whole(value: bytes | str | None) -> int | None:
    """A whole number a worker wrote in its hash, or None (none, or not a number)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def is_alive(worker: BaseWorker, ttl: int | None = None) -> bool:
    """A worker whose heartbeat is older than its TTL (the one it published, else RQ's default) died
    without deregistering (kill -9, host lost)."""
    if worker.last_heartbeat is None:
        return True
    age = (datetime.now(UTC) - worker.last_heartbeat.replace(tzinfo=UTC)).total_seconds()
    return age <= (ttl or DEFAULT_WORKER_TTL)


def hostname() -> str:
    return socket.gethostname()


def job_ids(connection: Redis, queue: str, status: str, count: int) -> list[str]:
    """Up to `count` ids of one queue in one state, newest first, read from the end of the list or set."""
    rq_queue = rq_classes.Queue(queue, connection=connection)
    if status == "queued":
        return texts(reversed(connection.lrange(rq_queue.key, -count, -1)))
    if status == "scheduled":
        ours = rq_queue.scheduled_job_registry.get_job_ids(0, count - 1, desc=True)
        theirs = texts(connection.zrevrange(Scheduler.scheduled_jobs_key, 0, count - 1))
        return ours + theirs  # rq-scheduler's, which rq-dashboard does not show; filtered by queue below
    registry = getattr(rq_queue, f"{status}_job_registry")
    return registry.get_job_ids(0, count - 1, desc=True, cleanup=False)


def texts(values: Any) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def list_jobs(
    connection: Redis,
    queue: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    job_name: str | None = None,
    limit: int = 50,
    prune: bool = True,
) -> list[dict[str, Any]]:
    """Jobs newest first, filtered; reads at most a few pages, never a whole registry. A tag's index
    loses the ids of jobs that are gone, unless `prune` is False (a read-only reader)."""
    if status is not None and status not in STATES:
        raise JobInputError(f"status must be one of {', '.join(STATES)}, got {status!r}")
    if tag is not None:
        ids = texts(connection.zrevrange(tag_key(tag), 0, PAGE - 1))
    else:
        queues = [queue] if queue else queue_names(connection)
        ids = [
            i
            for q in queues
            for s in ([status] if status else STATES)
            for i in job_ids(connection, q, s, PAGE)
        ]
    alive = {worker.name for worker in rq_classes.Worker.all(connection=connection) if is_alive(worker)}
    rows = []
    for job_id, job in zip(ids, readable(ids, connection), strict=True):
        if job is None:
            if tag is not None and prune and not connection.exists(rq_classes.Job.key_for(job_id)):
                connection.zrem(tag_key(tag), job_id)  # the job expired or was deleted: prune its tag
            continue
        row = summary(job)
        if (queue and row["queue"] != queue) or (status and row["status"] != status):
            continue
        if row["status"] == "started" and job.worker_name not in alive:
            row["status"] = "abandoned"  # its worker is dead: RQ's cleanup will fail it
        if job_name and row["job"] != job_name:
            continue
        rows.append(row)
    rows.sort(key=lambda row: row["enqueued_at"] or row["created_at"] or "", reverse=True)
    return list({row["id"]: row for row in rows}.values())[:limit]


def summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "job": job_type(job),
        "status": job.get_status(refresh=False).value,
        "queue": job.origin,
        "tags": tags_of(job),
        "description": job.description,
        "enqueued_at": iso(job.enqueued_at),
        "created_at": iso(job.created_at),
    }


def tags_of(job: Job) -> list[str]:
    """A job's tags (the strings of its meta's list: what another writer put there may be anything)."""
    tags = meta_of(job).get("tags")
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []
