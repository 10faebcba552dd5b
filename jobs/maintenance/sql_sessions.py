"""Session expiry in a SQL table: by key, a batch per short transaction, in the order of an index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
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

RESTART_EARLY = timedelta(seconds=1)


def expire_sql_sessions(
    config: dict[str, Any], settings: Settings, report: Report, now: datetime | None = None
) -> None:
    """Delete expired rows by key, a batch per short transaction; a dry run only counts."""
    rule = sql_rule(config)
    engine = session_engine(config.get("url") or settings.sqlalchemy_url, settings, report.dry_run)
    table = reflect(engine, rule["table"])
    cutoff = now or datetime.now(UTC)
    if "expiry_column" in rule:
        when = column(table, rule["expiry_column"])
    else:
        when = column(table, rule["updated_column"])
        cutoff -= timedelta(seconds=float(rule["max_age"]))
    expired = before(when, cutoff)
    key = column(table, rule["key_column"])
    if report.dry_run:  # what a run would delete
        with engine.connect() as conn:
            count = select(func.count()).select_from(table).where(expired)
            report.examined = report.deleted = report.timed(lambda: conn.execute(count).scalar_one())
        return
    walk = Walk(table, key, when if indexed(table, when) else key, expired)
    batch, start = settings.maintenance_batch_size, None
    while True:  # each batch timed from its transaction's start to its commit
        found, deleted, start = report.timed(partial(walk.delete_batch, engine, start, batch))
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


def indexed(table: Table, column: Any) -> bool:
    """Whether an index (or the primary key) starts with the column."""
    leading = [next(iter(index.columns)) for index in table.indexes if len(index.columns)]
    return any(found is column for found in [*leading, *list(table.primary_key.columns)[:1]])


@dataclass
class Walk:
    """The expired rows in the order of an index: the time column's where it has one (Django's and Rails'
    tables), else the key's (Flask-Session's `expiry` has none). Each batch starts where the last one
    ended, so no batch reads again the index entries of rows deleted before it (which a server keeps until
    its vacuum or purge runs), and none ends in a scan of the whole table to find that nothing is left."""

    table: Table
    key: Any
    order: Any
    expired: Any

    def delete_batch(self, engine: Engine, start: Any, batch: int) -> tuple[int, int, Any]:
        """One transaction: rows found, rows deleted, and where the next batch starts. The delete repeats
        the rule, so a session renewed meanwhile stays."""
        picked = [self.key] if self.order is self.key else [self.key, self.order]
        query = select(*picked).where(self.expired).order_by(self.order).limit(batch)
        with engine.begin() as conn:
            rows = conn.execute(query if start is None else query.where(self.order >= start)).all()
            if not rows:
                return 0, 0, start
            keys = [row[0] for row in rows]
            deleted = conn.execute(delete(self.table).where(self.key.in_(keys)).where(self.expired)).rowcount
        last = rows[-1][-1]
        # SQLite compares times as text, and a stored "12:00:00" sorts before the "12:00:00.000000" it is
        # sent back as: the next batch starts a second early, so no row of this one's last second is missed.
        return len(rows), deleted, last if self.order is self.key else last - RESTART_EARLY


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
