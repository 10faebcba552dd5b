"""How every job entry point fails: under a memory cap, and retried only for transient errors."""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rq import get_current_job

from config import get_settings
from jobs import metrics
from jobs.errors import MemoryLimitError, UpstreamError

Result = TypeVar("Result")


def retry_only_transient(func: Callable[..., Result]) -> Callable[..., Result]:
    """Wrap a job entry point: a memory cap (RQKIT_JOB_MEMORY_MB); anything but an UpstreamError
    (bad input, a 5xx reply, a bug, the memory limit) fails the job at once, without its retries."""

    @functools.wraps(func)
    def entry_point(*args: Any, **kwargs: Any) -> Result:
        start, succeeded = time.perf_counter(), False
        try:
            with memory_cap(get_settings().job_memory_mb):
                result = func(*args, **kwargs)
            succeeded = True
            return result
        except UpstreamError:
            raise
        except Exception:
            job = get_current_job()  # the very object the worker consults for retries next
            if job is not None:
                job.retries_left = 0
            raise
        finally:
            metrics.record(succeeded, time.perf_counter() - start)

    return entry_point


@contextmanager
def memory_cap(megabytes: int) -> Iterator[None]:
    """Cap the process's address space at its current size + `megabytes` for the block (RLIMIT_AS):
    in a work-horse, an allocation over it fails the job with "memory limit" and the worker goes on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * resource.getpagesize()
    cap = current + megabytes * 2**20
    for limit in (soft, hard):
        if limit != resource.RLIM_INFINITY:
            cap = min(cap, limit)  # never loosen a cap already in force
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    except MemoryError:
        raise MemoryLimitError(f"memory limit: the job needed more than {megabytes} MB") from None
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
