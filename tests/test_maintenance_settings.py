"""What a store or target may be set to: wrong settings are refused with one clear line, at enqueue and
when the job starts; SQL names from the settings are identifiers, never SQL; a dry run makes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, insert, inspect, select

from jobs import enqueue
from jobs.errors import JobInputError
from jobs.maintenance import expire_sessions, sweep_cache

BAD_STORES = [
    (
        {"kind": "sql", "preset": "django", "max_age": "a week"},
        "max_age must be a number, 0 or more, got 'a week'",
    ),
    ({"kind": "sql", "table": 5, "key_column": "k", "expiry_column": "e"}, "table must be text, got 5"),
    ({"kind": "sql", "preset": ["django"]}, "preset must be text"),
    ({"kind": "sql", "preset": "zope"}, "unknown preset 'zope' \\(known: django, rails, flask\\)"),
    (
        {"kind": "sql", "preset": "django", "expiry_colum": "x"},
        "unknown field 'expiry_colum' \\(known: kind,",
    ),
    ({"kind": "sql", "table": "t", "key_column": "k"}, "give expiry_column, or updated_column and max_age"),
    ({"kind": "Redis", "prefix": "s:"}, "unknown kind 'Redis' \\(known: sql, redis\\)"),
    ({"kind": ["redis"], "prefix": "s:"}, "unknown kind \\['redis'\\]"),
    ({"kind": "redis", "prefix": "s:"}, "a redis store needs an index or an expiry_field"),
    ({"kind": "redis", "prefix": 1, "index": "i"}, "prefix must be text, got 1"),
]
BAD_TARGETS = [
    ({"kind": "disk", "max_age_days": "90"}, "max_age_days must be a number, 0 or more, got '90'"),
    ({"kind": "disk", "max_size_mb": -1}, "max_size_mb must be a number, 0 or more, got -1"),
    ({"kind": "disk", "max_age_days": True}, "max_age_days must be a number"),
    ({"kind": "disk", "path": ["/"]}, "path must be text"),
    ({"kind": "redis", "pattern": "c:*", "no_ttl": "yes"}, "no_ttl must be true or false, got 'yes'"),
    ({"kind": "redis", "no_ttl": True}, "a redis target needs a pattern"),
    ({"kind": "gcs", "path": "x"}, "unknown kind 'gcs' \\(known: disk, redis, s3\\)"),
    ({"kind": "s3", "max_age_days": 1}, "an s3 target needs a url, s3://bucket/prefix$"),
    (
        {"kind": "s3", "url": "https://key:secret@cache.example/x"},
        "an s3 target needs a url, s3://bucket/prefix$",
    ),
    ({"kind": "s3", "url": "s3://Cache_Bucket/x"}, "url: 'Cache_Bucket' is not a bucket name \\(3 to 63"),
    ({"kind": "s3", "url": "s3://key:secret@cache/x"}, "url: no credentials or ports in an s3:// location"),
    ({"kind": "s3", "url": "s3://cache/a/../../x"}, "url: no '.', '..' or hidden names in the prefix"),
    ({"kind": "s3", "url": "s3://cache/x", "path": "x"}, "unknown field 'path' \\(known: kind, url,"),
    ({"kind": "disk", "path": "s3://cache/x"}, 'path is a folder: for a bucket, set kind = "s3" and url$'),
]


@pytest.mark.parametrize(("store", "reason"), BAD_STORES)
def test_a_wrong_session_store_is_refused_in_one_line(
    store: dict[str, Any], reason: str, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps({"s": store}))
    for attempt in (lambda: enqueue("expire-sessions", "s"), lambda: expire_sessions("s")):
        with pytest.raises(JobInputError, match=f"^session store 's': {reason}"):
            attempt()


@pytest.mark.parametrize(("target", "reason"), BAD_TARGETS)
def test_a_wrong_cache_target_is_refused_in_one_line(
    target: dict[str, Any], reason: str, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    monkeypatch.setenv("RQKIT_CACHE_TARGETS", json.dumps({"t": target}))
    for attempt in (
        lambda: enqueue("sweep-cache", "t"),
        lambda: enqueue("sweep-cache"),  # all targets
        lambda: sweep_cache("t"),
    ):
        with pytest.raises(JobInputError, match=f"^cache target 't': {reason}"):
            attempt()


NAMES = ['we"ird; DROP TABLE keep; --', "sel'ect", "x`y]z", "with space"]


def test_table_and_column_names_are_identifiers_never_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    """Names with quotes, semicolons and brackets name a table and columns: nothing else runs."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    meta = MetaData()
    keep = Table("keep", meta, Column("id", String, primary_key=True))
    odd = Table(NAMES[0], meta, Column(NAMES[1], String, primary_key=True), Column(NAMES[2], DateTime))
    meta.create_all(engine)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(insert(keep), [{"id": "precious"}])
        conn.execute(insert(odd), [{NAMES[1]: "old", NAMES[2]: now - timedelta(hours=1)}])
        conn.execute(insert(odd), [{NAMES[1]: "new", NAMES[2]: now + timedelta(hours=1)}])
    stores = {
        "odd": {
            "kind": "sql",
            "url": url,
            "table": NAMES[0],
            "key_column": NAMES[1],
            "expiry_column": NAMES[2],
        },
        "injected": {
            "kind": "sql",
            "url": url,
            "table": "keep; DELETE FROM keep",
            "key_column": "id",
            "expiry_column": "id) OR 1=1 OR (id",
        },
    }
    monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps(stores))
    assert expire_sessions("odd")["deleted"] == 1
    with pytest.raises(JobInputError, match="no table 'keep; DELETE FROM keep'"):
        expire_sessions("injected")
    with engine.connect() as conn:
        assert list(conn.execute(select(odd.c[NAMES[1]])).scalars()) == ["new"]
        assert list(conn.execute(select(keep.c.id)).scalars()) == ["precious"]
    assert sorted(inspect(engine).get_table_names()) == sorted(["keep", NAMES[0]])


def test_a_dry_run_makes_no_database_and_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    missing = tmp_path / "nowhere" / "app.db"
    stores = {
        "s": {"kind": "sql", "preset": "django", "url": f"sqlite:///{missing}"},
        "default": {"kind": "sql", "preset": "django"},  # the content database
    }
    monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps(stores))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'content' / 'content.db'}")
    for store in ("s", "default"):
        with pytest.raises(JobInputError, match="no database file .*"):
            expire_sessions(store, dry_run=True)
    assert sorted(tmp_path.iterdir()) == []
