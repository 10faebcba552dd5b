"""A fresh database for each test on SQLite, PostgreSQL and MariaDB (`database_url`, a pytest plugin that
tests/conftest.py registers).

The two servers (tests/database_servers.py) start once per session, and only if a collected test needs
them: as soon as collection ends, in background threads, so they initialise while the first tests run.
They stop, and their folders go, when the session ends. With RQKIT_TEST_DATABASES=required (scripts/test
sets it) a server that is missing or does not start fails the tests that need it; without it (pytest run
by hand on a machine without the servers) they are skipped, saying why."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from jobs.content import database_engine
from tests.database_servers import DatabaseServer, DatabaseUnavailable, MariaDBServer, PostgresServer

SERVERS: dict[str, type[DatabaseServer]] = {"postgresql": PostgresServer, "mariadb": MariaDBServer}
STARTED: dict[str, DatabaseServer] = {}
# Read as the plugin loads: the session's toolkit_env fixture clears every RQKIT_ variable.
REQUIRED = os.environ.get("RQKIT_TEST_DATABASES") == "required"


def server(kind: str) -> DatabaseServer:
    """The session's server of this kind, started (in the background) on first use."""
    if kind not in STARTED:
        STARTED[kind] = SERVERS[kind]()
        STARTED[kind].begin()
    return STARTED[kind]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    specs = (getattr(item, "callspec", None) for item in session.items)
    kinds = {spec.params.get("database_url") for spec in specs if spec is not None}
    for kind in sorted(kinds & SERVERS.keys()):
        server(kind)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for started in STARTED.values():
        started.stop()
    STARTED.clear()


def ready_server(kind: str) -> DatabaseServer:
    """The running server, else this test fails (RQKIT_TEST_DATABASES=required) or is skipped."""
    found = server(kind)
    try:
        found.ready()
    except DatabaseUnavailable as exc:
        if REQUIRED:
            pytest.fail(f"{exc} (RQKIT_TEST_DATABASES=required; =optional skips instead)", pytrace=False)
        pytest.skip(f"{exc} (scripts/test installs it, as root)")
    return found


@pytest.fixture(params=["sqlite", *SERVERS])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database for this test: a SQLite file, or a database of its
    own on the session's PostgreSQL or MariaDB server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    found = ready_server(request.param)
    name = f"t{uuid4().hex[:16]}"
    url = found.create(name)
    yield url
    database_engine(url).dispose()  # the toolkit keeps an engine per URL, with its pooled connections
    found.drop(name)
