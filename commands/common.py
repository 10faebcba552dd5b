"""What every command shares: one JSON document or a human rendering, the `--json` flag, and the
parameter types and option parsers that more than one command takes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import click

from config.durations import parse_duration

EXIT_FAILURE = 1

json_output = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Exactly one JSON document with --json, else the human rendering."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        try:
            return timedelta(seconds=parse_duration(str(value)))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class When(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time like 2026-12-01T03:00:00+00:00", param, ctx)
        return moment if moment.tzinfo else moment.astimezone()  # no offset: local time


def pairs_of(option: str, pairs: tuple[str, ...], separator: str = "=") -> dict[str, str]:
    """Repeated NAME=VALUE (or NAME: VALUE) options as a dictionary."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition(separator)
        if not sep or not name.strip():
            raise click.UsageError(f"{option} {pair!r}: expected NAME{separator}VALUE")
        found[name.strip()] = value.strip() if separator == ":" else value
    return found


def json_value(option: str, text: str | None) -> Any:
    """A JSON option's value, parsed; a usage error naming the option if it is not JSON."""
    try:
        return None if text is None else json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"{option}: not JSON: {exc}") from None
