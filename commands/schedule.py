"""`schedule sync|list|clear|run`: the periodic jobs declared in the settings, kept in rq-scheduler."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from commands.common import SafeGroup, emit, json_output, say
from scheduler import sync as schedule_store


@click.group(cls=SafeGroup)
def schedule() -> None:
    """The periodic jobs declared in the settings (`schedule`), kept in rq-scheduler.

    Example: python cli.py schedule list
    """


@schedule.command("sync")
@json_output
def schedule_sync(as_json: bool) -> None:
    """Make rq-scheduler hold exactly the enabled entries; running it twice changes nothing.

    Example: python cli.py schedule sync
    """
    changes = asdict(schedule_store.sync())
    for warning in changes["warnings"]:
        say(f"warning: {warning}", err=True)
    emit(
        changes,
        as_json,
        lambda c: "\n".join(
            f"{kind:<10}{', '.join(c[kind]) or '-'}" for kind in ("added", "updated", "removed", "unchanged")
        ),
    )


@schedule.command("list")
@json_output
def schedule_list(as_json: bool) -> None:
    """Each entry: when, its next due time, its last run (when it was enqueued) and that run's outcome,
    skips; times in RQKIT_SCHEDULE_TIMEZONE.

    Example: python cli.py schedule list --json
    """
    rows = schedule_store.listing()
    emit(rows, as_json, render_schedule)


def render_schedule(rows: list[dict[str, Any]]) -> str:
    head = f"{'entry':<22}{'when':<20}{'next due':<28}{'last run':<37}{'outcome':<10}skipped"
    lines = [head]
    for row in rows:
        next_due = row["next_due"] or ("disabled" if not row["enabled"] else "not synced")
        last_run = (row["last_run"] or "-") + (" (by hand)" if row["last_run_by_hand"] else "")
        lines.append(
            f"{row['name']:<22}{row['when']:<20}{next_due:<28}{last_run:<37}"
            f"{row['last_outcome'] or '-':<10}{row['skipped']}"
        )
    return "\n".join(lines)


@schedule.command("clear")
@json_output
def schedule_clear(as_json: bool) -> None:
    """Remove every entry the toolkit synced and the record of their runs, by hand too (jobs scheduled by
    others, and runs already enqueued, stay).

    Example: python cli.py schedule clear
    """
    emit({"removed": schedule_store.clear()}, as_json, lambda r: f"removed: {', '.join(r['removed']) or '-'}")


@schedule.command("run")
@click.argument("name")
@json_output
def schedule_run(name: str, as_json: bool) -> None:
    """Enqueue one run of entry NAME now.

    Example: python cli.py schedule run expire-sessions
    """
    job = schedule_store.run_now(name)
    emit(
        {"entry": name, "id": job.id, "queue": job.origin},
        as_json,
        lambda r: f"{r['entry']}: enqueued as job {r['id']} on {r['queue']}",
    )
