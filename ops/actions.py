"""What an operator does: requeue or delete failed jobs, cancel, move or edit pending ones, kill a worker's
current job or stop a worker warm. Every refusal is a one-line JobInputError."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.command import send_kill_horse_command, send_shutdown_command
from rq.job import Job, JobStatus
from rq.worker import BaseWorker

from config import rq_classes
from config.history import job_type
from config.rq_classes import NOT_STARTED
from jobs.errors import JobInputError
from jobs.registry import check_queue, get_spec
from jobs.submission import check_text, check_timeout
from jobs.tags import forget
from ops.views import failed_jobs, failed_registry, fetch, group_key, group_reason
from scheduler.runner import Scheduler


def chosen_failed(
    connection: Redis, ids: list[str], every: bool, job_name: str | None, group: str | None = None
) -> list[Job]:
    """The failed jobs a command names: by id (each must be in a failed registry), or all of a kind (and
    of one group, by the key failed_groups gives it)."""
    if every == bool(ids):
        raise JobInputError("name failed job ids, or --all (optionally with --job NAME), not both")
    if every:
        kind = failed_jobs(connection, job_name)
        return [job for job in kind if group is None or group_key(job_type(job), group_reason(job)) == group]
    jobs = [fetch(job_id, connection) for job_id in ids]
    for job in jobs:
        if job.id not in failed_registry(job.origin, connection):
            raise JobInputError(f"job {job.id} is not failed (it is {job.get_status().value})")
    return jobs


def requeue_failed(
    connection: Redis,
    ids: list[str],
    every: bool = False,
    job_name: str | None = None,
    group: str | None = None,
) -> list[str]:
    """Put failed jobs back on their queues, keeping their ids and history."""
    jobs = chosen_failed(connection, ids, every, job_name, group)
    for job in jobs:
        failed_registry(job.origin, connection).requeue(job.id)
    return [job.id for job in jobs]


def delete_failed(
    connection: Redis,
    ids: list[str],
    every: bool = False,
    job_name: str | None = None,
    group: str | None = None,
) -> list[str]:
    jobs = chosen_failed(connection, ids, every, job_name, group)
    for job in jobs:
        failed_registry(job.origin, connection).remove(job, delete_job=True)
        forget(job, connection)
    return [job.id for job in jobs]


def known_worker(connection: Redis, name: str) -> BaseWorker:
    for worker in rq_classes.Worker.all(connection=connection):
        if worker.name == name:
            return worker
    raise JobInputError(f"no worker named {name!r} (see `python cli.py workers`)")


def kill_current_job(connection: Redis, name: str, expected: str | None = None) -> str | None:
    """Stop the worker's current job (RQ's kill-horse command); the worker goes on. The job's id.
    With `expected`, only if that is still the job it runs."""
    worker = known_worker(connection, name)
    job_id = worker.get_current_job_id()
    if job_id is None:
        raise JobInputError(f"worker {name} is not running a job")
    if expected is not None and job_id != expected:
        raise JobInputError(f"worker {name} now runs job {job_id}, not {expected}: nothing killed")
    send_kill_horse_command(connection, name)
    return job_id


def stop_worker(connection: Redis, name: str) -> None:
    """Shut the worker down warm: it finishes its current job first."""
    known_worker(connection, name)
    send_shutdown_command(connection, name)


def pending(connection: Redis, job_id: str, allowed: tuple[str, ...]) -> Job:
    """The job, refused with its status unless it is still in one of the `allowed` states."""
    job = fetch(job_id, connection)
    status = job.get_status().value
    if status not in allowed:
        raise JobInputError(f"job {job_id} is {status}: only a {' or '.join(allowed)} job can be changed")
    return job


def cancel(connection: Redis, job_id: str) -> None:
    """Take a queued or scheduled job off its queue or schedule; it stays visible as canceled."""
    job = pending(connection, job_id, NOT_STARTED)
    Scheduler(connection=connection).cancel(job.id)
    job.cancel()


def move(connection: Redis, job_id: str, queue: str) -> None:
    """Move a queued job to another configured queue, at its end."""
    check_queue(queue)
    job = pending(connection, job_id, (JobStatus.QUEUED,))
    rq_classes.Queue(job.origin, connection=connection).remove(job.id)
    rq_classes.Queue(queue, connection=connection).enqueue_job(job)


def to_front(connection: Redis, job_id: str) -> None:
    """Move a queued job to the front of its queue."""
    job = pending(connection, job_id, (JobStatus.QUEUED,))
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
    job = pending(connection, job_id, NOT_STARTED)
    new_args = tuple(args) if args is not None else tuple(job.args)
    new_kwargs = {**job.kwargs, **(kwargs or {})}
    name = job.meta.get("rqkit_job")
    check_text(str(name or job.func_name), (new_args, new_kwargs))
    if name:
        spec = get_spec(name)
        spec.validate(new_args, new_kwargs)
        job.description = spec.describe(new_args, new_kwargs)
    if timeout is not None:
        job.timeout = check_timeout(timeout)
    job.args, job.kwargs = list(new_args), new_kwargs
    job.save()
    return job
