"""The schedule in Redis: sync the settings' entries into rq-scheduler (idempotently, under stable ids),
list them with their last runs, clear them, or run one now."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.job import Job
from rq.utils import as_text

from config import Settings, get_settings, redis_client, rq_classes
from jobs import submit
from jobs.errors import JobInputError
from scheduler.periodic import ENTRIES, next_key, schedule_trigger, state_key
from scheduler.runner import Scheduler
from scheduler.schedule import load_schedule, zone_of


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
    scheduler = Scheduler(connection=connection)
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
    scheduler = Scheduler(connection=connection)
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
