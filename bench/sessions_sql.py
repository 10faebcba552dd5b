"""Session expiry on PostgreSQL, MariaDB and SQLite: 1,000,000 sessions in Django's table, half expired.

The table is made by Django's own migrations (tests/django_sessions.py), so it has Django's column types
and indexes on each database. Rows go in by 20,000 in random key order, the expired ones (a minute to
a month ago) spread evenly among the live ones (an hour to two weeks ahead); the table is then analysed,
as a live database's would be. The toolkit's expire-sessions job runs on it, and the table says rows
deleted per second, batches, the median and 99th percentile transaction and the longest (the issue's
target: none over 100 ms), the job run as the toolkit's work-horse runs it (after gc.freeze()). The
servers are tests/database_servers.py's throw-away ones with durable commits (fsync on); MariaDB twice:
with its default 128 MiB buffer pool, smaller than the table, and with one that holds it.
Usage: .venv/bin/python -m bench.sessions_sql [--sessions 1000000] [--expired 0.5] [--batch N]
       [--setups postgresql,mariadb,mariadb-1g,sqlite]     about 5 minutes for all four
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, insert, text

from config import get_settings
from jobs.maintenance import expire_sessions
from jobs.maintenance.report import Report
from launcher.redis_server import RedisServer, free_port
from tests.database_servers import DatabaseServer, MariaDBServer, PostgresServer

CHUNK = 20_000
SETUPS: dict[str, tuple[str, Callable[[], DatabaseServer] | None]] = {
    "postgresql": ("PostgreSQL {}", lambda: PostgresServer(fast=False)),
    "mariadb": ("MariaDB {} (128 MiB pool)", lambda: MariaDBServer(fast=False)),
    "mariadb-1g": (
        "MariaDB {} (1 GiB pool)",
        lambda: MariaDBServer(fast=False, settings={"innodb-buffer-pool-size": "1G"}),
    ),
    "sqlite": ("SQLite {}", None),
}
AFTER_FILL = {
    "postgresql": ("VACUUM ANALYZE django_session", "SHOW server_version"),
    "mysql": ("ANALYZE TABLE django_session", "SELECT VERSION()"),
    "sqlite": ("ANALYZE", "SELECT sqlite_version()"),
}


def django_table(url: str) -> None:
    """django_session as Django's migrations make it on this database."""
    made = subprocess.run(
        [sys.executable, "-m", "tests.django_sessions", url, "write", "0", "0"], capture_output=True
    )
    if made.returncode != 0:
        raise SystemExit(made.stderr.decode()[-2000:])


def fill(url: str, count: int, expired: float) -> tuple[float, str]:
    """`count` sessions, the fraction `expired` of them expired: the seconds it took, the server's version."""
    rng = random.Random(21)
    engine = create_engine(url)
    table = Table("django_session", MetaData(), autoload_with=engine)
    now = datetime.now(UTC)
    if not getattr(table.c.expire_date.type, "timezone", False):  # timestamptz on PostgreSQL only
        now = now.replace(tzinfo=None)
    start = time.perf_counter()
    for first in range(0, count, CHUNK):
        rows = [
            {
                "session_key": f"{rng.getrandbits(128):032x}",
                "session_data": "e30:1t9Xy2:" + "x" * 100,  # as long as a small signed Django session
                "expire_date": now + timedelta(seconds=rng.randint(*span(i, expired))),
            }
            for i in range(first, min(count, first + CHUNK))
        ]
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
    analyse, version = AFTER_FILL[engine.dialect.name]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(analyse))
        found = str(conn.execute(text(version)).scalar_one())
    engine.dispose()
    return time.perf_counter() - start, found.split("-")[0].split(" ")[0]


def span(i: int, expired: float) -> tuple[int, int]:
    """Row i's expiry, in seconds from now: the expired rows spread evenly, exactly count * expired."""
    if int((i + 1) * expired) > int(i * expired):
        return -30 * 86400, -60
    return 3600, 14 * 86400


@contextmanager
def each_step() -> Iterator[list[float]]:
    """Every step's milliseconds, as the job's Report times them (it keeps only the longest)."""
    steps: list[float] = []
    timed = Report.timed

    def recorded(report: Report, step: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return timed(report, step)
        finally:
            steps.append((time.perf_counter() - start) * 1000)

    Report.timed = recorded  # type: ignore[method-assign, assignment]
    try:
        yield steps
    finally:
        Report.timed = timed  # type: ignore[method-assign]


def run(setup: str, work: Path, count: int, expired: float) -> list[str]:
    """One setup's row of the table."""
    label, make = SETUPS[setup]
    server = make().start() if make else None
    try:
        url = server.create("bench") if server else f"sqlite:///{work / 'sessions.db'}"
        django_table(url)
        filled, version = fill(url, count, expired)
        os.environ["RQKIT_SESSION_STORES"] = json.dumps(
            {setup: {"kind": "sql", "preset": "django", "url": url}}
        )
        get_settings.cache_clear()
        gc.freeze()  # as the toolkit's work-horse does (workers/forking.py): else each full collection of
        try:  # this process's objects (35-50 ms here) lands in whichever transaction is open
            with each_step() as steps:
                report = expire_sessions(setup)
        finally:
            gc.unfreeze()
    finally:
        if server:
            server.stop()
    quantiles = statistics.quantiles(steps, n=100, method="inclusive")
    return [
        label.format(version),
        f"{filled:.1f}",
        f"{report['deleted']:,}",
        f"{report['seconds']:.1f}",
        f"{report['deleted'] / report['seconds']:,.0f}",
        f"{report['batches']:,}",
        f"{quantiles[49]:.1f}",
        f"{quantiles[98]:.1f}",
        f"{report['longest_step_ms']:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--expired", type=float, default=0.5, help="the fraction of sessions expired")
    parser.add_argument("--batch", type=int, help="rows per transaction (default: the toolkit's setting)")
    parser.add_argument("--setups", default=",".join(SETUPS))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis = RedisServer(free_port(), work / "redis").start()  # the job's lock
        (work / "none.toml").write_text("")
        os.environ.update(REDIS_URL=redis.url, RQKIT_CONFIG=str(work / "none.toml"), RQKIT_VAR_DIR=str(work))
        if options.batch:
            os.environ["RQKIT_MAINTENANCE_BATCH_SIZE"] = str(options.batch)
        get_settings.cache_clear()
        try:
            rows = [
                run(setup, work, options.sessions, options.expired) for setup in options.setups.split(",")
            ]
        finally:
            redis.stop()
    batch = get_settings().maintenance_batch_size
    print(f"{options.sessions:,} sessions in Django's table, {options.expired:.0%} expired; batch {batch:,}")
    header = [
        "setup",
        "fill s",
        "deleted",
        "seconds",
        "rows/s",
        "batches",
        "tx p50 ms",
        "p99 ms",
        "longest ms",
    ]
    for row in [header, *rows]:
        print(f"{row[0]:<32}" + "".join(f"{cell:>11}" for cell in row[1:]))


if __name__ == "__main__":
    main()
