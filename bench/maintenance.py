"""Maintenance benchmark: session expiry in SQLite and a Redis cache sweep, at a million rows/keys.

Prints rows deleted per second for 1,000,000 expired of 2,000,000 Django-style sessions in a SQLite
file, keys swept per second for 1,000,000 Redis keys (half of them selected), and the longest single
transaction or Redis command batch of each (target: none over 100 ms).
Usage: .venv/bin/python bench/maintenance.py [--sessions 2000000] [--keys 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis
from sqlalchemy import create_engine, text

from config import get_settings
from jobs.maintenance import expire_sessions, sweep_cache
from launcher.redis_server import RedisServer, free_port

CHUNK = 50_000


def fill_sessions(url: str, count: int) -> None:
    """Django's table; every other session expired an hour ago, the rest expire in an hour."""
    engine = create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY, session_data text NOT NULL,"
            " expire_date datetime NOT NULL)"
        )
        conn.exec_driver_sql("CREATE INDEX django_session_expire_date ON django_session (expire_date)")
    statement = text("INSERT INTO django_session VALUES (:k, :d, :e)")
    for start in range(0, count, CHUNK):
        rows = [
            {"k": f"{i:032x}", "d": "e30=", "e": now + timedelta(hours=-1 if i % 2 == 0 else 1)}
            for i in range(start, min(count, start + CHUNK))
        ]
        with engine.begin() as conn:
            conn.execute(statement, rows)


def fill_keys(connection: Redis, count: int) -> None:
    """Half `cache:*` keys without a TTL (selected), a quarter with one, a quarter outside the pattern."""
    for start in range(0, count, CHUNK):
        with connection.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + CHUNK)):
                if i % 4 < 2:
                    pipe.set(f"cache:{i}", "v")
                elif i % 4 == 2:
                    pipe.set(f"cache:{i}", "v", ex=3600)
                else:
                    pipe.set(f"other:{i}", "v")
            pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = RedisServer(free_port(), work / "redis").start()
        url = f"sqlite:///{work / 'sessions.db'}"
        (work / "none.toml").write_text("")
        os.environ.update(
            REDIS_URL=server.url,
            RQKIT_CONFIG=str(work / "none.toml"),
            RQKIT_VAR_DIR=str(work),
            RQKIT_SESSION_STORES=json.dumps({"app": {"kind": "sql", "preset": "django", "url": url}}),
            RQKIT_CACHE_TARGETS=json.dumps(
                {"pages": {"kind": "redis", "pattern": "cache:*", "no_ttl": True}}
            ),
        )
        get_settings.cache_clear()
        try:
            start = time.perf_counter()
            fill_sessions(url, options.sessions)
            filled_sessions = time.perf_counter() - start
            sessions = expire_sessions("app")
            connection = Redis.from_url(server.url)
            start = time.perf_counter()
            fill_keys(connection, options.keys)
            filled_keys = time.perf_counter() - start
            swept = sweep_cache("pages")["targets"][0]
        finally:
            server.stop()
    batch = get_settings().maintenance_batch_size
    print(
        f"batch size {batch}; filling took {filled_sessions:.1f} s (sessions) and {filled_keys:.1f} s (keys)"
    )
    print(f"{'measure':<44}{'deleted':>11}{'seconds':>9}{'per second':>12}{'longest step':>14}")
    for name, report in (
        ("SQLite sessions, expired of all", sessions),
        ("Redis keys without TTL, swept", swept),
    ):
        rate = report["deleted"] / report["seconds"]
        longest = report["longest_step_ms"]
        print(f"{name:<44}{report['deleted']:>11,}{report['seconds']:>9.1f}{rate:>12,.0f}{longest:>11.1f} ms")


if __name__ == "__main__":
    main()
