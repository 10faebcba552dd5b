"""Redis session stores and cache targets never delete or touch RQ's keys (`rq:`) or the toolkit's
(`rqkit:`), whatever their prefix or pattern: a real Redis holding real jobs, no mocks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker

from jobs import enqueue
from jobs.errors import JobInputError
from jobs.maintenance import expire_sessions, sweep_cache
from jobs.submission import submit

PREFIXES = ["rq", "r", "", "*", "rqkit", "[r]q", "?q", "r\\", "rq\\:", "[^x]q"]


def reserved_keys(connection: Redis) -> dict[bytes, Any]:
    """Every key of RQ and of the toolkit, with its value (DUMP) and TTL."""
    keys = [k for k in connection.scan_iter(count=1000) if k.startswith((b"rq:", b"rqkit:"))]
    return {key: (connection.dump(key), connection.ttl(key) > 0) for key in keys}


def queues_and_jobs(connection: Redis) -> dict[bytes, Any]:
    """Real jobs, finished and queued, tagged, with toolkit keys beside; their keys."""
    for _ in range(3):
        submit("sleep", (0,), tags=["nightly"])
    SimpleWorker(["default"], connection=connection).work(burst=True)
    for _ in range(3):
        enqueue("sleep", 0)
    past = datetime.now(UTC).timestamp() - 60
    connection.hset("rqkit:email:sent:abc", mapping={"expires": past, "timeout": 1})
    connection.set("rqkit:x", "no ttl")
    keys = reserved_keys(connection)
    assert len(keys) > 10 and any(k.startswith(b"rq:job:") for k in keys)
    return keys


def sessions(connection: Redis, prefix: str, reserved: dict[bytes, Any]) -> tuple[set[bytes], set[bytes]]:
    """Expired and live sessions under `prefix` (hashes with `expires`, listed in an index); the index
    also lists, as expired, every reserved key under the prefix; look-alikes of the prefix as a glob."""
    now = datetime.now(UTC).timestamp()
    index = f"{prefix}index"
    expired, live = set(), set()
    for i in range(20):
        key = f"{prefix}s{i}"
        expiry = now - 60 if i % 2 else now + 3600
        connection.hset(key, mapping={"expires": expiry})
        connection.zadd(index, {f"s{i}": expiry})
        (expired if i % 2 else live).add(key.encode())
    for key in reserved:
        if key.startswith(prefix.encode()):
            connection.zadd(index, {key[len(prefix) :]: now - 60})
    for look_alike in ("rq-other", "x", "rqa"):
        if not look_alike.startswith(prefix):
            connection.hset(look_alike, mapping={"expires": now - 60})
    return expired, live


@pytest.mark.parametrize("style", ["index", "expiry_field"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_redis_session_store_deletes_only_its_own_expired_sessions(
    prefix: str, style: str, connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = {"index": f"{prefix}index"} if style == "index" else {"expiry_field": "expires"}
    store = {"kind": "redis", "prefix": prefix} | rule
    monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps({"s": store}))
    monkeypatch.setenv("RQKIT_MAINTENANCE_BATCH_SIZE", "7")
    reserved = queues_and_jobs(connection)
    expired, live = sessions(connection, prefix, reserved)
    before = set(connection.scan_iter(count=1000))
    dry = expire_sessions("s", dry_run=True)
    assert dry["would_delete"] == len(expired) and set(connection.scan_iter(count=1000)) == before
    report = expire_sessions("s")
    assert reserved_keys(connection) == reserved
    assert report["deleted"] == len(expired)
    assert set(connection.scan_iter(count=1000)) == before - expired
    assert live <= before - expired


@pytest.mark.parametrize("pattern", ["rq*", "r*", "*", "?q*", "[r]*", "*:*", "rqkit*", "[^x]q*"])
def test_a_redis_cache_target_never_sweeps_reserved_keys(
    pattern: str, connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = {"kind": "redis", "pattern": pattern, "no_ttl": True}
    monkeypatch.setenv("RQKIT_CACHE_TARGETS", json.dumps({"c": target}))
    reserved = queues_and_jobs(connection)
    connection.set("rq-cache:1", "no ttl")
    connection.set("rqcache", "no ttl")
    connection.set("rqkitten", "no ttl")
    dry = sweep_cache("c", dry_run=True)["targets"][0]
    assert reserved_keys(connection) == reserved
    assert connection.exists("rq-cache:1", "rqcache", "rqkitten") == 3
    report = sweep_cache("c")["targets"][0]
    assert reserved_keys(connection) == reserved
    assert report["deleted"] == dry["would_delete"] >= 1


@pytest.mark.parametrize(
    "pattern", ["rq:*", "rqkit:*", "[r]q:*", "rq\\:*", "r[q]:job:*", "[r][q]kit:x", "rq:"]
)
def test_a_pattern_that_only_reaches_reserved_keys_is_refused(
    pattern: str, connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = {"kind": "redis", "pattern": pattern, "no_ttl": True}
    monkeypatch.setenv("RQKIT_CACHE_TARGETS", json.dumps({"c": target}))
    reason = r"cache target 'c': every key pattern .* matches is RQ's or the toolkit's own \(rq:, rqkit:\)"
    with pytest.raises(JobInputError, match=reason):
        enqueue("sweep-cache", "c")
    with pytest.raises(JobInputError, match=reason):
        sweep_cache("c")


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ({"prefix": "rq:"}, "every key under prefix 'rq:' is RQ's or the toolkit's own"),
        ({"prefix": "rqkit:sess:"}, "every key under prefix 'rqkit:sess:' is RQ's or the toolkit's own"),
        ({"prefix": "s:", "index": "rq:wip:default"}, "index 'rq:wip:default' is RQ's or the toolkit's"),
    ],
)
def test_a_store_that_only_reaches_reserved_keys_is_refused(
    store: dict[str, str], reason: str, connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"kind": "redis", "expiry_field": "expires"} | store
    monkeypatch.setenv("RQKIT_SESSION_STORES", json.dumps({"s": config}))
    with pytest.raises(JobInputError, match=f"session store 's': {reason}"):
        enqueue("expire-sessions", "s")
    with pytest.raises(JobInputError, match=f"session store 's': {reason}"):
        expire_sessions("s")
