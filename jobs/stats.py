"""The cached total word count: computed in a job, stored in Redis, read with one GET."""

from __future__ import annotations

import logging
from contextlib import suppress

from redis import Redis
from redis.exceptions import ResponseError
from sqlalchemy import Engine, Table, select

from config import get_settings, redis_client
from jobs import content
from jobs.errors import JobInputError
from jobs.runtime import retry_only_transient

logger = logging.getLogger(__name__)

MODELS: dict[str, Table] = {"comment": content.comments, "article": content.articles}
BATCH_ROWS = 1000


def check_model(model: object) -> None:
    """Refuse anything but a known model name."""
    if not isinstance(model, str) or model not in MODELS:
        raise JobInputError(f"word-count: MODEL must be one of {', '.join(MODELS)}, got {model!r}")


def cache_key(model: str) -> str:
    """Where the total lives in Redis, e.g. comment/total_word_count."""
    return f"{model}/total_word_count"


def count_words(engine: Engine, table: Table) -> tuple[int, int]:
    """Total words over the table's bodies and the number of rows, streamed in batches."""
    words = rows = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS).execute(
            select(table.c.body)
        )
        for batch in result.partitions():
            rows += len(batch)
            words += sum(len(body.split()) for (body,) in batch)
    return words, rows


@retry_only_transient
def word_count(model: str) -> dict[str, int | str]:
    """Job: recount the model's words and cache the total."""
    check_model(model)
    settings = get_settings()
    total, rows = count_words(content.content_engine(settings.sqlalchemy_url), MODELS[model])
    redis_client(settings).set(cache_key(model), total)
    logger.info("%s: %d words in %d rows", model, total, rows)
    return {"model": model, "total_word_count": total, "rows": rows}


def total_word_count(model: str, connection: Redis | None = None) -> int | None:
    """The cached total for `model` (one Redis GET), or None if never computed or not readable as a
    count (a warning line says which: a recount overwrites it)."""
    check_model(model)
    key = cache_key(model)
    with suppress(ResponseError, ValueError):  # another type of key (WRONGTYPE), or not a whole number
        value = (connection or redis_client()).get(key)
        total = None if value is None else int(value)
        if total is None or total >= 0:
            return total
    logger.warning(
        "%s: the word count at %s is unknown (not a count); recount: python cli.py enqueue word-count %s",
        model,
        key,
        model,
    )
    return None
