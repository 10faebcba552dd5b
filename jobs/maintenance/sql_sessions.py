"""Session expiry in a SQL table: by primary key, a batch per short transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from config import Settings
from config.urls import redacted_url
from jobs import content
from jobs.content import database_engine
from jobs.errors import JobInputError
from jobs.maintenance.report import Report
from jobs.maintenance.rules import sql_rule, url_problem


def expire_sql_sessions(
    config: dict[str, Any], settings: Settings, report: Report, now: datetime | None = None
) -> None:
    """Delete expired rows by primary key, a batch per short transaction; a dry run only counts."""
    rule = sql_rule(config)
    engine = session_engine(config.get("url") or settings.sqlalchemy_url, settings, report.dry_run)
    table = reflect(engine, rule["table"])
    moment = now or datetime.now(UTC)
    if "expiry_column" in rule:
        expired = before(column(table, rule["expiry_column"]), moment)
    else:
        expired = before(
            column(table, rule["updated_column"]), moment - timedelta(seconds=float(rule["max_age"]))
        )
    key = column(table, rule["key_column"])
    batch = settings.maintenance_batch_size
    with engine.connect() as conn:
        if report.dry_run:  # what a run would delete
            report.examined = report.deleted = report.timed(
                lambda: conn.execute(select(func.count()).where(expired)).scalar_one()
            )
            return
    while True:  # each batch timed from its transaction's start to its commit
        found, deleted = report.timed(lambda: delete_batch(engine, table, key, expired, batch))
        report.batches += 1
        report.examined += found
        report.deleted += deleted
        if found < batch:
            return


def session_engine(url: str, settings: Settings, dry_run: bool) -> Engine:
    """The store's database: never a SQLite file made where there is none, nothing made in a dry run."""
    if url == settings.sqlalchemy_url and not dry_run:
        return content.content_engine(url)  # the toolkit's own database, its tables made on first use
    if problem := url_problem(url):
        raise JobInputError(f"session store: {problem}")
    parsed = make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path not in (None, "", ":memory:") and not Path(str(path)).is_file():
        raise JobInputError(f"session store: no database file {path}")
    return database_engine(url)


def before(column: Any, moment: datetime) -> Any:
    """`column < moment` (an aware UTC time). Frameworks write naive UTC times, except into a column that
    keeps the zone (Django's on PostgreSQL: timestamp with time zone), which is compared with the aware
    time: a naive one would be read in the server's TimeZone."""
    return column < (moment if getattr(column.type, "timezone", False) else moment.replace(tzinfo=None))


def delete_batch(engine: Engine, table: Table, key: Any, expired: Any, batch: int) -> tuple[int, int]:
    """One transaction: rows found and rows deleted. The delete repeats the rule, so a session renewed
    meanwhile stays."""
    with engine.begin() as conn:
        # no ORDER BY: the expiry column's index is read from its start, no sort
        keys = list(conn.execute(select(key).where(expired).limit(batch)).scalars())
        if not keys:
            return 0, 0
        return len(keys), conn.execute(delete(table).where(key.in_(keys)).where(expired)).rowcount


def reflect(engine: Engine, name: str) -> Table:
    try:
        return Table(name, MetaData(), autoload_with=engine)
    except NoSuchTableError:
        database = redacted_url(engine.url.render_as_string(hide_password=False))
        raise JobInputError(f"session store: no table {name!r} in {database}") from None
    except SQLAlchemyError as exc:
        raise JobInputError(f"session store: cannot read {name!r}: {exc}") from None


def column(table: Table, name: str) -> Any:
    if name not in table.c:
        raise JobInputError(f"session store: table {table.name!r} has no column {name!r}")
    return table.c[name]
