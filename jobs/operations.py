"""Operations: look into one job, the failed ones and the workers, and steer them (requeue, delete,
kill a worker's current job, stop a worker warm)."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from rq.command import send_kill_horse_command, send_shutdown_command
from rq.defaults import DEFAULT_WORKER_TTL
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.worker import BaseWorker

from config import get_settings, rq_classes
from jobs.errors import JobInputError
from jobs.monitoring import failure_reason, name_of, worker_view
from jobs.registry import check_queue, get_spec
from jobs.tags import forget, tag_key

PAGE = 500  # ids fetched at a time: a registry is never loaded whole


def fetch(job_id: str, connection: Redis) -> Job:
    try:
        return rq_classes.Job.fetch(job_id, connection=connection)
    except (NoSuchJobError, ValueError):  # ValueError: not even a possible id (RQ checks the characters)
        raise JobInputError(f"no job {job_id!r} (it never existed, or expired)") from None


def job_view(job_id: str, connection: Redis) -> dict[str, Any]:
    """Everything about one job: call, policy, timings, attempts, worker, and its result or traceback."""
    job = fetch(job_id, connection)
    result = job.latest_result()
    return {
        "id": job.id,
        "job": name_of(job),
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


def iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def queue_names(connection: Redis) -> list[str]:
    names = list(get_settings().queues)
    return names + sorted(q.name for q in rq_classes.Queue.all(connection=connection) if q.name not in names)


def failed_registry(queue: str, connection: Redis) -> FailedJobRegistry:
    return rq_classes.Queue(queue, connection=connection).failed_job_registry


def failed_jobs(connection: Redis, job_name: str | None = None) -> Iterator[Job]:
    """Every failed job of every queue, a page at a time, optionally of one job type."""
    for name in queue_names(connection):
        registry = failed_registry(name, connection)
        start = 0
        while ids := registry.get_job_ids(start, start + PAGE - 1):
            start += PAGE
            for job in rq_classes.Job.fetch_many(ids, connection=connection):
                if job is not None and (job_name is None or name_of(job) == job_name):
                    yield job


def failed_groups(connection: Redis) -> list[dict[str, Any]]:
    """Failed jobs grouped by job and reason, the largest groups first."""
    counts = Counter((name_of(job), failure_reason(job)) for job in failed_jobs(connection))
    return [{"job": job, "reason": reason, "count": count} for (job, reason), count in counts.most_common()]


def chosen_failed(connection: Redis, ids: list[str], every: bool, job_name: str | None) -> list[Job]:
    """The failed jobs a command names: by id (each must be in a failed registry), or all of a kind."""
    if every == bool(ids):
        raise JobInputError("name failed job ids, or --all (optionally with --job NAME), not both")
    if every:
        return list(failed_jobs(connection, job_name))
    jobs = [fetch(job_id, connection) for job_id in ids]
    for job in jobs:
        if job.id not in failed_registry(job.origin, connection):
            raise JobInputError(f"job {job.id} is not failed (it is {job.get_status().value})")
    return jobs


def requeue_failed(
    connection: Redis, ids: list[str], every: bool = False, job_name: str | None = None
) -> list[str]:
    """Put failed jobs back on their queues, keeping their ids and history."""
    jobs = chosen_failed(connection, ids, every, job_name)
    for job in jobs:
        failed_registry(job.origin, connection).requeue(job.id)
    return [job.id for job in jobs]


def delete_failed(
    connection: Redis, ids: list[str], every: bool = False, job_name: str | None = None
) -> list[str]:
    jobs = chosen_failed(connection, ids, every, job_name)
    for job in jobs:
        failed_registry(job.origin, connection).remove(job, delete_job=True)
        forget(job, connection)
    return [job.id for job in jobs]


def workers(connection: Redis) -> list[dict[str, Any]]:
    """Every registered worker, with its last heartbeat, current job and since when, and its RSS."""
    views = []
    for worker in sorted(rq_classes.Worker.all(connection=connection), key=lambda w: w.name):
        view = worker_view(worker)
        job = worker.get_current_job()
        view |= {
            "state": view["state"] if is_alive(worker) else "dead",
            "last_heartbeat": iso(worker.last_heartbeat),
            "job_started_at": iso(job.started_at) if job is not None else None,
            "rss_mb": rss_mb(worker.pid) if worker.hostname == hostname() else None,
        }
        views.append(view)
    return views


def is_alive(worker: BaseWorker) -> bool:
    """A worker whose heartbeat is older than its TTL died without deregistering (kill -9, host lost)."""
    if worker.last_heartbeat is None:
        return True
    age = (datetime.now(UTC) - worker.last_heartbeat.replace(tzinfo=UTC)).total_seconds()
    return age <= (worker.worker_ttl or DEFAULT_WORKER_TTL)


def hostname() -> str:
    return socket.gethostname()


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a worker process on this host (its work-horse's not included)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def known_worker(connection: Redis, name: str) -> BaseWorker:
    for worker in rq_classes.Worker.all(connection=connection):
        if worker.name == name:
            return worker
    raise JobInputError(f"no worker named {name!r} (see `python cli.py workers`)")


def kill_current_job(connection: Redis, name: str) -> str | None:
    """Stop the worker's current job (RQ's kill-horse command); the worker goes on. The job's id."""
    worker = known_worker(connection, name)
    job_id = worker.get_current_job_id()
    if job_id is None:
        raise JobInputError(f"worker {name} is not running a job")
    send_kill_horse_command(connection, name)
    return job_id


def stop_worker(connection: Redis, name: str) -> None:
    """Shut the worker down warm: it finishes its current job first."""
    known_worker(connection, name)
    send_shutdown_command(connection, name)


STATUSES = ("queued", "started", "scheduled", "deferred", "failed", "finished")


def job_ids(connection: Redis, queue: str, status: str, count: int) -> list[str]:
    """Up to `count` ids of one queue in one state, newest first, read from the end of the list or set."""
    rq_queue = rq_classes.Queue(queue, connection=connection)
    if status == "queued":
        return texts(reversed(connection.lrange(rq_queue.key, -count, -1)))
    if status == "scheduled":
        ours = rq_queue.scheduled_job_registry.get_job_ids(0, count - 1, desc=True)
        theirs = texts(connection.zrevrange(rq_classes.Scheduler.scheduled_jobs_key, 0, count - 1))
        return ours + theirs  # rq-scheduler's, which rq-dashboard does not show; filtered by queue below
    registry = getattr(rq_queue, f"{status}_job_registry" if status != "started" else "started_job_registry")
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
) -> list[dict[str, Any]]:
    """Jobs newest first, filtered; reads at most a few pages, never a whole registry."""
    if status is not None and status not in STATUSES:
        raise JobInputError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if tag is not None:
        ids = texts(connection.zrevrange(tag_key(tag), 0, PAGE - 1))
    else:
        queues = [queue] if queue else queue_names(connection)
        ids = [
            i
            for q in queues
            for s in ([status] if status else STATUSES)
            for i in job_ids(connection, q, s, PAGE)
        ]
    alive = {worker.name for worker in rq_classes.Worker.all(connection=connection) if is_alive(worker)}
    rows = []
    for job_id, job in zip(ids, rq_classes.Job.fetch_many(ids, connection=connection), strict=True):
        if job is None:
            if tag is not None:
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
        "job": name_of(job),
        "status": job.get_status(refresh=False).value,
        "queue": job.origin,
        "tags": job.meta.get("tags", []),
        "description": job.description,
        "enqueued_at": iso(job.enqueued_at),
        "created_at": iso(job.created_at),
    }


def pending(connection: Redis, job_id: str, allowed: tuple[str, ...]) -> Job:
    """The job, refused with its status unless it is still in one of the `allowed` states."""
    job = fetch(job_id, connection)
    status = job.get_status().value
    if status not in allowed:
        raise JobInputError(f"job {job_id} is {status}: only a {' or '.join(allowed)} job can be changed")
    return job


def cancel(connection: Redis, job_id: str) -> None:
    """Take a queued or scheduled job off its queue or schedule; it stays visible as canceled."""
    job = pending(connection, job_id, ("queued", "scheduled", "deferred"))
    rq_classes.Scheduler(connection=connection).cancel(job.id)
    job.cancel()


def move(connection: Redis, job_id: str, queue: str) -> None:
    """Move a queued job to another configured queue, at its end."""
    check_queue(queue)
    job = pending(connection, job_id, ("queued",))
    rq_classes.Queue(job.origin, connection=connection).remove(job.id)
    rq_classes.Queue(queue, connection=connection).enqueue_job(job)


def to_front(connection: Redis, job_id: str) -> None:
    """Move a queued job to the front of its queue."""
    job = pending(connection, job_id, ("queued",))
    rq_queue = rq_classes.Queue(job.origin, connection=connection)
    with connection.pipeline() as pipe:
        pipe.lrem(rq_queue.key, 0, job.id)
        pipe.lpush(rq_queue.key, job.id)
        pipe.execute()


def edit(
    connection: Redis,
    job_id: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    timeout: int | None = None,
) -> Job:
    """Change a queued or scheduled job's arguments or time-out, checked as at enqueue time."""
    job = pending(connection, job_id, ("queued", "scheduled", "deferred"))
    new_args = tuple(args) if args is not None else tuple(job.args)
    new_kwargs = {**job.kwargs, **(kwargs or {})}
    name = job.meta.get("rqkit_job")
    if name:
        spec = get_spec(name)
        spec.validate(new_args, new_kwargs)
        job.description = spec.describe(new_args, new_kwargs)
    if timeout is not None:
        if timeout <= 0:
            raise JobInputError(f"timeout must be a positive number of seconds, got {timeout}")
        job.timeout = timeout
    job.args, job.kwargs = list(new_args), new_kwargs
    job.save()
    return job
