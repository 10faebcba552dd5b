"""What every command shares: one JSON document or a human rendering with the data's control characters
escaped, the `--json` flag, the command classes whose errors are escaped too, and the parameter types
and option parsers that more than one command takes."""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click
from click.exceptions import NoArgsIsHelpError

from config.durations import parse_duration
from config.errors import ToolkitError
from jobs.errors import JobInputError
from jobs.files import is_text
from jobs.submission import FURTHEST, due_time

EXIT_FAILURE = 1
# What a terminal may act on rather than show: C0 and C1 controls and DEL (Cc), bidi overrides and
# other invisible format characters (Cf), line and paragraph separators (Zl, Zp), lone surrogates (Cs:
# bytes that were not UTF-8, which no terminal encoding can write).
UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

json_output = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def printable(text: str, keep: str = "") -> str:
    """`text` with each unsafe character (see UNSAFE) but those in `keep` written as a Python escape."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        escape(char) if char not in keep and unicodedata.category(char) in UNSAFE else char for char in text
    )


def escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable_data(
    data: Any, multiline: Collection[str] = (), keep: str = "", quoted: Collection[str] = ()
) -> Any:
    """The data with every string escaped (keys too); strings under a key in `multiline` keep their
    line breaks, the rest are one line each; values under a key in `quoted` stay as they are, for a
    renderer that quotes them itself (as JSON, whose text is escaped once it is rendered)."""
    if isinstance(data, str):
        return printable(data, keep)
    if isinstance(data, dict):
        return {
            printable(str(key)): value
            if key in quoted
            else printable_data(value, multiline, "\n" if key in multiline else keep, quoted)
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [printable_data(item, multiline, keep, quoted) for item in data]
    return data


def say(text: str, err: bool = False) -> None:
    """Print one line that may quote data, escaped."""
    click.echo(printable(text), err=err)


def emit(
    data: Any,
    as_json: bool,
    human: Callable[[Any], str],
    multiline: Collection[str] = (),
    quoted: Collection[str] = (),
) -> None:
    """Exactly one JSON document with --json (which escapes what it must), else the human rendering of
    the data escaped (strings under a key in `multiline` keep their line breaks, values under a key in
    `quoted` are left to `human` to quote), escaped once more."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(printable(human(printable_data(data, multiline, quoted=quoted)), keep="\n"))


@contextmanager
def escaped_errors() -> Iterator[None]:
    """Let errors through with their messages escaped: they may quote what was typed or read."""
    try:
        yield
    except click.ClickException as exc:
        help_text = "\n" if isinstance(exc, NoArgsIsHelpError) else ""  # the help, the code's own text
        exc.message = printable(exc.message, keep=help_text)  # type: ignore[misc]  # Final to click's typing; same type kept
        raise
    except ToolkitError as exc:
        exc.args = (printable(str(exc)),)
        raise


class SafeCommand(click.Command):
    """A command whose errors are escaped, and which refuses arguments that are not UTF-8 text."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with escaped_errors():
            for arg in args:
                if not is_text(arg):
                    raise click.UsageError(f"{printable(arg)!r} is not UTF-8 text")
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with escaped_errors():
            return super().invoke(ctx)


class SafeGroup(SafeCommand, click.Group):
    """A group of safe commands (see SafeCommand)."""

    command_class = SafeCommand
    group_class = type


class ExistingPath(click.Path):
    """click.Path, with a path the system can't even look up (a NUL in it) refused as a usage error."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return super().convert(value, param, ctx)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class Duration(click.ParamType):
    """A delay like 30s, 5m, 1.5h or 1d, up to FURTHEST."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds > FURTHEST.total_seconds():
            self.fail(
                f"{value!r} is more than {FURTHEST.days} days, the furthest ahead a job is scheduled",
                param,
                ctx,
            )
        return timedelta(seconds=seconds)


class When(click.ParamType):
    """An ISO-8601 time (without an offset: local time), one a job may be scheduled at (see due_time)."""

    name = "time"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time like 2026-12-01T03:00:00+00:00", param, ctx)
        try:
            due_time(moment)
        except JobInputError as exc:
            self.fail(str(exc), param, ctx)
        return moment


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
        return None if text is None else json.loads(text, parse_float=finite, parse_constant=not_json)
    except ValueError as exc:
        raise click.UsageError(f"{option}: not JSON: {exc}") from None
    except RecursionError:
        raise click.UsageError(f"{option}: nested too deep") from None


def finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large a number")
    return number


def not_json(text: str) -> float:
    raise ValueError(f"{text} is not a JSON value")
