"""The schedule as data: entries from the settings, validated at load, and their due times."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from config import ConfigError, Settings
from config.durations import parse_duration
from jobs import get_spec
from jobs.errors import JobInputError
from jobs.registry import check_json, check_queue

ENTRY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # stable ids: RQ 2.8+ rejects '.', ':' and spaces
FIELDS = {"job", "args", "kwargs", "cron", "every", "queue", "timeout", "description", "enabled"}


@dataclass(frozen=True)
class Entry:
    """One periodic job: what to run, when (`cron` in the schedule's zone, or `every` N seconds)."""

    name: str
    job: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: int | None = None
    queue: str | None = None
    timeout: int | None = None
    description: str = ""
    enabled: bool = True

    @property
    def job_id_prefix(self) -> str:
        return f"rqkit-schedule-{self.name}"

    def fingerprint(self) -> str:
        """The entry as canonical JSON: a changed entry has a changed fingerprint."""
        return json.dumps(asdict(self), sort_keys=True)

    def next_due(self, after: datetime, zone: ZoneInfo) -> datetime:
        """The first due time strictly after `after` (aware, UTC)."""
        if self.cron:
            local = after.astimezone(zone)
            return croniter(self.cron, local).get_next(datetime).astimezone(UTC)
        assert self.every
        epoch = after.timestamp()
        return datetime.fromtimestamp((epoch // self.every + 1) * self.every, UTC)  # on the interval's grid

    def describe_when(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.every}s"


def load_schedule(settings: Settings) -> list[Entry]:
    """Every entry of the settings' schedule, checked; the first problem raises, naming the entry."""
    entries = [parse_entry(name, raw) for name, raw in settings.schedule.items()]
    return sorted(entries, key=lambda entry: entry.name)


def parse_entry(name: str, raw: dict[str, Any]) -> Entry:
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"schedule entry {name!r}: {problem}")

    check_shape(name, raw, fail)
    cron = raw.get("cron")
    if cron is not None and (
        not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron)
    ):
        raise fail(f"bad cron string {cron!r} (5 fields: minute hour day month weekday)")
    every = interval(raw.get("every"), fail)
    args, kwargs = raw.get("args", []), raw.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise fail("args must be a list and kwargs a table")
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise fail(f"timeout must be a positive number of seconds, got {timeout!r}")
    entry = Entry(name, str(raw.get("job", "")), args, kwargs, cron, every, raw.get("queue"), timeout,
                  str(raw.get("description", "")), bool(raw.get("enabled", True)))  # fmt: skip
    try:
        check_json(args, "args")
        check_json(kwargs, "kwargs")
        get_spec(entry.job).validate(tuple(args), kwargs)
        if entry.queue is not None:
            check_queue(entry.queue)
    except JobInputError as exc:
        raise fail(str(exc)) from None
    return entry


def check_shape(name: str, raw: dict[str, Any], fail: Any) -> None:
    """The entry's name and fields: known ones, a job, and exactly one of cron and every."""
    if not ENTRY_NAME.match(name):
        raise fail("names are letters, digits, - and _ (they become job ids)")
    unknown = set(raw) - FIELDS
    if unknown:
        raise fail(f"unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(FIELDS))})")
    if "job" not in raw:
        raise fail("no job: name one (a table of a default entry's name replaces that entry whole)")
    if ("cron" in raw) == ("every" in raw):
        raise fail("give exactly one of cron (5 fields) or every (an interval)")


def interval(value: object, fail: Any) -> int | None:
    """`every`: seconds, or a duration like 30s, 10m, 1.5h, 1d; a positive whole number of seconds."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise fail(f"every must be seconds or like 10m, got {value!r}") from None
    if seconds <= 0 or seconds != int(seconds):
        raise fail(f"every must be a positive whole number of seconds, got {value!r}")
    return int(seconds)


def zone_of(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.schedule_timezone)
