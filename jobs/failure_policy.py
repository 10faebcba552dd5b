"""Only transient failures are retried: anything but an UpstreamError ends the job's retries."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from rq import get_current_job

from jobs.errors import UpstreamError

Result = TypeVar("Result")


def retry_only_transient(func: Callable[..., Result]) -> Callable[..., Result]:
    """Wrap a job entry point: a permanent error (bad input, a 5xx reply, a bug) fails it at once."""

    @functools.wraps(func)
    def entry_point(*args: Any, **kwargs: Any) -> Result:
        try:
            return func(*args, **kwargs)
        except UpstreamError:
            raise
        except Exception:
            job = get_current_job()  # the very object the worker consults for retries next
            if job is not None:
                job.retries_left = 0
            raise

    return entry_point
