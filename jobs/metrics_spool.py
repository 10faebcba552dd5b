"""Job-run metrics that Redis could not take, kept on this host's disk until it answers again.

A run's counts go to Redis at once, in one pipeline with any counts waiting in the spool
(`var/metrics-spool/`). When Redis is away, all of them go back to the spool as one file, so the spool
stays a few small files however long the outage (its size grows with the kinds of job and, for the
history's buckets, the minutes the outage lasts; not with the runs).
The next run recorded on this host, or a scrape of `cli.py metrics`, adds what waits. A file belongs
to whoever deletes it first: two processes never add the same counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from uuid import uuid4

from redis import Redis

from config.history import add

Counts = dict[str, dict[str, float]]  # Redis hash -> field -> what to add to it


def send(connection: Redis, counts: Counts, spool: Path) -> None:
    """Add `counts` and everything in `spool` to Redis in one pipeline; if that fails, keep all of it in
    `spool` and raise the RedisError. (Not a MULTI transaction: a third of a run's recording time, for
    the one case it would cover, a server that dies within the microseconds the pipeline runs.)"""
    waiting = take(spool)
    total = merged(counts, waiting) if waiting else counts
    if not total:
        return
    try:
        with connection.pipeline(transaction=False) as pipe:
            add(pipe, total)
            pipe.execute()
    except Exception:
        keep(total, spool)
        raise
    if waiting:
        with_nothing_left(spool)


def take(spool: Path) -> Counts:
    """The sum of the spooled counts, their files deleted (a file someone else deleted first is theirs)."""
    try:
        names = [name for name in os.listdir(spool) if name.endswith(".json")]
    except FileNotFoundError:  # the usual case: nothing waits
        return {}
    total: Counts = {}
    for name in names:
        path = spool / name
        try:
            data = path.read_bytes()
            path.unlink()
        except FileNotFoundError:
            continue
        total = merged(total, json.loads(data))
    return total


def keep(counts: Counts, spool: Path) -> None:
    """Write `counts` to a new file in `spool`, whole or not at all (written aside, then renamed)."""
    name, text = uuid4().hex, json.dumps(counts)
    for attempt in range(3):
        spool.mkdir(parents=True, exist_ok=True)
        aside = spool / f".{name}.tmp"
        try:
            aside.write_text(text)
            aside.rename(spool / f"{name}.json")
            return
        except FileNotFoundError:  # another process removed the folder, empty, just now: again
            if attempt == 2:
                raise


def merged(first: Counts, second: Counts) -> Counts:
    total = {key: dict(fields) for key, fields in first.items()}
    for key, fields in second.items():
        mine = total.setdefault(key, {})
        for field, amount in fields.items():
            mine[field] = mine.get(field, 0) + amount
    return total


def with_nothing_left(spool: Path) -> None:
    """Remove the spool folder once empty, so that the next run finds nothing in one look."""
    try:
        spool.rmdir()
    except OSError:  # not empty (another process keeps counts), or gone
        pass
