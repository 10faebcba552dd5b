"""Session expiry and cache sweeps in Redis: SCAN in batches, and never a key of RQ or the toolkit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

from redis import Redis

from jobs.errors import JobInputError
from jobs.maintenance.report import Report
from jobs.maintenance.rules import GLOB_SPECIAL, RESERVED

# Delete (or, dry, count) a session only if still expired (the app may have renewed it). KEYS: the index,
# then the sessions' keys; ARGV: now, dry (1 or 0), then the sessions' ids.
EXPIRE_BY_INDEX = """local n = 0
for i = 2, #KEYS do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    if ARGV[2] == '0' then redis.call('UNLINK', KEYS[i]); redis.call('ZREM', KEYS[1], ARGV[i + 1]) end
    n = n + 1
  end
end
return n"""
# KEYS: candidate hashes; ARGV: the expiry field, now, dry (1 or 0). Other types, unreadable fields stay.
EXPIRE_BY_FIELD = """local n = 0
for _, key in ipairs(KEYS) do
  local expiry = redis.call('TYPE', key).ok == 'hash' and tonumber(redis.call('HGET', key, ARGV[1]))
  if expiry and expiry < tonumber(ARGV[2]) then
    if ARGV[3] == '0' then redis.call('UNLINK', key) end
    n = n + 1
  end
end
return n"""


def expire_by_index(config: dict[str, Any], connection: Redis, batch: int, report: Report) -> None:
    """Sessions (prefix + id) whose id the index scores as expired; a reserved key is passed over."""
    index, prefix, now = config["index"], config.get("prefix", "").encode(), time.time()
    if connection.type(index) not in (b"zset", b"none"):
        raise JobInputError(f"session store {report.target!r}: index {index!r} is not a sorted set")
    passed = 0  # expired entries left in the index, skipped from now on
    while ids := report.timed(partial(connection.zrangebyscore, index, "-inf", now, start=passed, num=batch)):
        report.examined += len(ids)
        report.batches += 1
        keys = own_keys([prefix + id_ for id_ in ids])
        own_ids, dry = [key[len(prefix) :] for key in keys], int(report.dry_run)
        script = partial(connection.eval, EXPIRE_BY_INDEX, 1 + len(keys), index, *keys, now, dry, *own_ids)
        report.deleted += report.timed(script)
        passed += len(ids) if report.dry_run else len(ids) - len(keys)


def expire_by_field(config: dict[str, Any], connection: Redis, batch: int, report: Report) -> None:
    """Hashes under the prefix (taken literally) whose expiry field is past."""
    prefix, args = config.get("prefix", ""), (config["expiry_field"], time.time(), int(report.dry_run))
    for found in scan_batches(connection, GLOB_SPECIAL.sub(r"\\\1", prefix) + "*", batch, report):
        if keys := own_keys(found, prefix.encode()):
            report.deleted += report.timed(partial(connection.eval, EXPIRE_BY_FIELD, len(keys), *keys, *args))


def own_keys(keys: list[bytes], prefix: bytes = b"") -> list[bytes]:
    """The keys that start with the prefix and are not RQ's or the toolkit's: the only ones touched."""
    return [key for key in keys if key.startswith(prefix) and not key.startswith(RESERVED)]


def sweep_redis(config: dict[str, Any], connection: Redis, batch: int, report: Report) -> None:
    """Keys matching `pattern` with no TTL (`no_ttl`) or idle longer than `max_idle_seconds`: UNLINK."""
    no_ttl, max_idle = bool(config.get("no_ttl")), config.get("max_idle_seconds")
    for found in scan_batches(connection, config["pattern"], batch, report):
        if not (keys := own_keys(found)):
            continue
        with connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
                pipe.object("idletime", key)
            answers = report.timed(pipe.execute)
        chosen = [
            key
            for key, ttl, idle in zip(keys, answers[0::2], answers[1::2], strict=True)
            if (no_ttl and ttl == -1)
            or (max_idle is not None and idle is not None and idle > float(max_idle))
        ]
        if chosen and not report.dry_run:  # UNLINK: freed in the background, never blocking Redis
            report.timed(partial(connection.unlink, *chosen))
        report.deleted += len(chosen)


def scan_batches(connection: Redis, pattern: str, batch: int, report: Report) -> Iterator[list[bytes]]:
    """SCAN (never KEYS) in steps of about `batch` keys."""
    cursor = 0
    while True:
        cursor, keys = report.timed(partial(connection.scan, cursor, match=pattern, count=batch))
        report.batches += 1
        if keys:
            report.examined += len(keys)
            yield keys
        if cursor == 0:
            return
