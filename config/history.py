"""The job history that the dashboard's Overview draws: runs per minute (kept 2 hours) and per hour (kept
8 days), by job type, queue and outcome.

A bucket is one Redis hash (`rqkit:history:60:<minute's epoch>`, `rqkit:history:3600:<hour's epoch>`),
field `job<TAB>queue<TAB>succeeded|failed`, that expires at a fixed time after its period: however many
jobs run, Redis holds at most 120 + 192 of them, each with a field per kind of run. Who adds a run: the
toolkit's workers, for every job they run (plain successes counted in memory and sent with a later
script call at most once a second, and when the worker goes idle: no round trip of their own, Tally;
every other end after RQ's own handling); under any other worker (a stock `rq worker`), the toolkit's
job entry points, in the pipeline that records their metrics (jobs/runtime.py). A job that the
toolkit's worker runs carries `COUNTED_BY_WORKER`, so the two never both count it.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import lru_cache
from typing import Any

from redis import Redis
from rq.exceptions import DeserializationError
from rq.job import Job

PREFIX = "rqkit:history:"
MINUTE, HOUR = 60, 3600
KEEP = {MINUTE: 2 * 3600, HOUR: 8 * 86400}  # seconds a bucket outlives its period
OUTCOMES = ("succeeded", "failed")
UNREADABLE = "(unreadable job)"
COUNTED_BY_WORKER = "_rqkit_counted_by_worker"  # an attribute of a Job object its worker counts

Buckets = dict[int, dict[tuple[str, str, str], int]]  # period start -> (job, queue, outcome) -> runs


def job_type(job: Job) -> str:
    """The registry name a job was enqueued under, else (enqueued without the toolkit) its function;
    for a job whose data can't be read, UNREADABLE."""
    try:
        return str(meta_of(job).get("rqkit_job") or job.func_name)
    except DeserializationError:
        return UNREADABLE


def meta_of(job: Job) -> dict[str, Any]:
    """A job's meta, or {} where something else than a dict was written there."""
    return job.meta if isinstance(job.meta, dict) else {}


def bucket_key(size: int, at: float) -> str:
    return f"{PREFIX}{size}:{int(at // size * size)}"


def expiry(key: str) -> int | None:
    """When a history bucket expires (epoch seconds), from its key; None for any other key."""
    if not key.startswith(PREFIX):
        return None
    size, start = (int(part) for part in key[len(PREFIX) :].split(":"))
    return start + size + KEEP[size]


def run_field(name: str, queue: str, outcome: str) -> str:
    return f"{name}\t{queue}\t{outcome}"


def run_counts(name: str, queue: str, outcome: str, at: float) -> dict[str, dict[str, float]]:
    """What one run adds: one to its field in its minute's bucket and in its hour's."""
    field = run_field(name, queue, outcome)
    return {bucket_key(size, at): {field: 1} for size in KEEP}


class Tally:
    """Runs counted in a worker's memory and sent with a later script call, at most once a second (as
    Sidekiq sends its processed counts with its heartbeat): per job, a dict addition; per second, a
    few arguments (bench/history_cost.py). A worker killed with -9 loses at most that second's counts."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, str]] = Counter()  # (minute, field) -> runs
        self.sent_at = time.monotonic()

    def add(self, job: Job, outcome: str, at: float) -> None:
        self.counts[(int(at // MINUTE), run_field(job_type(job), job.origin, outcome))] += 1

    def due(self, now: bool = False) -> list[Any]:
        """The claim script's history arguments if the counts are due (or `now`): for each bucket and
        field, the key, its expiry, the field and the runs; else none."""
        if not self.counts or not (now or time.monotonic() - self.sent_at >= 1):
            return []
        return [
            arg
            for (minute, field), runs in self.counts.items()
            for key, expires in bucket_expiries(minute)
            for arg in (key, expires, field, runs)
        ]

    def as_counts(self) -> dict[str, dict[str, float]]:
        """The same runs as `add` takes them: bucket -> field -> runs."""
        counts: dict[str, dict[str, float]] = {}
        for (minute, field), runs in self.counts.items():
            for key, _ in bucket_expiries(minute):
                bucket = counts.setdefault(key, {})
                bucket[field] = bucket.get(field, 0) + runs
        return counts

    def sent(self) -> None:
        self.counts.clear()
        self.sent_at = time.monotonic()


@lru_cache(maxsize=4)
def bucket_expiries(minute: int) -> tuple[tuple[str, int], ...]:
    """The minute's and its hour's buckets, each with when it expires."""
    keys = [bucket_key(size, minute * MINUTE) for size in KEEP]
    return tuple((key, expiry(key) or 0) for key in keys)


def count_run(connection: Redis, job: Job, outcome: str) -> None:
    """Add one run of `job` now, in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        add(pipe, run_counts(job_type(job), job.origin, outcome, time.time()))
        pipe.execute()


def add(pipe: Any, counts: dict[str, dict[str, float]]) -> None:
    """Queue on `pipe` the increments of `counts` (hash -> field -> amount), with the history's expiries."""
    for key, fields in counts.items():
        for field, amount in fields.items():
            if isinstance(amount, int):
                pipe.hincrby(key, field, amount)
            else:
                pipe.hincrbyfloat(key, field, amount)
        if (at := expiry(key)) is not None:
            pipe.expireat(key, at)


def read(connection: Redis, size: int, periods: int, now: float | None = None) -> Buckets:
    """The last `periods` buckets of `size` seconds up to now (the current one included), oldest first,
    in one round trip; a bucket with no runs is empty."""
    end = int((now if now is not None else time.time()) // size * size)
    starts = [end - size * back for back in range(periods - 1, -1, -1)]
    with connection.pipeline(transaction=False) as pipe:
        for start in starts:
            pipe.hgetall(f"{PREFIX}{size}:{start}")
        replies = pipe.execute(raise_on_error=False)
    buckets: Buckets = {}
    for start, reply in zip(starts, replies, strict=True):
        runs = buckets[start] = {}
        if isinstance(reply, Exception):  # not a hash: another writer's key, left out
            continue
        for field, value in reply.items():
            parts = tuple(field.decode(errors="replace").split("\t"))
            if len(parts) == 3 and parts[2] in OUTCOMES and value.isdigit():  # another writer's: left out
                runs[parts] = runs.get(parts, 0) + int(value)  # type: ignore[index]
    return buckets
