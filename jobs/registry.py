"""Public job names mapped to functions and policies: the one list of what the toolkit runs."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rq import Retry

from config import Settings, get_settings
from jobs import api, demo, email, images, maintenance, scheduled, stats, tags
from jobs.errors import JobInputError, UnknownJobError

DAY = 24 * 3600
# For jobs that are safe to run again: jobs.runtime fails their own errors at once, so only a run
# cut short (its worker killed, its work-horse dead) is retried, at once and then a minute later.
RERUN_IF_CUT_SHORT = (0, 60)
MAX_DEPTH = 100  # of a job's JSON arguments: far below the recursion limit of every reader of them


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
    takes: Callable[..., Any] | None = None  # the signature calls are checked against, if not func's

    @cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.takes or self.func)

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
            takes=email.Message,
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
            tags.prune_tags,
            queue="maintenance",
            description="Drop the jobs that expired or were deleted from every tag index",
            timeout=maintenance.JOB_TIMEOUT,
            retry_intervals=RERUN_IF_CUT_SHORT,
        ),
        JobSpec(
            "release-due",
            scheduled.release_due,
            queue="maintenance",
            description="Move due retries, deferrals and --in/--at jobs to their queues (for bare workers)",
            timeout=60,
            result_ttl=600,
            failure_ttl=DAY,
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


def get_spec(name: str) -> JobSpec:
    """The spec registered as `name`, or UnknownJobError listing the known ones."""
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJobError(name, sorted(JOBS)) from None


def function_paths() -> set[str]:
    """The dotted path RQ stores for each job's function: what the toolkit's workers run."""
    return {f"{spec.func.__module__}.{spec.func.__qualname__}" for spec in JOBS.values()}


def check_queue(name: str) -> None:
    """Refuse a queue that no worker of this configuration listens to."""
    queues = get_settings().queues
    if name not in queues:
        raise JobInputError(f"queue {name!r} is not configured (RQKIT_QUEUES: {', '.join(queues)})")


def check_json(value: Any, where: str, depth: int = 0) -> None:
    """Raise JobInputError unless `value` is made of JSON types only, nested at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise JobInputError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JobInputError(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, list):
        for item in value:
            check_json(item, where, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise JobInputError(f"{where}: dictionary keys must be strings, got {key!r}")
            check_json(item, where, depth + 1)
        return
    raise JobInputError(
        f"{where}: {type(value).__name__} is not a JSON type (use str, int, float, bool, None, list or dict)"
    )
