"""Sample data and a few demo jobs, for `up --demo` and `demo seed`: the content database gains articles,
comments and sessions, and the word counts are queued as a web app's hooks would queue them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from redis import Redis

from config import Settings, redis_client
from jobs import content, stats, submit
from ops.outcomes import wait_for


def seed(settings: Settings, articles: int, comments: int, connection: Redis | None = None) -> dict[str, Any]:
    """Add sample articles with comments (and sessions), then queue a word count of each model."""
    added: dict[str, Any] = {
        **content.seed(content.content_engine(settings.sqlalchemy_url), articles, comments)
    }
    connection = connection or redis_client(settings)
    added["word_count_jobs"] = [
        submit("word-count", (m,), connection=connection).job.id for m in stats.MODELS
    ]
    return added


def run_demo(settings: Settings, say: Callable[[str], None]) -> None:
    """Seed the database, enqueue a few jobs, and report their outcomes through `say`."""
    added = content.seed(content.content_engine(settings.sqlalchemy_url), 20, 5)
    say(f"added {added['articles']} articles, {added['comments']} comments and {added['sessions']} sessions")
    connection = redis_client(settings)
    demo_jobs = [
        ("sleep", (1,), None),
        ("sleep", (2,), None),
        ("word-count", ("comment",), None),
        ("word-count", ("article",), None),
        ("sleep", (1,), datetime.now().astimezone() + timedelta(seconds=10)),
    ]
    submitted = [submit(name, args, at=at, connection=connection).job for name, args, at in demo_jobs]
    for job in submitted:
        say(f"enqueued {job.description} as job {job.id}")
    for job in submitted:
        outcome = wait_for(job)
        say(f"{job.description}: {outcome.status} {json.dumps(outcome.result) if outcome.result else ''}")
    totals = {m: stats.total_word_count(m, connection) for m in stats.MODELS}
    say(
        f"cached word counts (python cli.py stats): {json.dumps(totals)}; dashboard: "
        f"http://{settings.dashboard_host}:{settings.dashboard_port}"
    )
