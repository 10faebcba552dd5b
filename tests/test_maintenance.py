"""Session expiry and cache sweeps on real SQLite files, a real Redis and a real folder tree."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from redis import Redis
from rq.job import Job
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    insert,
    select,
    text,
)

from cli import cli
from jobs import enqueue
from jobs.errors import JobInputError
from jobs.maintenance import expire_sessions, sweep_cache
from ops.outcomes import wait_for


def now() -> datetime:
    """Naive UTC, as the session tables store it (taken per use: the suite runs for minutes)."""
    return datetime.now(UTC).replace(tzinfo=None)


ROWS, BATCH = 2550, 500  # several batches and a partial last one


def schema(preset: str) -> tuple[Table, str]:
    """The table each framework creates, and the column that decides expiry."""
    meta = MetaData()
    if preset == "django":
        return Table(
            "django_session",
            meta,
            Column("session_key", String(40), primary_key=True),
            Column("session_data", Text),
            Column("expire_date", DateTime, index=True),
        ), "expire_date"
    if preset == "rails":
        return Table(
            "sessions",
            meta,
            Column("id", Integer, primary_key=True),
            Column("session_id", String(255)),
            Column("data", Text),
            Column("created_at", DateTime),
            Column("updated_at", DateTime),
        ), "updated_at"
    return Table(
        "sessions",
        meta,
        Column("id", Integer, primary_key=True),
        Column("session_id", String(255)),
        Column("data", Text),
        Column("expiry", DateTime),
    ), "expiry"


def fill(url: str, preset: str) -> set[str]:
    """ROWS sessions, every other one expired; the keys of those that must stay."""
    table, when = schema(preset)
    engine = create_engine(url)
    table.metadata.create_all(engine)
    keep, rows = set(), []
    for i in range(ROWS):
        expired = i % 2 == 0
        if preset == "rails":  # expired = not updated within its max age (14 days)
            moment = now() - timedelta(days=20 if expired else 1)
        else:
            moment = now() + timedelta(hours=-1 if expired else 1)
        key = f"s{i:05}"
        row = {when: moment}
        row |= (
            {"session_key": key, "session_data": "{}"}
            if preset == "django"
            else {"id": i + 1, "session_id": key}
        )
        rows.append(row)
        if not expired:
            keep.add(key)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    return keep


def remaining(url: str, preset: str) -> set[str]:
    table, _ = schema(preset)
    column = table.c.session_key if preset == "django" else table.c.session_id
    with create_engine(url).connect() as conn:
        return set(conn.execute(select(column)).scalars())


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> Any:
    def configure(**stores: dict[str, Any]) -> None:
        monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps(stores))
        monkeypatch.setenv("RQKIT_MAINTENANCE_BATCH_SIZE", str(BATCH))

    return configure


@pytest.mark.parametrize("preset", ["django", "rails", "flask"])
def test_only_expired_sessions_go_across_batches(preset: str, database_url: str, stores: Any) -> None:
    url = database_url
    keep = fill(url, preset)
    stores(app={"kind": "sql", "preset": preset, "url": url})
    dry = expire_sessions("app", dry_run=True)
    assert (dry["status"], dry["deleted"], dry["would_delete"]) == ("dry run", 0, ROWS // 2)
    assert len(remaining(url, preset)) == ROWS
    report = expire_sessions("app")
    assert (report["deleted"], report["batches"]) == (ROWS // 2, 3)
    assert remaining(url, preset) == keep
    assert expire_sessions("app")["deleted"] == 0  # idempotent


def test_a_dry_run_from_the_cli_deletes_nothing_and_says_what_it_would(
    tmp_path: Path, stores: Any, connection: Redis, run_jobs: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    keep = fill(url, "django")
    stores(default={"kind": "sql", "preset": "django", "url": url})
    queued = CliRunner().invoke(cli, ["enqueue", "expire-sessions", "--dry-run", "--json"])
    assert queued.exit_code == 0, queued.output
    run_jobs()
    outcome = wait_for(Job.fetch(json.loads(queued.stdout)["id"], connection=connection), timeout=5)
    assert outcome.result | {"seconds": None, "longest_step_ms": None} == {
        "target": "default",
        "dry_run": True,
        "examined": ROWS // 2,
        "deleted": 0,
        "would_delete": ROWS // 2,
        "batches": 0,
        "bytes_freed": 0,
        "would_free_bytes": 0,
        "folders_removed": 0,
        "seconds": None,
        "longest_step_ms": None,
        "status": "dry run",
    }
    assert len(remaining(url, "django")) == ROWS and keep < remaining(url, "django")


def test_sessions_that_expired_in_the_same_second_all_go(
    database_url: str, stores: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches walk the expiry column's index, each from where the last ended: rows of one time that
    straddle two batches all go, also where SQLite keeps the time as it was written (no fraction)."""
    table, _ = schema("django")
    engine = create_engine(database_url)
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO django_session VALUES (:key, '{}', :when)"),
            [{"key": f"s{i:02}", "when": "2024-01-02 03:04:05"} for i in range(12)]
            + [{"key": "live", "when": "2999-01-01 00:00:00"}],
        )
    engine.dispose()
    stores(app={"kind": "sql", "preset": "django", "url": database_url})
    monkeypatch.setenv("RQKIT_MAINTENANCE_BATCH_SIZE", "5")
    assert (expire_sessions("app")["deleted"], remaining(database_url, "django")) == (12, {"live"})


def test_a_custom_table_and_columns(tmp_path: Path, stores: Any) -> None:
    url = f"sqlite:///{tmp_path / 'custom.db'}"
    engine = create_engine(url)
    table = Table(
        "web_sessions",
        MetaData(),
        Column("token", String(64), primary_key=True),
        Column("valid_until", DateTime),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(table),
            [
                {"token": "old", "valid_until": now() - timedelta(minutes=1)},
                {"token": "new", "valid_until": now() + timedelta(hours=1)},
            ],
        )
    stores(
        web={
            "kind": "sql",
            "url": url,
            "table": "web_sessions",
            "key_column": "token",
            "expiry_column": "valid_until",
        }
    )
    assert expire_sessions("web")["deleted"] == 1
    with engine.connect() as conn:
        assert list(conn.execute(select(table.c.token)).scalars()) == ["new"]


def test_a_missing_table_is_a_clear_failure(tmp_path: Path, stores: Any, run_jobs: Any) -> None:
    (tmp_path / "empty.db").touch()  # an empty SQLite database
    stores(app={"kind": "sql", "preset": "django", "url": f"sqlite:///{tmp_path / 'empty.db'}"})
    job = enqueue("expire-sessions", "app")
    run_jobs()
    reason = wait_for(job, timeout=5).reason or ""
    assert reason.startswith("JobInputError: session store: no table 'django_session' in sqlite:///")


@pytest.mark.parametrize("url", ["postgresql://app:hunter2@db:notaport/app", "app:hunter2@db/app"])
def test_a_bad_store_url_is_refused_without_showing_its_password(url: str, stores: Any) -> None:
    stores(app={"kind": "sql", "preset": "django", "url": url})
    with pytest.raises(JobInputError, match="url is not a SQLAlchemy database URL") as refused:
        enqueue("expire-sessions", "app")
    assert "hunter2" not in str(refused.value)
    with pytest.raises(JobInputError, match="url is not a SQLAlchemy database URL") as failed:
        expire_sessions("app")  # as a worker would run a job queued before the settings changed
    assert "hunter2" not in str(failed.value)


def test_an_unknown_store_is_refused_at_enqueue(stores: Any) -> None:
    stores(app={"kind": "sql", "preset": "django"})
    with pytest.raises(JobInputError, match="session store 'nope' is not configured \\(known: app\\)"):
        enqueue("expire-sessions", "nope")


@pytest.mark.parametrize("style", ["index", "expiry_field"])
def test_redis_sessions_without_ttl(style: str, stores: Any, connection: Redis) -> None:
    now = datetime.now(UTC).timestamp()
    for i in range(1200):
        expiry = now + (-60 if i % 3 == 0 else 3600)
        connection.hset(f"sess:{i}", mapping={"user": i, "expires": expiry})
        connection.zadd("sess-index", {str(i): expiry})
    connection.set("other:1", "untouched")
    config = {"kind": "redis", "prefix": "sess:"} | (
        {"index": "sess-index"} if style == "index" else {"expiry_field": "expires"}
    )
    stores(cache=config)
    dry = expire_sessions("cache", dry_run=True)
    assert (dry["deleted"], dry["would_delete"], connection.dbsize()) == (0, 400, 1200 + 2)
    report = expire_sessions("cache")
    assert report["deleted"] == 400 and "would_delete" not in report
    assert (
        sorted(int(key.split(b":")[1]) % 3 for key in connection.scan_iter("sess:*", count=1000))
        == [1] * 400 + [2] * 400
    )
    assert connection.get("other:1") == b"untouched"


def test_a_second_run_of_the_same_sweep_reports_already_running(
    stores: Any, connection: Redis, tmp_path: Path
) -> None:
    stores(app={"kind": "sql", "preset": "django", "url": f"sqlite:///{tmp_path / 'x.db'}"})
    connection.set("rqkit:lock:expire-sessions:app", "someone-else")
    assert expire_sessions("app") == {"target": "app", "status": "already running"}
    connection.delete("rqkit:lock:expire-sessions:app")
    assert connection.exists("rqkit:lock:expire-sessions:app") == 0


def test_a_run_cut_short_leaves_its_lock_to_its_rerun(
    stores: Any, connection: Redis, tmp_path: Path, run_jobs: Any
) -> None:
    """The same job, run again after its worker died, takes over the lock its first run left."""
    stores(app={"kind": "sql", "preset": "django", "url": f"sqlite:///{tmp_path / 'x.db'}"})
    fill(f"sqlite:///{tmp_path / 'x.db'}", "django")
    rerun = enqueue("expire-sessions", "app")
    connection.set("rqkit:lock:expire-sessions:app", rerun.id)
    run_jobs()
    assert rerun.return_value()["status"] == "done" and rerun.return_value()["deleted"] == ROWS // 2
    assert not connection.exists("rqkit:lock:expire-sessions:app")  # released at the end


def make_file(path: Path, size: int, age_days: float, used_days_ago: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    modified = datetime.now(UTC).timestamp() - age_days * 86400
    accessed = (
        datetime.now(UTC).timestamp() - (used_days_ago if used_days_ago is not None else age_days) * 86400
    )
    os.utime(path, (accessed, modified))
    return path


def test_disk_sweep_by_age_then_by_size_in_lru_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    root, outside = tmp_path / "cache", tmp_path / "precious"
    old = make_file(root / "a" / "old.jpg", 100, age_days=40)
    lonely = make_file(root / "empty-soon" / "only.jpg", 100, age_days=40)
    recent = [make_file(root / "b" / f"{i}.jpg", 1000, age_days=10, used_days_ago=i) for i in range(6)]
    writing = make_file(root / "b" / ".rqkit-tmp-abc", 5000, age_days=40)
    make_file(outside / "keep.jpg", 100, age_days=400)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file-link.jpg").symlink_to(outside / "keep.jpg")
    limit = 4000 / 2**20  # MB: four of the six recent files fit
    monkeypatch.setenv(
        "RQKIT_CACHE_TARGETS",
        json.dumps({"t": {"kind": "disk", "path": str(root), "max_age_days": 30, "max_size_mb": limit}}),
    )
    dry = sweep_cache("t", dry_run=True)["targets"][0]
    assert (dry["deleted"], dry["bytes_freed"], dry["folders_removed"]) == (0, 0, 0)
    assert (dry["would_delete"], dry["would_free_bytes"], old.exists(), lonely.exists()) == (
        4,
        2200,
        True,
        True,
    )
    report = sweep_cache("t")["targets"][0]
    assert (report["deleted"], report["bytes_freed"], report["folders_removed"]) == (4, 2200, 2)
    assert not old.exists() and not lonely.exists() and not (root / "a").exists()
    assert [path.exists() for path in recent] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]  # least recently used went
    assert writing.exists() and (outside / "keep.jpg").exists() and (root / "file-link.jpg").is_symlink()


def test_redis_sweep_selects_exactly_among_100000_keys_without_keys(
    monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    with connection.pipeline(transaction=False) as pipe:
        for i in range(100_000):
            if i % 4 == 0:
                pipe.set(f"cache:page:{i}", "no ttl")  # selected
            elif i % 4 == 1:
                pipe.set(f"cache:page:{i}", "has ttl", ex=3600)
            elif i % 4 == 2:
                pipe.set(f"session:{i}", "outside the pattern")
            else:
                pipe.set(f"cache:fragment:{i}", "has ttl", px=600_000)
        pipe.execute()
    connection.config_resetstat()
    monkeypatch.setenv(
        "RQKIT_CACHE_TARGETS", json.dumps({"pages": {"kind": "redis", "pattern": "cache:*", "no_ttl": True}})
    )
    report = sweep_cache("pages")["targets"][0]
    commands = connection.info("commandstats")
    assert report["deleted"] == 25_000 and report["examined"] == 75_000
    assert connection.dbsize() == 75_000
    # Short steps, not one long command, whatever they cost on this machine: SCAN about a batch (1,000)
    # at a time, one UNLINK per batch, never KEYS.
    assert "cmdstat_keys" not in commands
    assert commands["cmdstat_scan"]["calls"] == report["batches"] >= 100_000 / (2 * 1000)
    assert commands["cmdstat_unlink"]["calls"] >= 25_000 / 1000
    left = list(connection.scan_iter("cache:*", count=10_000))
    with connection.pipeline(transaction=False) as pipe:
        for key in left:
            pipe.ttl(key)
        assert len(left) == 50_000 and min(pipe.execute()) > 0


def test_the_cli_runs_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: Any, connection: Redis, run_jobs: Any
) -> None:
    from jobs import content

    content.seed(engine, 10, 0)
    with engine.connect() as conn:
        now = datetime.now(UTC).replace(tzinfo=None)  # sessions expire days from now, never at it
        expired = conn.execute(
            select(func.count()).where(content.django_session.c.expire_date < now)
        ).scalar_one()
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", str(tmp_path / "thumbs"))
    make_file(tmp_path / "thumbs" / "128" / "old.jpg.jpg", 10, age_days=200)
    runner = CliRunner()
    assert runner.invoke(cli, ["enqueue", "expire-sessions", "--json"]).exit_code == 0
    assert runner.invoke(cli, ["enqueue", "sweep-cache", "thumbnails", "--json"]).exit_code == 0
    run_jobs()
    sessions = json.loads(runner.invoke(cli, ["info", "--json"]).stdout)["queues"]
    assert next(q for q in sessions if q["name"] == "maintenance")["finished"] == 2
    assert not (tmp_path / "thumbs" / "128" / "old.jpg.jpg").exists()
    with engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(content.django_session)).scalar_one()
            == 10 - expired
        )


def test_redis_sweep_by_idle_time(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> None:
    connection.set("cache:stale", "v")
    connection.set("cache:read", "v")
    connection.set("cache:ttl", "v", ex=600)
    time.sleep(2.1)  # idle time is what is measured here: it only grows with the clock
    connection.get("cache:read")
    monkeypatch.setenv(
        "RQKIT_CACHE_TARGETS",
        json.dumps({"c": {"kind": "redis", "pattern": "cache:*", "max_idle_seconds": 1}}),
    )
    dry = sweep_cache("c", dry_run=True)["targets"][0]
    assert (dry["deleted"], dry["would_delete"], connection.exists("cache:stale")) == (0, 2, 1)
    assert sweep_cache("c")["targets"][0]["deleted"] == 2
    assert sorted(connection.scan_iter("cache:*")) == [b"cache:read"]


def test_a_broad_pattern_never_reaches_the_queues_or_the_toolkits_keys(
    monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    monkeypatch.setenv(
        "RQKIT_CACHE_TARGETS", json.dumps({"all": {"kind": "redis", "pattern": "*:*", "no_ttl": True}})
    )
    job = enqueue("sleep", 0)
    connection.set("rqkit:email:sent:abc", "{}")
    connection.set("page:1", "cached")
    assert sweep_cache("all")["targets"][0]["deleted"] == 1
    assert connection.exists(job.key, "rq:queue:default", "rqkit:email:sent:abc") == 3
    assert not connection.exists("page:1")


def test_odd_keys_under_a_session_prefix_are_left_alone(stores: Any, connection: Redis) -> None:
    past = datetime.now(UTC).timestamp() - 60
    connection.hset("sess:old", mapping={"expires": past})
    connection.hset("sess:garbled", mapping={"expires": "soon"})
    connection.set("sess:count", 7)
    stores(cache={"kind": "redis", "prefix": "sess:", "expiry_field": "expires"})
    assert expire_sessions("cache")["deleted"] == 1
    assert sorted(connection.scan_iter("sess:*")) == [b"sess:count", b"sess:garbled"]
