"""Public job names mapped to functions and policies, and the one path every enqueue takes."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, NamedTuple

from redis import Redis
from redis.exceptions import ConnectionError, TimeoutError, WatchError
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.utils import as_text

from config import RedisUnavailable, Settings, get_settings, redis_client, rq_classes
from config.connection import url_of
from jobs import api, demo, email, images, maintenance, stats
from jobs import tags as tags_index
from jobs.bulk import BulkJobs, enqueue_calls
from jobs.errors import JobInputError, UnknownJobError

WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED)
DAY = 24 * 3600
# For jobs that are safe to run again: failure_policy fails their own errors at once, so only a run
# cut short (its worker killed, its work-horse dead) is retried, at once and then a minute later.
RERUN_IF_CUT_SHORT = (0, 60)
BULK_BATCH = 1000


@dataclass(frozen=True)
class JobSpec:
    """A job type: its public name, the function RQ runs, its queue and its policy."""

    name: str
    func: Callable[..., Any]
    queue: str
    description: str
    timeout: int = 180
    retry_intervals: tuple[int, ...] = ()
    result_ttl: int = DAY
    failure_ttl: int = 30 * DAY
    unique: bool = False  # at most one pending job per set of arguments
    check: Callable[..., None] | None = None  # raises JobInputError for bad arguments
    timeout_setting: str | None = None  # a Settings field that overrides `timeout`
    retries: Callable[[Settings], Sequence[int]] | None = (
        None  # intervals from settings, over retry_intervals
    )

    @cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.func)

    def validate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse arguments that are not JSON or that the job cannot take."""
        check_json(list(args), "arguments")
        check_json(kwargs, "keyword arguments")
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise JobInputError(f"{self.name}: {exc}") from exc
        if self.check:
            self.check(*args, **kwargs)

    def describe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """A one-line description for `rq info` and the dashboard."""
        words = [
            self.name,
            *(json.dumps(a) for a in args),
            *(f"{k}={json.dumps(v)}" for k, v in kwargs.items()),
        ]
        return " ".join(words)

    def job_options(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The RQ job options this policy gives a call."""
        return {**self.policy_options(), "description": self.describe(args, kwargs)}

    def policy_options(self) -> dict[str, Any]:
        """The RQ job options this policy gives every call, all but the description."""
        settings = get_settings()
        timeout = getattr(settings, self.timeout_setting) if self.timeout_setting else self.timeout
        intervals = list(self.retries(settings) if self.retries else self.retry_intervals)
        return {
            "timeout": timeout,
            "result_ttl": self.result_ttl,
            "failure_ttl": self.failure_ttl,
            "retry": Retry(max=len(intervals), interval=intervals) if intervals else None,
            "meta": {"rqkit_job": self.name},
        }


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "sleep",
            demo.sleep,
            queue="default",
            description="Sleep SECONDS, then report it (the Resque tutorial's Sleeper)",
            timeout=demo.MAX_SLEEP + 60,
            check=demo.check_seconds,
        ),
        JobSpec(
            "thumbnail",
            images.thumbnail,
            queue="images",
            description="Make bounded thumbnails of the image at PATH (sizes and format from settings)",
            timeout_setting="thumbnail_timeout",
            check=images.check_thumbnail,
            retry_intervals=RERUN_IF_CUT_SHORT,
        ),
        JobSpec(
            "email",
            email.send_email,
            queue="email",
            description="Send a message through SMTP, at most once per idempotency key",
            timeout=email.JOB_TIMEOUT,
            retries=lambda settings: settings.email_retry_intervals,
            check=email.check_email,
        ),
        JobSpec(
            "api-call",
            api.call_api,
            queue="api",
            description="One HTTP request to an allowed host; its response is the result",
            timeout=300,
            retries=api.retry_intervals,
            check=api.check_call,
        ),
        JobSpec(
            "webhook",
            api.deliver_webhook,
            queue="api",
            description="POST an event signed with HMAC-SHA256 to a webhook URL",
            timeout=300,
            retries=api.retry_intervals,
            check=api.check_webhook,
        ),
        JobSpec(
            "expire-sessions",
            maintenance.expire_sessions,
            queue="maintenance",
            description="Delete the expired sessions of a store (settings: session_stores), in batches",
            timeout=maintenance.JOB_TIMEOUT,
            check=maintenance.check_expire,
            retry_intervals=RERUN_IF_CUT_SHORT,
        ),
        JobSpec(
            "sweep-cache",
            maintenance.sweep_cache,
            queue="maintenance",
            description="Sweep cache TARGET or all (settings: cache_targets) of old, idle or excess entries",
            timeout=maintenance.JOB_TIMEOUT,
            check=maintenance.check_sweep,
            retry_intervals=RERUN_IF_CUT_SHORT,
        ),
        JobSpec(
            "prune-tags",
            tags_index.prune_tags,
            queue="maintenance",
            description="Drop the jobs that expired or were deleted from every tag index",
            timeout=maintenance.JOB_TIMEOUT,
            retry_intervals=RERUN_IF_CUT_SHORT,
        ),
        JobSpec(
            "word-count",
            stats.word_count,
            queue="maintenance",
            description="Recount the total words of MODEL (comment or article) and cache it in Redis",
            timeout=30 * 60,
            unique=True,
            check=stats.check_model,
            retry_intervals=RERUN_IF_CUT_SHORT,
        ),
    )
}


class Submission(NamedTuple):
    """What enqueue did: the job, and whether it was an already pending one."""

    job: Job
    duplicate: bool


def get_spec(name: str) -> JobSpec:
    """The spec registered as `name`, or UnknownJobError listing the known ones."""
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJobError(name, sorted(JOBS)) from None


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
    absorbing = WAITING + ((JobStatus.SCHEDULED,) if when and when > datetime.now(UTC) else ())
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


def check_queue(name: str) -> None:
    """Refuse a queue that no worker of this configuration listens to."""
    queues = get_settings().queues
    if name not in queues:
        raise JobInputError(f"queue {name!r} is not configured (RQKIT_QUEUES: {', '.join(queues)})")


def check_json(value: Any, where: str) -> None:
    """Raise JobInputError unless `value` is made of JSON types only."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JobInputError(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, list):
        for item in value:
            check_json(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise JobInputError(f"{where}: dictionary keys must be strings, got {key!r}")
            check_json(item, where)
        return
    raise JobInputError(
        f"{where}: {type(value).__name__} is not a JSON type (use str, int, float, bool, None, list or dict)"
    )
