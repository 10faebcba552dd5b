"""What a run of workers leaves in Redis, in a form that two runs (RQ's workers, the toolkit's) can be
compared by: job ids and worker names replaced by stable labels, timestamps and TTLs reduced to kinds."""

from __future__ import annotations

import json
import re
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.utils import as_text

from config.history import PREFIX

# Keys that name a worker or hold timestamps only: compared through the worker's counts instead.
WORKER_KEYS = (b"rq:worker", b"rq:workers", b"rq:clean_registries")
HISTORY = PREFIX.encode()  # the toolkit's workers count each run in the job history: tests/test_history.py
COUNTS = ("successful_job_count", "failed_job_count")
CALLBACKS = ("success", "failure")  # tests/compat_jobs.py's callbacks mark compat:KIND:JOB_ID


def ttl_kind(connection: Redis, key: str) -> str:
    ttl = connection.ttl(key)
    return {-2: "gone", -1: "kept"}.get(ttl, "expires")


def registries(queue: Queue) -> dict[str, list[str]]:
    """Every list of job ids RQ keeps for a queue, by name."""
    return {
        "queued": queue.get_job_ids(),
        "started": queue.started_job_registry.get_job_ids(),
        "finished": queue.finished_job_registry.get_job_ids(),
        "failed": queue.failed_job_registry.get_job_ids(),
        "deferred": queue.deferred_job_registry.get_job_ids(),
        "scheduled": queue.scheduled_job_registry.get_job_ids(),
        "canceled": queue.canceled_job_registry.get_job_ids(),
    }


def job_state(connection: Redis, job_id: str, lists: dict[str, list[str]]) -> dict[str, Any]:
    """One job as RQ reads it back: status, results, meta, where it is listed, what its callbacks saw."""
    key = f"rq:job:{job_id}"
    fields = sorted(as_text(k) for k in connection.hkeys(key))
    entry: dict[str, Any] = {"ttl": ttl_kind(connection, key), "fields": fields}
    if not fields:
        return entry
    job = Job.fetch(job_id, connection=connection)
    results = job.results()
    latest = results[0] if results else None
    succeeded = latest is not None and latest.type == Result.Type.SUCCESSFUL
    return entry | {
        "status": job.get_status(),
        "meta": job.meta,
        "retries_left": job.retries_left,
        "results": [r.type.name for r in results],
        "return_value": repr(latest.return_value) if succeeded and latest else None,
        "error": (latest.exc_string or "").strip().splitlines()[-1:] if latest else None,
        "results_ttl": ttl_kind(connection, f"rq:results:{job_id}"),
        "registries": [name for name, members in lists.items() if job_id in members],
        "callbacks": [
            kind for kind in ("success", "failure") if connection.exists(f"compat:{kind}:{job_id}")
        ],
    }


def snapshot(connection: Redis, ids: dict[str, str], worker_names: list[str]) -> dict[str, Any]:
    """What the workers named left in Redis for the jobs `ids` ({label: job id}) on queue `default`:
    each job's state, each worker's counts, and every other key with its type and TTL kind."""
    labels = {job_id: name for name, job_id in ids.items()}
    labels |= {name: f"WORKER{i}" for i, name in enumerate(worker_names)}
    pattern = re.compile("|".join(map(re.escape, labels)))

    def label(text: str) -> str:
        return re.sub(r"\b[0-9a-f]{32}\b", "HEX", pattern.sub(lambda m: labels[m.group()], text))

    lists = registries(Queue("default", connection=connection))
    jobs = {name: job_state(connection, job_id, lists) for name, job_id in ids.items()}
    workers = [
        {
            field: connection.hget(f"rq:worker:{name}", field)
            for field in ("successful_job_count", "failed_job_count")
        }
        for name in worker_names
    ]
    keys = sorted(
        (as_text(key), as_text(connection.type(key)), ttl_kind(connection, key))
        for key in connection.scan_iter()
        if not key.startswith((*WORKER_KEYS, HISTORY))
    )
    found = json.loads(label(json.dumps({"jobs": jobs, "workers": workers, "keys": keys}, default=str)))
    return found | {"keys": sorted(found["keys"])}
