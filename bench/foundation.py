"""Foundation benchmark: the enqueue path, the cached read, a burst worker, and the streamed word count.

Runs on a private redis-server (free loopback port, temp dir) and a temp SQLite file; prints a table.
Usage: .venv/bin/python bench/foundation.py [--jobs 2000] [--rows 200000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import Engine, insert

from config import get_settings
from jobs import content, enqueue, stats, submit
from launcher.redis_server import RedisServer, free_port


def rate(count: int, action: Callable[[int], object]) -> tuple[float, float]:
    """Operations per second and microseconds per operation for `count` calls."""
    start = time.perf_counter()
    for i in range(count):
        action(i)
    elapsed = time.perf_counter() - start
    return count / elapsed, elapsed / count * 1e6


def fill_comments(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        article = conn.execute(insert(content.articles).values(title="t", body="b")).inserted_primary_key
        assert article is not None
        body = "the quick brown fox jumps over the lazy dog " * 4
        for start in range(0, rows, 10_000):
            batch = [{"article_id": article[0], "body": body} for _ in range(min(10_000, rows - start))]
            conn.execute(insert(content.comments), batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=200_000)
    options = parser.parse_args()
    n = options.jobs
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(free_port(), Path(tmp) / "redis").start()
        os.environ.update(REDIS_URL=server.url, RQKIT_VAR_DIR=tmp, RQKIT_CONFIG=str(Path(tmp) / "none.toml"))
        Path(tmp, "none.toml").write_text("")
        get_settings.cache_clear()
        connection = Redis.from_url(server.url)
        try:
            rows = measure(connection, n, options.rows)
        finally:
            server.stop()
    print(f"{'measure':<48}{'rate':>14}{'per op':>14}")
    for name, ops, micros, unit in rows:
        print(f"{name:<48}{ops:>10,.0f} {unit:<3}{micros:>11,.1f} us")


def measure(connection: Redis, n: int, table_rows: int) -> list[tuple[str, float, float, str]]:
    queue = Queue("default", connection=connection)
    results = []
    results.append(("enqueue via registry (one by one)", *rate(n, lambda i: enqueue("sleep", 0)), "/s"))
    connection.flushdb()
    results.append(
        ("enqueue via plain RQ (baseline)", *rate(n, lambda i: queue.enqueue("jobs.demo.sleep", 0)), "/s")
    )
    results.append(
        ("unique enqueue, already pending", *rate(n, lambda i: submit("word-count", ("comment",))), "/s")
    )
    connection.set(stats.cache_key("comment"), 42)
    results.append(
        ("total_word_count read (one GET)", *rate(n, lambda i: stats.total_word_count("comment")), "/s")
    )
    connection.flushdb()
    for _ in range(n):
        enqueue("sleep", 0)
    worker = SimpleWorker([queue], connection=connection)
    start = time.perf_counter()
    worker.work(burst=True)
    elapsed = time.perf_counter() - start
    results.append((f"sleep 0 through a burst SimpleWorker ({n} jobs)", n / elapsed, elapsed / n * 1e6, "/s"))

    engine = content.content_engine(get_settings().sqlalchemy_url)
    fill_comments(engine, table_rows)
    tracemalloc.start()
    start = time.perf_counter()
    words, rows = stats.count_words(engine, content.comments)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results.append(
        (f"word count, {rows:,} rows streamed ({words:,} words)", rows / elapsed, elapsed / rows * 1e6, "r/s")
    )
    print(f"peak Python memory while counting {rows:,} rows: {peak / 2**20:.2f} MiB")
    return results


if __name__ == "__main__":
    main()
