"""Durations, times and time-outs: each one the CLI or `jobs.submit` takes is either scheduled as meant
or refused in one line (exit 2): nothing further than 5 years ahead, no local time that a
daylight-saving change skips or repeats, a past time runs now."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from redis import Redis
from rq import Queue

from jobs import submit
from jobs.errors import JobInputError
from tests.support import run, run_json

ZONE = "America/New_York"


def dst_changes(year: int) -> tuple[datetime, datetime]:
    """The local wall-clock times in ZONE that the spring change skips and the autumn change repeats."""
    zone, noon = ZoneInfo(ZONE), datetime(year, 1, 1, 12)
    days = [noon + timedelta(days=d) for d in range(366)]
    changes = [
        b
        for a, b in zip(days, days[1:], strict=False)
        if a.replace(tzinfo=zone).utcoffset() != b.replace(tzinfo=zone).utcoffset()
    ]
    spring, autumn = changes
    return spring.replace(hour=2, minute=30), autumn.replace(hour=1, minute=30)


GAP, FOLD = dst_changes(datetime.now(UTC).year + 1)


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is ZONE for the test."""
    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def refused(connection: Redis, *args: str) -> str:
    """The one-line usage error of `enqueue sleep 1 ARGS`, after checking nothing was enqueued."""
    result = run("enqueue", "sleep", "1", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert not connection.keys("rq:*"), connection.keys("rq:*")
    return error


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--in", "99999999999d", "is more than 1825 days"),
        ("--in", "3000000d", "is more than 1825 days"),
        ("--in", "1826d", "is more than 1825 days"),
        ("--in", "9" * 400 + "s", "not a duration"),
        ("--in", "٣s", "not a duration"),  # an Arabic-Indic 3: digits are ASCII
        ("--in", "", "not a duration"),
        ("--at", "9999-12-31T23:59:59-10:00", "is more than 1825 days ahead"),
        ("--at", "9999-12-31T23:59:59", "is more than 1825 days ahead"),
        ("--at", (datetime.now(UTC) + timedelta(days=1830)).isoformat(), "is more than 1825 days ahead"),
    ],
)
def test_far_or_malformed_times_are_refused_in_one_line(
    connection: Redis, option: str, value: str, message: str
) -> None:
    assert message in refused(connection, option, value)


def test_the_furthest_time_and_a_past_one_are_taken(connection: Redis) -> None:
    furthest = run_json("enqueue", "sleep", "1", "--in", "1825d")
    assert furthest["status"] == "scheduled"
    for past in ("0001-01-01T00:00:00", "0001-01-01T00:00:00+14:00", "2001-01-01T00:00:00-10:00"):
        assert run_json("enqueue", "sleep", "1", "--at", past)["status"] == "queued"  # past: runs now
    assert Queue("default", connection=connection).count == 3


def test_a_local_time_that_a_dst_change_skips_or_repeats_is_refused(
    connection: Redis, new_york: None
) -> None:
    gap = refused(connection, "--at", GAP.isoformat())
    assert f"{GAP.isoformat()} does not exist in the local time zone (EST/EDT)" in gap
    fold = refused(connection, "--at", FOLD.isoformat())
    assert f"{FOLD.isoformat()} happens twice in the local time zone (EST/EDT)" in fold
    assert f"give {FOLD.isoformat()}-04:00 for the first or {FOLD.isoformat()}-05:00 for the second" in fold
    chosen = run_json("enqueue", "sleep", "1", "--at", f"{FOLD.isoformat()}-05:00")
    registry = Queue("default", connection=connection).scheduled_job_registry
    assert registry.get_scheduled_time(chosen["id"]) == FOLD.replace(hour=6, tzinfo=UTC)  # 01:30 EST


def test_python_callers_get_the_same_checks(connection: Redis, new_york: None) -> None:
    for at, message in [
        (GAP, "does not exist in the local time zone"),
        (GAP.replace(tzinfo=ZoneInfo(ZONE)), f"does not exist in time zone {ZONE}"),
        (FOLD.replace(tzinfo=ZoneInfo(ZONE)), f"happens twice in time zone {ZONE}"),
        (datetime.max, "is more than 1825 days ahead"),
        (datetime.max.replace(tzinfo=UTC), "is more than 1825 days ahead"),
    ]:
        with pytest.raises(JobInputError, match=message):
            submit("sleep", (1,), at=at)
    assert submit("sleep", (1,), at=datetime.min).job.get_status().value == "queued"
    assert not Queue("default", connection=connection).scheduled_job_registry.count


@pytest.mark.parametrize("timeout", ["0", "86401", str(10**30)])
def test_time_outs_are_bounded(connection: Redis, timeout: str) -> None:
    job = run_json("enqueue", "sleep", "1")
    result = run("jobs", "edit", job["id"], "--timeout", timeout)
    assert (
        result.exit_code == 2 and "timeout must be a whole number of seconds from 1 to 86400" in result.output
    )
    with pytest.raises(JobInputError, match="timeout must be"):
        submit("sleep", (1,), timeout=int(timeout))


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "1e309", "[" * 100_000 + "]" * 100_000, '"\\udcff"'])
def test_json_options_take_json_only(connection: Redis, value: str) -> None:
    job = run_json("enqueue", "sleep", "1")
    for args in (
        ["jobs", "edit", job["id"], "--arg", value],
        ["enqueue", "api-call", "POST", "http://127.0.0.1:1/", "--data", value],
    ):
        result = run(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.stderr.count("Error:") == 1, result.output
    assert json.loads(run("jobs", "show", job["id"], "--json").stdout)["args"] == [1]


def test_arguments_that_are_not_utf8_are_refused(connection: Redis, media: object) -> None:
    name = os.fsdecode(b"\xff.jpg")  # how Python reads a non-UTF-8 file name
    with pytest.raises(JobInputError, match=r"thumbnail: '\\udcff.jpg' is not UTF-8 text"):
        submit("thumbnail", (name,))
    result = run("jobs", "list", "--tag", name)
    assert result.exit_code == 2 and "'\\\\udcff.jpg' is not UTF-8 text" in result.output
