"""The content database the word count reads: articles and their comments (SQLAlchemy Core)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import Column, DateTime, Engine, ForeignKey, Integer, MetaData, String, Table, Text, func
from sqlalchemy import create_engine as sqlalchemy_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config import ConfigError

metadata = MetaData()

articles = Table(
    "articles",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.current_timestamp()),
)

comments = Table(
    "comments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("article_id", ForeignKey("articles.id"), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.current_timestamp()),
)

# The demo app's sessions, in Django's schema: what the default `expire-sessions` store cleans.
django_session = Table(
    "django_session",
    metadata,
    Column("session_key", String(40), primary_key=True),
    Column("session_data", Text, nullable=False),
    Column("expire_date", DateTime, nullable=False, index=True),
)

WORDS = (
    "job queue worker redis thumbnail email schedule retry cache session background request "
    "response comment article count fast slow reliable batch nightly payload result failure"
).split()


@cache
def database_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL (a SQLite file's folder is made); nothing is created in it."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError("the database URL is not a SQLAlchemy URL (dialect://user@host/name)") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sqlalchemy_engine(parsed)


@cache
def content_engine(url: str) -> Engine:
    """An engine for the content database, with its tables created."""
    engine = database_engine(url)
    metadata.create_all(engine)
    return engine


def sample_text(rng: random.Random, words: int) -> str:
    """A sentence of `words` words from the sample vocabulary."""
    return " ".join(rng.choice(WORDS) for _ in range(words))


def seed(engine: Engine, articles_count: int = 20, comments_per_article: int = 5) -> dict[str, int]:
    """Add sample articles, each with comments; return how many rows were added."""
    rng = random.Random()
    with engine.begin() as conn:
        for _ in range(articles_count):
            article = articles.insert().values(
                title=sample_text(rng, 4), body=sample_text(rng, rng.randint(50, 300))
            )
            key = conn.execute(article).inserted_primary_key
            assert key is not None
            bodies = [sample_text(rng, rng.randint(3, 40)) for _ in range(comments_per_article)]
            if bodies:
                conn.execute(comments.insert(), [{"article_id": key[0], "body": body} for body in bodies])
        now = datetime.now(UTC).replace(tzinfo=None)
        sessions = [
            {
                "session_key": uuid.uuid4().hex,
                "session_data": "{}",
                "expire_date": now + timedelta(days=rng.choice((-1, 1)) * rng.randint(1, 30)),  # never now
            }
            for _ in range(articles_count)
        ]
        conn.execute(django_session.insert(), sessions)
    return {
        "articles": articles_count,
        "comments": articles_count * comments_per_article,
        "sessions": len(sessions),
    }
