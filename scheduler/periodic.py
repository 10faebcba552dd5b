"""Periodic runs on rq-scheduler: sync the schedule into Redis, and fire each due run exactly once.

Each enabled entry has one pending trigger in rq-scheduler: a job `rqkit-schedule-<name>-<due epoch>`
that runs `fire(name, due)` at its due time. `fire` (on a worker) claims that due time once (so two
schedulers enqueueing the same trigger run it once), schedules the entry's next trigger from *now*
(so missed runs after downtime collapse into one), skips the run if the previous one is still
queued or running (and records the skip), else enqueues the real job through the registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.job import Job, JobStatus
from rq.utils import as_text
from rq_scheduler import Scheduler

from config import Settings, get_settings, redis_client, rq_classes
from jobs import get_spec, submit
from jobs.errors import JobInputError
from scheduler.schedule import Entry, load_schedule, zone_of

ENTRIES = "rqkit:schedule:entries"  # name -> the entry as synced (its fingerprint)
BUSY = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
FIRED_TTL = 2 * 86400


def next_key(name: str) -> str:
    return f"rqkit:schedule:next:{name}"


def state_key(name: str) -> str:
    return f"rqkit:schedule:state:{name}"


@dataclass
class Changes:
    """What a sync did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def sync(settings: Settings | None = None, connection: Redis | None = None) -> Changes:
    """Make Redis hold exactly the enabled entries of the settings; touch no other scheduled job."""
    settings = settings or get_settings()
    entries = {
        entry.name: entry for entry in load_schedule(settings) if entry.enabled
    }  # raises before changes
    connection = connection or redis_client(settings)
    scheduler = rq_classes.Scheduler(connection=connection)
    stored = {as_text(name): as_text(value) for name, value in connection.hgetall(ENTRIES).items()}
    changes = Changes()
    now = datetime.now(UTC)
    for name, entry in entries.items():
        pointer = connection.get(next_key(name))
        if stored.get(name) == entry.fingerprint() and pointer and as_text(pointer) in scheduler:
            changes.unchanged.append(name)
            continue
        if pointer:
            scheduler.cancel(as_text(pointer))
        schedule_trigger(scheduler, connection, entry, entry.next_due(now, zone_of(settings)))
        connection.hset(ENTRIES, name, entry.fingerprint())
        (changes.updated if name in stored else changes.added).append(name)
    for name in sorted(set(stored) - set(entries)):
        forget(scheduler, connection, name)
        changes.removed.append(name)
    return changes


def clear(connection: Redis | None = None) -> list[str]:
    """Remove every entry this toolkit synced, and only those."""
    connection = connection or redis_client()
    scheduler = rq_classes.Scheduler(connection=connection)
    names = sorted(as_text(name) for name in connection.hkeys(ENTRIES))
    for name in names:
        forget(scheduler, connection, name)
    return names


def forget(scheduler: Scheduler, connection: Redis, name: str) -> None:
    pointer = connection.get(next_key(name))
    if pointer:
        scheduler.cancel(as_text(pointer))
        rq_classes.Job(as_text(pointer), connection=connection).delete()
    connection.delete(next_key(name))
    connection.hdel(ENTRIES, name)


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
    if not connection.set(f"rqkit:schedule:fired:{name}:{due}", "1", nx=True, ex=FIRED_TTL):
        return {**report, "status": "duplicate"}  # a second scheduler enqueued this trigger too
    stored = connection.hget(ENTRIES, name)
    if stored is None:
        return {**report, "status": "removed"}
    entry = Entry(**json.loads(stored))
    if as_text(connection.get(next_key(name)) or b"") == f"{entry.job_id_prefix}-{due}":
        # From now, not from `due`: after downtime the missed runs collapse into this one.
        upcoming = entry.next_due(datetime.now(UTC), zone_of(settings))
        schedule_trigger(rq_classes.Scheduler(connection=connection), connection, entry, upcoming)
    previous = connection.hget(state_key(name), "last_job")
    if previous:
        busy = rq_classes.Job.fetch_many([as_text(previous)], connection=connection)[0]
        status = busy.get_status() if busy is not None else None
        if status in BUSY:
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


def run_now(name: str, settings: Settings | None = None) -> Job:
    """`schedule run NAME`: one run of the entry now, outside its schedule."""
    settings = settings or get_settings()
    entries = {entry.name: entry for entry in load_schedule(settings)}
    if name not in entries:
        raise JobInputError(f"no schedule entry {name!r} (known: {', '.join(entries)})")
    entry = entries[name]
    job = submit(entry.job, tuple(entry.args), entry.kwargs, queue=entry.queue, timeout=entry.timeout).job
    redis_client(settings).hset(state_key(name), mapping={"last_job": job.id, "last_due": "now (by hand)"})
    return job


def listing(settings: Settings | None = None, connection: Redis | None = None) -> list[dict[str, Any]]:
    """Every entry of the settings: when, next run (in the schedule's zone), last run and its outcome."""
    settings = settings or get_settings()
    connection = connection or redis_client(settings)
    zone = zone_of(settings)
    rows = []
    for entry in load_schedule(settings):
        pointer = connection.get(next_key(entry.name))
        due = int(as_text(pointer).rsplit("-", 1)[1]) if pointer else None
        state = {as_text(k): as_text(v) for k, v in connection.hgetall(state_key(entry.name)).items()}
        last = (
            rq_classes.Job.fetch_many([state["last_job"]], connection=connection)[0]
            if "last_job" in state
            else None
        )
        rows.append(
            {
                "name": entry.name,
                "job": entry.job,
                "args": entry.args,
                "when": entry.describe_when(),
                "enabled": entry.enabled,
                "next_run": datetime.fromtimestamp(due, zone).isoformat() if due else None,
                "last_due": state.get("last_due"),
                "last_outcome": last.get_status().value
                if last is not None
                else ("expired" if state else None),
                "skipped": int(state.get("skipped", 0)),
            }
        )
    return rows
