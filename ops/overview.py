"""What the dashboard's Overview draws: runs per minute over the last hour and per hour over the last
week (by job type, queue and outcome, from the job history), and each queue's depth and latency."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq.utils import as_text, utcparse

from config import history, rq_classes
from config.history import HOUR, MINUTE
from ops.views import queue_counts, queue_names

PERIODS = {"minute": (MINUTE, 60), "hour": (HOUR, 7 * 24)}  # bucket size, buckets shown


def runs(connection: Redis, now: float) -> dict[str, Any]:
    """For each period: the buckets' start times, and one row of counts per job type, queue and outcome
    that ran in any of them."""
    charts = {}
    for period, (size, count) in PERIODS.items():
        buckets = history.read(connection, size, count, now)
        kinds = sorted({kind for counts in buckets.values() for kind in counts})
        charts[period] = {
            "times": list(buckets),
            "runs": [
                {
                    "job": job,
                    "queue": queue,
                    "outcome": outcome,
                    "counts": [b.get(kind, 0) for b in buckets.values()],
                }
                for kind in kinds
                for job, queue, outcome in [kind]
            ],
        }
    return charts


def queues(connection: Redis, now: float) -> list[dict[str, Any]]:
    """Each queue's jobs per state, and its latency: how long the job it hands out next has waited."""
    rows = []
    for name in queue_names(connection):
        queue = rq_classes.Queue(name, connection=connection)
        row = queue_counts(queue)
        head = connection.lindex(queue.key, 0)
        enqueued = connection.hget(queue.job_class.key_for(as_text(head)), "enqueued_at") if head else None
        row["latency"] = waited(as_text(enqueued), now) if enqueued else None
        rows.append(row)
    return rows


def waited(enqueued_at: str, now: float) -> float | None:
    try:
        return max(0.0, now - utcparse(enqueued_at).timestamp())
    except ValueError:  # not RQ's format: written by something else
        return None


def overview(connection: Redis) -> dict[str, Any]:
    now = time.time()
    return {"now": now, "queues": queues(connection, now), **runs(connection, now)}
