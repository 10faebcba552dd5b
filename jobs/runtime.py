"""What every job entry point runs under: a memory cap, retries for transient errors only, and a record
of each run (count, outcome, duration) in Redis, which the metrics read, so that they cover all workers
(and in the job history, config/history.py, when the worker doesn't count it); while Redis is away, on
this host's disk until it answers (jobs/metrics_spool.py)."""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import RedisError
from rq import get_current_job

from config import get_settings, history
from config.history import COUNTED_BY_WORKER, OUTCOMES, job_type
from jobs.errors import MemoryLimitError, UpstreamError
from jobs.metrics_spool import Counts, send

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
RUNS, SECONDS, BUCKETS = "rqkit:metrics:runs", "rqkit:metrics:seconds", "rqkit:metrics:buckets"
LIMITS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)  # the duration histogram's


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
            record_run(succeeded, time.perf_counter() - start)

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


def record_run(succeeded: bool, seconds: float) -> None:
    """Count one run of the current RQ job (outside RQ, nothing); never fails the job."""
    job = get_current_job()
    if job is None:
        return
    name = job_type(job)
    spool = metrics_spool(get_settings().var_dir)
    counts = run_counts(name, job.origin, succeeded, seconds)
    if not getattr(job, COUNTED_BY_WORKER, False):  # a stock RQ worker: the history is counted here
        counts |= history.run_counts(name, job.origin, OUTCOMES[not succeeded], time.time())
    try:
        send(job.connection, counts, spool)
    except RedisError as exc:  # an outage: the worker waits for Redis to record the job itself
        logger.warning("Redis took no metrics for %s (%s): kept in %s until it answers", name, exc, spool)
    except Exception:  # noqa: BLE001 - metrics are never worth a failed job
        logger.warning("could not record metrics for %s", name, exc_info=True)


def run_counts(name: str, queue: str, succeeded: bool, seconds: float) -> Counts:
    """What one run adds to the metrics' hashes."""
    return {
        RUNS: {f"{name}\t{queue}\t{'succeeded' if succeeded else 'failed'}": 1},
        SECONDS: {f"{name}\tsum": float(seconds), f"{name}\tcount": 1},
        BUCKETS: {f"{name}\t{limit}": 1 for limit in LIMITS if seconds <= limit},
    }


def metrics_spool(var_dir: Path) -> Path:
    """Where this host keeps the job-run metrics that Redis could not take."""
    return var_dir / "metrics-spool"
