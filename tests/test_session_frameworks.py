"""Each session preset against the table its framework makes and the rows it writes, on SQLite, PostgreSQL
and MariaDB: Django's `django_session` made by its migrations and filled through its SessionStore;
Flask-Session 0.8's table made and filled by Flask-Session (Flask-SQLAlchemy); the
activerecord-session_store table as Rails creates it from the gem's migration, with rows as the gem
writes them. After expire-sessions every live session still loads through its framework and every
expired one is gone."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from flask_session import Session
from flask_sqlalchemy import SQLAlchemy
from freezegun import freeze_time
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from jobs.maintenance import expire_sessions
from tests.support import python

BATCH = 5  # several batches for a dozen expired sessions


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> Callable[[str, str], None]:
    """Configure the session store `app`: a preset on a database."""

    def configure(preset: str, url: str) -> None:
        stores = {"app": {"kind": "sql", "preset": preset, "url": url}}
        monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps(stores))
        monkeypatch.setenv("RQKIT_MAINTENANCE_BATCH_SIZE", str(BATCH))

    return configure


def column_values(url: str, table: str, column: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text(f"SELECT {column} FROM {table}")).scalars())
    finally:
        engine.dispose()


def expire(preset: str, url: str, store: Callable[[str, str], None], expired: int) -> None:
    store(preset, url)
    report = expire_sessions("app")
    assert (report["status"], report["deleted"]) == ("done", expired)
    assert report["batches"] == expired // BATCH + 1


def django(url: str, *args: str) -> Any:
    done = python("-m", "tests.django_sessions", url, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_django(database_url: str, store: Callable[[str, str], None]) -> None:
    written = django(database_url, "write", "12", "12")
    expire("django", database_url, store, expired=12)
    assert column_values(database_url, "django_session", "session_key") == set(written["live"])
    assert django(database_url, "load", *written["live"]) == written["live"]


def flask_app(url: str) -> tuple[Flask, SQLAlchemy]:
    """A Flask app whose sessions Flask-Session keeps in `url` (table `sessions`, made by Flask-Session)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="rqkit-test-only",
        SESSION_TYPE="sqlalchemy",
        SQLALCHEMY_DATABASE_URI=url,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=1),
    )
    db = SQLAlchemy(app)
    app.config["SESSION_SQLALCHEMY"] = db
    Session(app)

    @app.post("/login/<int:user>")
    def login(user: int) -> str:
        session["user"] = user
        return "ok"

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"user": session.get("user")}

    return app, db


def signed_in(app: Flask, users: range) -> list[FlaskClient]:
    clients = [app.test_client() for _ in users]
    for client, user in zip(clients, users, strict=True):
        assert client.post(f"/login/{user}").status_code == 200
    return clients


def test_flask_session(database_url: str, store: Callable[[str, str], None]) -> None:
    app, db = flask_app(database_url)
    try:
        with freeze_time(datetime.now(UTC) - timedelta(hours=2)):  # an hour's lifetime, over an hour ago
            signed_in(app, range(100, 112))
        expired = column_values(database_url, "sessions", "session_id")
        live = signed_in(app, range(12))
        expire("flask", database_url, store, expired=12)
        assert not column_values(database_url, "sessions", "session_id") & expired
        assert [client.get("/me").json for client in live] == [{"user": user} for user in range(12)]
    finally:
        with app.app_context():
            db.engine.dispose()


RAILS_TABLE = {  # what `create_table :sessions` of the gem's migration sends, per Rails adapter (7.x)
    "sqlite": 'CREATE TABLE "sessions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL,'
    ' "session_id" varchar NOT NULL, "data" text, "created_at" datetime(6) NOT NULL,'
    ' "updated_at" datetime(6) NOT NULL)',
    "postgresql": 'CREATE TABLE "sessions" ("id" bigserial primary key, "session_id" character varying'
    ' NOT NULL, "data" text, "created_at" timestamp(6) NOT NULL, "updated_at" timestamp(6) NOT NULL)',
    "mysql": "CREATE TABLE `sessions` (`id` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,"
    " `session_id` varchar(255) NOT NULL, `data` text, `created_at` datetime(6) NOT NULL,"
    " `updated_at` datetime(6) NOT NULL)",
}
RAILS_INDEXES = (
    "CREATE UNIQUE INDEX {q}index_sessions_on_session_id{q} ON {q}sessions{q} ({q}session_id{q})",
    "CREATE INDEX {q}index_sessions_on_updated_at{q} ON {q}sessions{q} ({q}updated_at{q})",
)


def marshal_dump(data: dict[str, int | str]) -> bytes:
    """Ruby's Marshal.dump of a hash of short UTF-8 strings to such strings or small integers."""
    symbols: list[str] = []

    def small(n: int) -> bytes:  # Marshal's w_long, for 0 <= n < 123
        return bytes([n + 5 if n else 0])

    def symbol(name: str) -> bytes:
        if name in symbols:
            return b";" + small(symbols.index(name))
        symbols.append(name)
        return b":" + small(len(name)) + name.encode()

    def dump(value: int | str) -> bytes:
        if isinstance(value, int):
            return b"i" + small(value)
        raw = value.encode()
        return b'I"' + small(len(raw)) + raw + small(1) + symbol("E") + b"T"  # encoding: UTF-8

    return b"\x04\x08{" + small(len(data)) + b"".join(dump(k) + dump(v) for k, v in data.items())


def rails_row(updated: datetime, user: int) -> dict[str, str]:
    """A row as activerecord-session_store writes it: the private id of a Rack session id, the data as
    Base64.encode64(Marshal.dump(hash)), times in UTC to the microsecond."""
    public_id = secrets.token_hex(16)
    dumped = marshal_dump({"session_id": public_id, "user_id": user, "_csrf_token": secrets.token_hex(16)})
    data = "".join(base64.b64encode(dumped[i : i + 45]).decode() + "\n" for i in range(0, len(dumped), 45))
    return {
        "session_id": "2::" + hashlib.sha256(public_id.encode()).hexdigest(),
        "data": data,
        "created_at": (updated - timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S.%f"),
        "updated_at": updated.strftime("%Y-%m-%d %H:%M:%S.%f"),
    }


def test_rails_activerecord_session_store(database_url: str, store: Callable[[str, str], None]) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    ages = [timedelta(minutes=1), timedelta(days=1), timedelta(days=13), timedelta(days=14, hours=-1)]
    live = [rails_row(now - ages[i % 4], i) for i in range(12)]
    ages = [timedelta(days=14, hours=1), timedelta(days=20), timedelta(days=400)]
    expired = [rails_row(now - ages[i % 3], 100 + i) for i in range(12)]
    engine = create_engine(database_url)
    backend = make_url(database_url).get_backend_name()
    with engine.begin() as conn:
        conn.execute(text(RAILS_TABLE[backend]))
        for index in RAILS_INDEXES:
            conn.execute(text(index.format(q="`" if backend == "mysql" else '"')))
        insert = "INSERT INTO sessions (session_id, data, created_at, updated_at)"
        conn.execute(text(f"{insert} VALUES (:session_id, :data, :created_at, :updated_at)"), live + expired)
    engine.dispose()
    expire("rails", database_url, store, expired=12)
    assert column_values(database_url, "sessions", "session_id") == {row["session_id"] for row in live}
