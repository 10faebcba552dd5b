"""The one path every enqueue takes: checked against the registry, then put on its queue (or scheduled),
one at a time or in bulk."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis import Redis
from redis.exceptions import ConnectionError, TimeoutError, WatchError
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import as_text

from config import RedisUnavailable, redis_client, rq_classes
from config.connection import url_of
from jobs import tags as tags_index
from jobs.bulk import BulkJobs, enqueue_calls
from jobs.errors import JobInputError
from jobs.registry import DAY, check_queue, get_spec

BULK_BATCH = 1000


class Submission(NamedTuple):
    """What enqueue did: the job, and whether it was an already pending one."""

    job: Job
    duplicate: bool


def enqueue(name: str, *args: Any, **kwargs: Any) -> Job:
    """Enqueue job `name` with these arguments; `submit` also takes queue, time and priority options."""
    return submit(name, args, kwargs).job


def submit(
    name: str,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    at_front: bool = False,
    at: datetime | None = None,
    connection: Redis | None = None,
    timeout: int | None = None,
    tags: list[str] | None = None,
) -> Submission:
    """Check the job and its arguments, then put it on its queue (or schedule it `at` a time)."""
    spec = get_spec(name)
    kwargs = kwargs or {}
    spec.validate(args, kwargs)
    tags_index.check_tags(tags or [])
    queue_name = queue or spec.queue
    check_queue(queue_name)
    connection = connection or redis_client()
    rq_queue = rq_classes.Queue(queue_name, connection=connection)
    options = spec.job_options(args, kwargs)
    if timeout is not None:
        options["timeout"] = timeout
    if tags:
        options["meta"]["tags"] = list(dict.fromkeys(tags))
    job = rq_queue.create_job(spec.func, args=args, kwargs=kwargs, **options)
    when = at.astimezone(UTC) if at else None
    try:
        if spec.unique:
            return put_unique(rq_queue, job, when, at_front)
        with connection.pipeline() as pipe:  # one round trip instead of RQ's two
            put(rq_queue, job, when, at_front, pipeline=pipe)
            pipe.execute()
    except (ConnectionError, TimeoutError) as exc:
        raise RedisUnavailable(url_of(connection)) from exc
    return Submission(job, duplicate=False)


class BulkSubmission(NamedTuple):
    """What a bulk enqueue did: the jobs it enqueued (made on first use; `jobs.ids` costs nothing), and
    the calls it refused with the reason."""

    jobs: BulkJobs
    refused: list[tuple[tuple[Any, ...], str]]


def submit_many(
    name: str,
    calls: list[tuple[Any, ...]],
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    connection: Redis | None = None,
) -> BulkSubmission:
    """Enqueue one job per call (same keyword arguments), written as RQ's enqueue_many writes them, by
    one pipelined script call per batch (see jobs.bulk); refuse the bad calls, and write nothing of theirs."""
    spec = get_spec(name)
    if spec.unique:
        raise JobInputError(f"{name}: unique jobs are enqueued one at a time")
    kwargs = kwargs or {}
    queue_name = queue or spec.queue
    check_queue(queue_name)
    accepted, refused = [], []
    for args in calls:
        try:
            spec.validate(args, kwargs)
            accepted.append(args)
        except JobInputError as exc:
            refused.append((args, str(exc)))
    connection = connection or redis_client()
    rq_queue = rq_classes.Queue(queue_name, connection=connection)
    try:
        jobs = enqueue_calls(
            rq_queue, spec.func, accepted, kwargs, spec.policy_options, spec.describe, BULK_BATCH
        )
    except (ConnectionError, TimeoutError) as exc:
        raise RedisUnavailable(url_of(connection)) from exc
    return BulkSubmission(jobs, refused)


def put(queue: Queue, job: Job, when: datetime | None, at_front: bool, pipeline: Any = None) -> None:
    """Push the job now, or into RQ's scheduled registry if `when` is in the future; index its tags."""
    if when and when > datetime.now(UTC):
        queue.schedule_job(job, when, pipeline=pipeline)
    else:
        queue.enqueue_job(job, pipeline=pipeline, at_front=at_front)
    tags_index.index(job, pipeline or queue.connection)  # after RQ's commands: RQ may start the transaction


def put_unique(queue: Queue, job: Job, when: datetime | None, at_front: bool) -> Submission:
    """Put the job unless one with the same name and arguments is still pending and will run no later
    (a job scheduled for later doesn't absorb a request for now); atomic across clients."""
    key = pending_key(job)
    absorbing = rq_classes.WAITING + ((JobStatus.SCHEDULED,) if when and when > datetime.now(UTC) else ())
    with queue.connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                pending_id = pipe.get(key)
                if pending_id:
                    pending = rq_classes.Job.fetch_many([as_text(pending_id)], connection=queue.connection)[0]
                    if pending is not None and pending.get_status() in absorbing:
                        return Submission(pending, duplicate=True)
                pipe.multi()
                pipe.set(key, job.id, ex=DAY)
                put(queue, job, when, at_front, pipeline=pipe)
                pipe.execute()
                return Submission(job, duplicate=False)
            except WatchError:
                continue


def pending_key(job: Job) -> str:
    """The Redis key that names the pending job for this job's name and arguments."""
    payload = json.dumps([job.args, job.kwargs], sort_keys=True).encode()
    return f"rqkit:pending:{job.meta['rqkit_job']}:{hashlib.sha1(payload).hexdigest()[:16]}"
