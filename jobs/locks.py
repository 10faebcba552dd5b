"""A Redis lock that only its holder can release: one run at a time of a sweep, one send of a message."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def exclusive(connection: Redis, key: str, seconds: int) -> Iterator[bool]:
    """Hold `key` for at most `seconds` (make it outlast the job's time-out); yields whether we got it."""
    token = os.urandom(8).hex()
    acquired = bool(connection.set(key, token, nx=True, ex=seconds))
    try:
        yield acquired
    finally:
        if acquired:
            connection.eval(RELEASE, 1, key, token)  # not a lock that expired and went to someone else
