"""The cached total word count: streamed count, one GET to read, at most one pending recount; on SQLite,
PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from sqlalchemy import Engine, insert

from jobs import content, enqueue, stats, submit
from ops.outcomes import wait_for
from tests.support import run


@pytest.fixture
def engine(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The content database, fresh for each test, on SQLite, PostgreSQL and MariaDB in turn."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return content.content_engine(database_url)


def add_comments(engine: Engine, bodies: list[str]) -> None:
    with engine.begin() as conn:
        article_id = conn.execute(
            insert(content.articles).values(title="t", body="a b c")
        ).inserted_primary_key[0]
        conn.execute(insert(content.comments), [{"article_id": article_id, "body": b} for b in bodies])


def test_count_words_streams_across_batches(engine: Engine) -> None:
    bodies = [f"word {'x ' * (i % 7)} end\n\tof  line" for i in range(2 * stats.BATCH_ROWS + 17)]
    add_comments(engine, bodies)
    assert stats.count_words(engine, content.comments) == (sum(len(b.split()) for b in bodies), len(bodies))


def test_the_job_caches_the_total_and_reading_it_is_one_get(
    engine: Engine, connection: Redis, run_jobs: Any
) -> None:
    add_comments(engine, ["one two three", "four five"])
    assert stats.total_word_count("comment", connection) is None
    job = enqueue("word-count", "comment")
    run_jobs()
    assert wait_for(job, timeout=1).result == {"model": "comment", "total_word_count": 5, "rows": 2}
    assert connection.get("comment/total_word_count") == b"5"
    assert stats.total_word_count("comment", connection) == 5


def test_a_burst_of_requests_queues_one_recount(engine: Engine, connection: Redis, run_jobs: Any) -> None:
    for i in range(50):
        add_comments(engine, [f"comment number {i}"])
        submission = submit("word-count", ("comment",))
        if i == 0:
            first = submission.job
        assert submission.job.id == first.id and submission.duplicate == (i > 0)
    assert Queue("maintenance", connection=connection).count == 1
    run_jobs()
    assert stats.total_word_count("comment", connection) == 3 * 50


def test_concurrent_requests_queue_one_recount(engine: Engine, connection: Redis) -> None:
    with ThreadPoolExecutor(8) as pool:
        submissions = list(pool.map(lambda _: submit("word-count", ("comment",)), range(80)))
    assert len({s.job.id for s in submissions}) == 1
    assert sum(not s.duplicate for s in submissions) == 1
    assert Queue("maintenance", connection=connection).count == 1


def test_a_recount_already_running_does_not_block_the_next_one(engine: Engine, connection: Redis) -> None:
    running = enqueue("word-count", "comment")
    Queue("maintenance", connection=connection).pop_job_id()
    running.set_status(JobStatus.STARTED)
    pending = submit("word-count", ("comment",))
    assert not pending.duplicate and pending.job.id != running.id
    assert submit("word-count", ("comment",)).job.id == pending.job.id


def test_each_model_has_its_own_pending_recount(engine: Engine, connection: Redis) -> None:
    assert enqueue("word-count", "comment").id != enqueue("word-count", "article").id
    assert Queue("maintenance", connection=connection).count == 2


def test_seed_adds_articles_with_comments(engine: Engine) -> None:
    assert content.seed(engine, 3, 4) == {"articles": 3, "comments": 12, "sessions": 3}
    assert stats.count_words(engine, content.comments)[1] == 12
    assert stats.count_words(engine, content.articles)[1] == 3


def test_a_recount_scheduled_for_later_does_not_delay_one_asked_for_now(
    engine: Engine, connection: Redis
) -> None:
    later = submit("word-count", ("comment",), at=datetime.now(UTC) + timedelta(hours=1))
    assert (
        submit("word-count", ("comment",), at=datetime.now(UTC) + timedelta(hours=2)).job.id == later.job.id
    )
    now = submit("word-count", ("comment",))
    assert not now.duplicate and Queue("maintenance", connection=connection).job_ids == [now.job.id]
    assert submit("word-count", ("comment",)).job.id == now.job.id


def test_a_cache_value_that_is_not_a_count_reads_as_unknown(
    connection: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever another writer left at the key (text, a negative number, a hash), no traceback."""
    for corrupt in (
        lambda: connection.set("comment/total_word_count", "lots"),
        lambda: connection.set("comment/total_word_count", -3),
        lambda: connection.hset("comment/total_word_count", "x", "1"),
    ):
        connection.delete("comment/total_word_count")
        corrupt()
        assert stats.total_word_count("comment", connection) is None
        assert "word count at comment/total_word_count is unknown" in caplog.text
        result = run("stats", "--json")
        assert result.exit_code == 0 and "Traceback" not in result.output
        assert json.loads(result.stdout) == {"comment": None, "article": None}
