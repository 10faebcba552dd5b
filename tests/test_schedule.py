"""The schedule: validation, due times in any zone, idempotent sync, and real rqscheduler runs."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job
from rq_scheduler import Scheduler

from config import ConfigError, Settings, get_settings, load_settings
from scheduler import periodic
from scheduler import sync as schedule_store
from scheduler.schedule import Entry, load_schedule
from tests.support import run, run_json, wait_until

pytestmark = pytest.mark.slow


def configure(monkeypatch: pytest.MonkeyPatch, **entries: dict[str, Any]) -> None:
    monkeypatch.setenv("RQKIT_SCHEDULE", json.dumps(entries))
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"job": "sleep", "args": [0], "cron": "61 * * * *"}, "bad cron string '61 \\* \\* \\* \\*'"),
        ({"job": "sleep", "args": [0], "cron": "* * * *"}, "bad cron string"),
        ({"job": "nope", "every": 60}, "unknown job 'nope'"),
        ({"job": "sleep", "args": [0], "every": 0}, "every must be a positive whole number"),
        ({"job": "sleep", "args": [0], "every": -5}, "every must be a positive whole number"),
        ({"job": "sleep", "args": [0], "every": "soon"}, "every must be seconds or like 10m"),
        ({"job": "sleep", "args": [0], "every": 60, "cron": "* * * * *"}, "give exactly one of cron"),
        ({"job": "sleep", "args": [0]}, "give exactly one of cron"),
        ({"job": "sleep", "args": [-1], "every": 60}, "sleep: SECONDS must be a number"),
        ({"job": "sleep", "args": [0], "every": 60, "queue": "nope"}, "queue 'nope' is not configured"),
        ({"job": "sleep", "args": [0], "every": 60, "often": True}, "unknown field\\(s\\) often"),
        ({"job": "sleep", "args": [0], "every": 60, "timeout": 0}, "timeout must be a positive"),
        ({"every": "30m"}, "no job: name one \\(a table of a default entry's name"),
    ],
)
def test_each_validation_error_names_the_entry(raw: dict[str, Any], message: str) -> None:
    settings = load_settings({"RQKIT_CONFIG": "", "RQKIT_SCHEDULE": json.dumps({"nightly": raw})})
    with pytest.raises(ConfigError, match=f"schedule entry 'nightly': {message}"):
        load_schedule(settings)


def test_arguments_that_are_not_json_and_duplicate_names_are_refused(tmp_path: Any) -> None:
    toml = tmp_path / "settings.toml"
    toml.write_text('[schedule.report]\njob = "sleep"\nargs = [1979-05-27T07:32:00Z]\nevery = 60\n')
    with pytest.raises(ConfigError, match="schedule entry 'report': args: datetime is not a JSON type"):
        load_schedule(load_settings({"RQKIT_CONFIG": str(toml)}))
    twice = '{"a": {"job": "sleep", "args": [0], "every": 1}, "a": {"job": "sleep", "args": [0], "every": 2}}'
    with pytest.raises(ConfigError, match="RQKIT_SCHEDULE: a given twice"):
        load_settings({"RQKIT_CONFIG": "", "RQKIT_SCHEDULE": twice})


def test_the_default_schedule_is_valid_and_sensible() -> None:
    entries = {entry.name: entry for entry in load_schedule(load_settings({"RQKIT_CONFIG": ""}))}
    assert entries["expire-sessions"].cron == "0 * * * *"
    assert entries["sweep-caches"].cron == "30 3 * * *"
    assert entries["word-count-comment"].every == entries["word-count-article"].every == 600


@pytest.mark.parametrize("host_zone", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_cron_times_follow_the_schedule_zone_whatever_the_hosts(host_zone: str) -> None:
    previous = os.environ.get("TZ")
    os.environ["TZ"] = host_zone
    time.tzset()
    try:
        entry = Entry("report", "sleep", [0], cron="30 9 * * *")
        after = datetime(2026, 3, 7, 16, 0, tzinfo=UTC)  # 11:00 in New York; its clocks go forward overnight
        assert entry.next_due(after, ZoneInfo("America/New_York")) == datetime(
            2026, 3, 8, 13, 30, tzinfo=UTC
        )  # EDT
        assert entry.next_due(after, ZoneInfo("UTC")) == datetime(2026, 3, 8, 9, 30, tzinfo=UTC)
        every = Entry("tick", "sleep", [0], every=600)
        assert every.next_due(after + timedelta(seconds=1), ZoneInfo("UTC")) == after + timedelta(minutes=10)
    finally:
        if previous is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = previous
        time.tzset()


def scheduled_ids(connection: Redis) -> list[str]:
    return sorted(member.decode() for member in connection.zrange(Scheduler.scheduled_jobs_key, 0, -1))


def test_sync_is_idempotent_updates_in_place_and_leaves_other_jobs_alone(
    monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    foreign = Scheduler(connection=connection).enqueue_at(
        datetime.now(UTC) + timedelta(hours=1), "jobs.demo.sleep", 0
    )
    configure(
        monkeypatch,
        a={"job": "sleep", "args": [0], "every": 3600},
        b={"job": "sleep", "args": [1], "cron": "0 4 * * *"},
    )
    first = schedule_store.sync()
    assert (sorted(first.added), first.updated, first.removed) == (["a", "b"], [], [])
    ids = scheduled_ids(connection)
    assert len(ids) == 3 and foreign.id in ids
    again = schedule_store.sync()
    assert (again.added, again.updated, again.removed, sorted(again.unchanged)) == ([], [], [], ["a", "b"])
    assert scheduled_ids(connection) == ids

    configure(monkeypatch, a={"job": "sleep", "args": [2], "every": 3600})
    edited = schedule_store.sync()
    assert (edited.updated, edited.removed) == (["a"], ["b"])
    after = scheduled_ids(connection)
    assert len(after) == 2 and foreign.id in after
    [trigger] = [job_id for job_id in after if job_id.startswith("rqkit-schedule-a-")]
    assert json.loads(connection.hget(periodic.ENTRIES, "a") or b"")["args"] == [2]
    assert Job.fetch(trigger, connection=connection).args[0] == "a"

    assert schedule_store.clear() == ["a"]
    assert scheduled_ids(connection) == [foreign.id]


def test_an_invalid_schedule_changes_nothing(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> None:
    configure(monkeypatch, a={"job": "sleep", "args": [0], "every": 3600})
    schedule_store.sync()
    before = scheduled_ids(connection)
    configure(monkeypatch, a={"job": "sleep", "args": [0], "every": 60}, b={"job": "sleep", "cron": "bad"})
    with pytest.raises(ConfigError, match="schedule entry 'b'"):
        schedule_store.sync()
    assert scheduled_ids(connection) == before


RQSCHEDULER = ("-m", "rq_scheduler.scripts.rqscheduler", "-i", "1")
WORKER = ("-m", "rq.cli", "worker", "-c", "config.rq", "default")


def fired(connection: Redis, name: str) -> list[int]:
    """The due times (epoch seconds) an entry's triggers claimed."""
    return sorted(
        int(key.decode().rsplit(":", 1)[1]) for key in connection.scan_iter(f"rqkit:schedule:fired:{name}:*")
    )


def stack_up(connection: Redis) -> bool:
    """An rqscheduler has started on this database, and a worker waits for a job."""
    workers = Worker.all(connection=connection)
    started = connection.keys(Scheduler.redis_scheduler_namespace_prefix + "*")
    return bool(started) and any(worker.get_state() == "idle" for worker in workers)


def real_runs(connection: Redis) -> list[Job]:
    """The entry's own jobs (sleep) that started or finished on `default`, not the triggers beside them."""
    ids = connection.zrange("rq:finished:default", 0, -1) + connection.zrange("rq:wip:default", 0, -1)
    jobs = [Job.fetch(job_id.decode(), connection=connection) for job_id in ids]
    return [job for job in jobs if job.func_name == "jobs.demo.sleep"]


def test_two_schedulers_enqueue_each_due_run_exactly_once(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, processes: Any
) -> None:
    configure(monkeypatch, tick={"job": "sleep", "args": [0], "every": 2})
    schedule_store.sync()
    processes(*RQSCHEDULER)
    processes(*RQSCHEDULER)
    processes(*WORKER)
    time.sleep(10.5)  # the schedule itself is what is tested: five due times pass
    dues = fired(connection, "tick")
    assert len(dues) >= 4
    assert dues == list(range(dues[0], dues[0] + 2 * len(dues), 2))  # every due time, each once
    assert len(real_runs(connection)) in (len(dues), len(dues) - 1)  # the last may not have started yet
    assert b"skipped" not in connection.hgetall(periodic.state_key("tick"))


def test_after_downtime_missed_runs_collapse_into_one(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, processes: Any
) -> None:
    configure(monkeypatch, tick={"job": "sleep", "args": [0], "every": 2})
    schedule_store.sync()
    time.sleep(7)  # no scheduler: three due times pass unserved
    restarted = time.time()
    processes(*RQSCHEDULER)
    processes(*WORKER)
    time.sleep(5)
    dues = fired(connection, "tick")
    assert len([due for due in dues if due < restarted]) == 1  # one catch-up run, not a burst of three
    assert all(due % 2 == 0 for due in dues) and len(dues) >= 2  # then back on the grid, after now


def test_a_slow_job_is_not_piled_on(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, processes: Any
) -> None:
    configure(monkeypatch, slow={"job": "sleep", "args": [3], "every": 1})
    schedule_store.sync()
    processes(*RQSCHEDULER)
    processes(*WORKER)
    processes(*WORKER)
    started = time.monotonic()
    skipped = lambda: int(connection.hget(periodic.state_key("slow"), "skipped") or 0)  # noqa: E731
    wait_until(lambda: skipped() >= 3, 60, "three skipped firings")  # a busy machine starts slower
    runs = sorted(real_runs(connection), key=lambda job: job.started_at or datetime.max.replace(tzinfo=UTC))
    assert 1 <= len(runs) <= (time.monotonic() - started) / 3 + 1  # one run at a time, 3 s each
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert (
            earlier.ended_at is not None
            and later.started_at is not None
            and later.started_at >= earlier.ended_at
        )


def test_a_cron_entry_fires_on_time_whatever_the_hosts_zone(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, processes: Any, redis_server: Any
) -> None:
    """Three stacks on three databases, their processes in UTC, New York and Tokyo time."""
    stacks: dict[str, tuple[Redis, dict[str, str]]] = {}
    for db, zone in enumerate(["UTC", "America/New_York", "Asia/Tokyo"], start=1):
        url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
        client = Redis.from_url(url)
        client.flushdb()
        env = {"REDIS_URL": url, "RQ_REDIS_URL": url, "TZ": zone, "RQKIT_SCHEDULE_TIMEZONE": "Europe/Paris"}
        processes(*RQSCHEDULER, env=env)
        processes(*WORKER, env=env)
        stacks[zone] = (client, env)
    # Every stack up first: the due time then only leaves time for the syncs (the entry is read from Redis)
    wait_until(lambda: all(stack_up(client) for client, _ in stacks.values()), 60, "the three stacks")
    now = datetime.now(ZoneInfo("Europe/Paris"))
    due = (now + timedelta(seconds=62)).replace(second=0, microsecond=0)  # the first minute 2 s off or more
    schedule = json.dumps({"report": {"job": "sleep", "args": [0], "cron": f"{due.minute} {due.hour} * * *"}})
    for client, env in stacks.values():
        schedule_store.sync(load_settings({**os.environ, **env, "RQKIT_SCHEDULE": schedule}), client)
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline and not all(real_runs(client) for client, _ in stacks.values()):
        time.sleep(0.2)
    for zone, (client, _) in stacks.items():
        [run] = real_runs(client)
        enqueued = run.enqueued_at
        assert enqueued is not None
        delay = (enqueued - due.astimezone(UTC)).total_seconds()
        assert 0 <= delay < 3, (zone, delay)


def test_list_shows_next_and_last_runs_and_run_enqueues_one_now(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    monkeypatch.setenv("RQKIT_SCHEDULE_TIMEZONE", "Asia/Tokyo")
    configure(
        monkeypatch,
        daily={"job": "sleep", "args": [0], "cron": "0 9 * * *"},
        off={"job": "sleep", "args": [0], "every": 60, "enabled": False},
    )
    assert run("schedule", "sync").exit_code == 0
    rows = {row["name"]: row for row in run_json("schedule", "list")}
    assert rows["daily"]["next_due"].endswith("T09:00:00+09:00") and rows["daily"]["last_outcome"] is None
    assert rows["daily"]["last_run"] is None
    assert rows["off"]["next_due"] is None and not rows["off"]["enabled"]
    ran = run_json("schedule", "run", "daily")
    run_jobs()
    rows = {row["name"]: row for row in run_json("schedule", "list")}
    enqueued_at = Job.fetch(ran["id"], connection=connection).enqueued_at
    assert enqueued_at is not None
    assert rows["daily"]["last_outcome"] == "finished" and rows["daily"]["last_job"] == ran["id"]
    assert rows["daily"]["last_run_by_hand"] is True and rows["daily"]["last_run_due"] is None
    last_run = datetime.fromisoformat(rows["daily"]["last_run"])
    assert last_run.utcoffset() == timedelta(hours=9) and abs(last_run - enqueued_at) < timedelta(seconds=1)
    text = run("schedule", "list").output
    assert text.splitlines()[0].split() == [
        "entry",
        "when",
        "next",
        "due",
        "last",
        "run",
        "outcome",
        "skipped",
    ]
    assert f"{rows['daily']['last_run']} (by hand)" in text
    assert run("schedule", "run", "nope").exit_code == 2


def test_list_shows_when_the_last_run_was_enqueued_and_the_due_time_it_served(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, processes: Any
) -> None:
    """A real rqscheduler enqueues the trigger; the list tells the run's time from its due time."""
    configure(monkeypatch, tick={"job": "sleep", "args": [0], "every": 2})
    schedule_store.sync()
    scheduler = processes(*RQSCHEDULER)
    processes(*WORKER)
    state = lambda: connection.hgetall(periodic.state_key("tick"))  # noqa: E731
    wait_until(lambda: b"last_job" in state(), what="the first run")
    os.killpg(scheduler.pid, signal.SIGKILL)  # no more runs: the state holds still
    scheduler.wait()
    [row] = run_json("schedule", "list")
    [due] = fired(connection, "tick")
    job = Job.fetch(row["last_job"], connection=connection)
    assert job.enqueued_at is not None
    assert abs(datetime.fromisoformat(row["last_run"]) - job.enqueued_at) < timedelta(seconds=1)
    assert row["last_run_due"] == datetime.fromtimestamp(due, UTC).isoformat()
    assert row["last_run_by_hand"] is False
    assert datetime.fromisoformat(row["next_due"]) > datetime.fromtimestamp(due, UTC)
    assert f"{row['last_run']}  " in run("schedule", "list").output  # the run's time, not its due time


def test_clear_forgets_runs_by_hand_too(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> None:
    configure(
        monkeypatch,
        synced={"job": "sleep", "args": [0], "every": 3600},
        off={"job": "sleep", "args": [0], "every": 3600, "enabled": False},
    )
    schedule_store.sync()
    run_json("schedule", "run", "synced")
    run_json("schedule", "run", "off")  # never synced: only its run by hand is in Redis
    assert run_json("schedule", "clear")["removed"] == ["off", "synced"]
    for row in run_json("schedule", "list"):
        assert (row["last_run"], row["last_job"], row["last_outcome"], row["next_due"]) == (None,) * 4
    assert [key for key in connection.scan_iter("rqkit:schedule:*")] == []


def test_a_table_in_the_file_adds_to_the_default_schedule(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, tmp_path: Any
) -> None:
    toml = tmp_path / "settings.toml"
    toml.write_text(
        '[schedule.nightly-report]\njob = "sleep"\nargs = [0]\ncron = "0 6 * * *"\n'
        "[schedule.word-count-article]\nenabled = false\n"
    )
    monkeypatch.setenv("RQKIT_CONFIG", str(toml))
    get_settings.cache_clear()
    changes = run_json("schedule", "sync")
    assert changes["added"] == sorted({*Settings().schedule, "nightly-report"} - {"word-count-article"})
    rows = {row["name"]: row for row in run_json("schedule", "list")}
    assert rows["word-count-article"]["enabled"] is False and rows["word-count-article"]["next_due"] is None
    assert "disabled" in run("schedule", "list").output


def test_sync_warns_of_an_interval_shorter_than_the_schedulers_look(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQKIT_SCHEDULER_INTERVAL", "5")
    configure(
        monkeypatch,
        tick={"job": "sleep", "args": [0], "every": 10},
        fast={"job": "sleep", "args": [0], "every": 2},
        hourly={"job": "sleep", "args": [0], "every": 3600},
        off={"job": "sleep", "args": [0], "every": 1, "enabled": False},
    )
    synced = run("schedule", "sync")
    assert synced.exit_code == 0
    assert synced.stderr.splitlines() == [
        f"warning: schedule entry '{name}' runs every {every}s, but rqscheduler looks every 60s "
        f"(python -m scheduler: every 5s): it will run at most once per look"
        for name, every in (("fast", 2), ("tick", 10))
    ]
    assert json.loads(run("schedule", "sync", "--json").stdout)["warnings"] == [
        line.removeprefix("warning: ") for line in synced.stderr.splitlines()
    ]
    monkeypatch.delenv("RQKIT_SCHEDULE")
    get_settings.cache_clear()
    assert run("schedule", "sync").stderr == ""  # the defaults: release-due, every 60 s, is fine


def test_an_entry_runs_at_most_once_per_look_of_the_scheduler(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, processes: Any
) -> None:
    """What the warning says: every 1 s, under a scheduler that looks every 3 s."""
    configure(monkeypatch, tick={"job": "sleep", "args": [0], "every": 1})
    assert run("schedule", "sync").stderr.startswith("warning: schedule entry 'tick' runs every 1s")
    started = time.monotonic()
    processes("-m", "rq_scheduler.scripts.rqscheduler", "-i", "3")
    processes(*WORKER)
    wait_until(lambda: len(fired(connection, "tick")) >= 2, what="two runs")
    time.sleep(4)  # the time passing is what is tested
    looks = (time.monotonic() - started) // 3 + 1
    assert 2 <= len(fired(connection, "tick")) <= looks
