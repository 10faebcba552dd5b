"""A Redis lock that only its holder can release: one run at a time of a sweep, one send of a message."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from redis import Redis
from redis.exceptions import RedisError

from config.durable import NotDurable, durable_pipeline

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def exclusive(
    connection: Redis, key: str, seconds: int, owner: str | None = None, durable: bool = False
) -> Iterator[bool]:
    """Hold `key` for at most `seconds` (make it outlast the job's time-out); yields whether we got it.

    An `owner` (a job id) also gets a lock that it holds already: the lock of a run cut short, which
    the same job, run again after its worker died, takes over instead of waiting for it to expire.
    A `durable` lock, with durable_replicas set, is held only once the replicas have it (and with it
    every write before it, the job's own dequeue included): NotDurable otherwise, the lock let go."""
    token = owner or os.urandom(8).hex()
    if durable:
        acquired = take_durably(connection, key, token, seconds)
    else:
        acquired = bool(connection.eval(ACQUIRE, 1, key, token, seconds))
    try:
        yield acquired
    finally:
        if acquired:
            connection.eval(RELEASE, 1, key, token)  # not a lock that expired and went to someone else


def take_durably(connection: Redis, key: str, token: str, seconds: int) -> bool:
    acquired = False
    try:
        with durable_pipeline(connection, f"the lock {key}", transaction=False) as pipe:
            pipe.eval(ACQUIRE, 1, key, token, seconds)
            acquired = bool(pipe.execute()[0])
    except NotDurable:
        if not acquired:
            return False  # someone else's lock: nothing of ours to lose
        with suppress(RedisError):  # a lock we can't let go of now expires by itself
            connection.eval(RELEASE, 1, key, token)
        raise
    return acquired
