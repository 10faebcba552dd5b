"""The schedule in Redis: sync the settings' entries into rq-scheduler (idempotently, under stable ids),
list them with their next due times and last runs, clear them, or run one now."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis
from rq.job import Job
from rq.utils import as_text

from config import Settings, get_settings, redis_client, rq_classes
from jobs import submit
from jobs.errors import JobInputError
from scheduler.periodic import ENTRIES, next_key, schedule_trigger, state_key
from scheduler.runner import RQSCHEDULER_INTERVAL, Scheduler
from scheduler.schedule import Entry, load_schedule, zone_of


@dataclass
class Changes:
    """What a sync did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sync(settings: Settings | None = None, connection: Redis | None = None) -> Changes:
    """Make Redis hold exactly the enabled entries of the settings; touch no other scheduled job."""
    settings = settings or get_settings()
    entries = {
        entry.name: entry for entry in load_schedule(settings) if entry.enabled
    }  # raises before changes
    connection = connection or redis_client(settings)
    scheduler = Scheduler(connection=connection)
    stored = {as_text(name): as_text(value) for name, value in connection.hgetall(ENTRIES).items()}
    changes = Changes(warnings=too_frequent(list(entries.values()), settings))
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


def too_frequent(entries: list[Entry], settings: Settings) -> list[str]:
    """A warning for each entry due more often than a scheduler looks: it runs once per look at most."""
    looks = max(RQSCHEDULER_INTERVAL, settings.scheduler_interval)
    return [
        f"schedule entry {entry.name!r} runs every {entry.every}s, but rqscheduler looks every "
        f"{RQSCHEDULER_INTERVAL:g}s (python -m scheduler: every {settings.scheduler_interval:g}s): "
        "it will run at most once per look"
        for entry in entries
        if entry.every and entry.every < looks
    ]


def clear(connection: Redis | None = None) -> list[str]:
    """Remove every entry this toolkit synced and the record of every entry's runs, by hand too; only
    those: the entries' jobs already enqueued, and jobs scheduled by others, stay."""
    connection = connection or redis_client()
    scheduler = Scheduler(connection=connection)
    names = {as_text(name) for name in connection.hkeys(ENTRIES)}
    names |= {as_text(key).removeprefix(state_key("")) for key in connection.scan_iter(state_key("*"))}
    for name in names:
        forget(scheduler, connection, name)
    return sorted(names)


def forget(scheduler: Scheduler, connection: Redis, name: str) -> None:
    pointer = connection.get(next_key(name))
    if pointer:
        scheduler.cancel(as_text(pointer))
        rq_classes.Job(as_text(pointer), connection=connection).delete()
    connection.delete(next_key(name), state_key(name))
    connection.hdel(ENTRIES, name)


def run_now(name: str, settings: Settings | None = None) -> Job:
    """`schedule run NAME`: one run of the entry now, outside its schedule."""
    settings = settings or get_settings()
    entries = {entry.name: entry for entry in load_schedule(settings)}
    if name not in entries:
        raise JobInputError(f"no schedule entry {name!r} (known: {', '.join(entries)})")
    entry = entries[name]
    job = submit(entry.job, tuple(entry.args), entry.kwargs, queue=entry.queue, timeout=entry.timeout).job
    with redis_client(settings).pipeline() as pipe:  # no due time: that is what marks a run by hand
        pipe.hset(
            state_key(name), mapping={"last_job": job.id, "last_enqueued_at": datetime.now(UTC).isoformat()}
        )
        pipe.hdel(state_key(name), "last_due")
        pipe.execute()
    return job


LAST_SECOND = 253_402_300_800  # 10000-01-01: no due time is later


def listing(settings: Settings | None = None, connection: Redis | None = None) -> list[dict[str, Any]]:
    """Every entry of the settings: when, its next due time, its last run (when it was enqueued, and for
    which due time, or by hand) and that run's outcome, in the schedule's zone."""
    settings = settings or get_settings()
    connection = connection or redis_client(settings)
    zone = zone_of(settings)
    rows = []
    for entry in load_schedule(settings):
        pointer = as_text(connection.get(next_key(entry.name)) or b"")
        due = int(pointer.rpartition("-")[2]) if pointer.rpartition("-")[2].isdigit() else None
        due = due if due is not None and due < LAST_SECOND else None  # not a time: another writer's
        state = {as_text(k): as_text(v) for k, v in connection.hgetall(state_key(entry.name)).items()}
        last = (
            rq_classes.Job.fetch_many([state["last_job"]], connection=connection)[0]
            if "last_job" in state
            else None
        )
        last_due = in_zone(state.get("last_due"), zone)
        rows.append(
            {
                "name": entry.name,
                "job": entry.job,
                "args": entry.args,
                "when": entry.describe_when(),
                "enabled": entry.enabled,
                "next_due": in_zone(datetime.fromtimestamp(due, UTC).isoformat() if due else None, zone),
                "last_run": in_zone(state.get("last_enqueued_at"), zone),
                "last_run_due": last_due,
                "last_run_by_hand": "last_job" in state and last_due is None,
                "last_job": state.get("last_job"),
                "last_outcome": last.get_status().value
                if last is not None
                else ("expired" if "last_job" in state else None),
                "skipped": int(state["skipped"]) if state.get("skipped", "").isdigit() else 0,
            }
        )
    return rows


def in_zone(moment: str | None, zone: ZoneInfo) -> str | None:
    """A stored ISO time in the schedule's zone, to the second; None for none (or an older record's text)."""
    try:
        return (
            datetime.fromisoformat(moment).astimezone(zone).isoformat(timespec="seconds") if moment else None
        )
    except ValueError:
        return None
