"""The one path every enqueue takes: checked against the registry, then put on its queue (or scheduled),
one at a time or in bulk."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import as_text

from config import RedisUnavailable, redis_client, rq_classes
from config.connection import reconnect, url_of
from config.durable import durable_pipeline
from config.outage import is_outage
from jobs import tags as tags_index
from jobs.bulk import BulkJobs, enqueue_calls
from jobs.errors import JobInputError
from jobs.files import is_text
from jobs.registry import DAY, check_queue, get_spec

BULK_BATCH = 1000
FURTHEST = timedelta(days=5 * 365)  # the furthest ahead a job may be scheduled: 5 years
LONGEST_TIMEOUT = DAY  # seconds
DAY_DELTA = timedelta(seconds=DAY)


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
    check_text(name, (args, kwargs))
    spec.validate(args, kwargs)
    tags_index.check_tags(tags or [])
    queue_name = queue or spec.queue
    check_queue(queue_name)
    when = due_time(at) if at else None
    connection = connection or redis_client()
    rq_queue = rq_classes.Queue(queue_name, connection=connection)
    options = spec.job_options(args, kwargs)
    if timeout is not None:
        options["timeout"] = check_timeout(timeout)
    if tags:
        options["meta"]["tags"] = list(dict.fromkeys(tags))
    job = rq_queue.create_job(spec.func, args=args, kwargs=kwargs, **options)
    try:
        if spec.unique:
            return put_unique(rq_queue, job, when, at_front)
        with durable_pipeline(connection, f"job {job.id}") as pipe:  # one round trip instead of RQ's two
            put(rq_queue, job, when, at_front, pipeline=pipe)
            pipe.execute()
    except RedisError as exc:
        raise unavailable(exc, connection) from exc
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
            check_text(name, (args, kwargs))
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
    except RedisError as exc:
        raise unavailable(exc, connection) from exc
    return BulkSubmission(jobs, refused)


def unavailable(exc: RedisError, connection: Redis) -> RedisUnavailable:
    """The error for a Redis that is away or takes no writes for now; any other error is a bug, raised."""
    if not is_outage(exc):
        raise exc
    reconnect(connection)
    return RedisUnavailable(url_of(connection), exc)


def due_time(at: datetime) -> datetime | None:
    """When to schedule a job asked for at `at` (without an offset: local time), in UTC; None once that
    time has come: the job runs now. JobInputError for a time more than FURTHEST ahead, or a local time
    that a daylight-saving change skips (it never happens) or repeats (it happens twice)."""
    now = datetime.now(UTC)
    rough = at.replace(tzinfo=UTC) - now  # off by the offset, under a day: no conversion can overflow yet
    if rough < -DAY_DELTA:
        return None
    if rough > FURTHEST + DAY_DELTA:
        raise too_far(at)
    check_wall_clock(at)
    exact = aware(at).astimezone(UTC)
    if exact - now > FURTHEST:
        raise too_far(at)
    return exact if exact > now else None


def too_far(at: datetime) -> JobInputError:
    return JobInputError(
        f"{at.isoformat()} is more than {FURTHEST.days} days ahead, the furthest a job is scheduled"
    )


def aware(at: datetime) -> datetime:
    """The time with its UTC offset: an offset-less one is a local time."""
    return at if at.tzinfo else at.astimezone()


def check_wall_clock(at: datetime) -> None:
    """Refuse a wall-clock time that its zone (the local one, for an offset-less time) skips or repeats."""
    first, second = aware(at.replace(fold=0)), aware(at.replace(fold=1))
    if first.utcoffset() == second.utcoffset():
        return
    zone = f"time zone {at.tzinfo}" if at.tzinfo else f"the local time zone ({'/'.join(time.tzname)})"
    wall = at.replace(tzinfo=None).isoformat()
    if first.astimezone(UTC).astimezone(at.tzinfo).replace(tzinfo=None) != at.replace(tzinfo=None):
        raise JobInputError(
            f"{wall} does not exist in {zone}: a daylight-saving change skips it; "
            "give a time with its UTC offset"
        )
    raise JobInputError(
        f"{wall} happens twice in {zone} (a daylight-saving change repeats it): give "
        f"{first.isoformat()} for the first or {second.isoformat()} for the second"
    )


def check_timeout(timeout: int) -> int:
    """A job's time-out: a whole number of seconds from 1 to LONGEST_TIMEOUT."""
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= LONGEST_TIMEOUT:
        raise JobInputError(
            f"timeout must be a whole number of seconds from 1 to {LONGEST_TIMEOUT}, got {timeout!r}"
        )
    return timeout


def check_text(name: str, value: Any) -> None:
    """Refuse a string in the arguments (keys too, at any depth) that holds a lone surrogate (bytes that
    were not UTF-8, from a file name or the command line, say): Redis takes UTF-8 text only."""
    pending, seen = [value], set()
    while pending:  # no recursion: arguments nested deeper than Python's stack are refused elsewhere
        item = pending.pop()
        if isinstance(item, str) and not is_text(item):
            raise JobInputError(f"{name}: {item!r} is not UTF-8 text")
        if id(item) in seen:  # a list that holds itself: check_json refuses it
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            pending += item


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
    with durable_pipeline(queue.connection, f"job {job.id}") as pipe:
        while True:
            try:
                pipe.watch(key)
                pending_id = pipe.get(key)
                if pending_id:
                    pending = rq_classes.Job.fetch_many([as_text(pending_id)], connection=queue.connection)[0]
                    if pending is not None and pending.get_status() in absorbing:
                        pipe.multi()  # a write, so that the durable mode's WAIT covers the pending job too
                        pipe.expire(key, DAY)
                        pipe.execute()
                        # our own job when the reply to our EXEC was lost (redis-py: a WatchError)
                        return Submission(pending, duplicate=pending.id != job.id)
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
