"""The trigger that fires each periodic run, exactly once per due time.

Each enabled entry has one pending trigger in rq-scheduler: a job `rqkit-schedule-<name>-<due epoch>`
that runs `fire(name, due)` at its due time (this module's path is stored with every trigger, so it
stays where it is). `fire` (on a worker) claims that due time once (so two schedulers enqueueing the
same trigger run it once), schedules the entry's next trigger from *now* (so missed runs after downtime
collapse into one), skips the run if the previous one is still queued or running (and records the
skip), else enqueues the real job through the registry. `scheduler/sync.py` puts the first triggers in.
"""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.utils import as_text

from config import get_settings, redis_client, rq_classes
from config.durable import NotDurable, durable_pipeline
from jobs import get_spec, submit
from scheduler.runner import Scheduler
from scheduler.schedule import Entry, zone_of

ENTRIES = "rqkit:schedule:entries"  # name -> the entry as synced (its fingerprint)
FIRED_TTL = 2 * 86400


def next_key(name: str) -> str:
    return f"rqkit:schedule:next:{name}"


def state_key(name: str) -> str:
    return f"rqkit:schedule:state:{name}"


def schedule_trigger(scheduler: Scheduler, connection: Redis, entry: Entry, due: datetime) -> str:
    """Put the entry's trigger for `due` into rq-scheduler under a stable id, and point at it."""
    stamp = int(due.timestamp())
    job_id = f"{entry.job_id_prefix}-{stamp}"
    scheduler.enqueue_at(
        due,
        fire,
        entry.name,
        stamp,
        job_id=job_id,
        queue_name=entry.queue or get_spec(entry.job).queue,
        job_description=f"schedule {entry.name}: {entry.job} ({entry.describe_when()})",
        job_result_ttl=86400,
        timeout=60,
    )
    connection.set(next_key(entry.name), job_id)
    return job_id


def fire(name: str, due: int) -> dict[str, Any]:
    """Trigger job: one run of entry `name` for due time `due` (epoch seconds), at most once."""
    settings = get_settings()
    connection = redis_client(settings)
    report: dict[str, Any] = {"entry": name, "due": datetime.fromtimestamp(due, UTC).isoformat()}
    stored = connection.hget(ENTRIES, name)
    if stored is None:
        return {**report, "status": "removed"}
    entry = Entry(**json.loads(stored))
    if as_text(connection.get(next_key(name)) or b"") == f"{entry.job_id_prefix}-{due}":
        # From now, not from `due`: after downtime the missed runs collapse into this one. Before the
        # claim: a run that fails or is refused below must not end the entry's chain of triggers.
        upcoming = entry.next_due(datetime.now(UTC), zone_of(settings))
        schedule_trigger(Scheduler(connection=connection), connection, entry, upcoming)
    if not claim(connection, name, due):
        return {**report, "status": "duplicate"}  # a second scheduler enqueued this trigger too
    previous = connection.hget(state_key(name), "last_job")
    if previous:
        busy = rq_classes.Job.fetch_many([as_text(previous)], connection=connection)[0]
        status = busy.get_status() if busy is not None else None
        if status in rq_classes.UNFINISHED:
            connection.hincrby(state_key(name), "skipped", 1)
            connection.hset(state_key(name), "last_skipped_due", report["due"])
            return {
                **report,
                "status": "skipped",
                "reason": f"the previous run {as_text(previous)} is {status}",
            }
    job = submit(entry.job, tuple(entry.args), entry.kwargs, queue=entry.queue, timeout=entry.timeout).job
    connection.hset(
        state_key(name),
        mapping={
            "last_job": job.id,
            "last_due": report["due"],
            "last_enqueued_at": datetime.now(UTC).isoformat(),
        },
    )
    return {**report, "status": "enqueued", "job": job.id}


def claim(connection: Redis, name: str, due: int) -> bool:
    """Take the run of `name` for `due`, unless a scheduler took it already. With durable_replicas set,
    only once the replicas have the claim: else it is let go, and NotDurable says it didn't run."""
    key, claimed = f"rqkit:schedule:fired:{name}:{due}", False
    try:
        with durable_pipeline(connection, f"the run of {name} due {due}", transaction=False) as pipe:
            pipe.set(key, "1", nx=True, ex=FIRED_TTL)
            claimed = bool(pipe.execute()[0])
    except NotDurable:
        if not claimed:
            return False  # another scheduler's claim: no write of ours to lose
        with suppress(RedisError):  # a claim we can't let go of now keeps this one due time from running
            connection.delete(key)
        raise
    return claimed
