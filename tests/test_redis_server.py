"""The embedded Redis: loopback only, append-only persistence, refused where it cannot stand in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from config import ToolkitError
from config.connection import answers
from launcher.redis_server import RedisServer, embeddable_address, find_redis_server, free_port


def test_a_redis_server_binary_is_found() -> None:
    assert os.access(find_redis_server(), os.X_OK)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6390/0", ("127.0.0.1", 6390)),
        ("redis://localhost/1", ("127.0.0.1", 6379)),
        ("redis://[::1]:6391", ("::1", 6391)),
    ],
)
def test_loopback_urls_can_be_embedded(url: str, address: tuple[str, int]) -> None:
    assert embeddable_address(url) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://cache.internal:6379/0", "only runs on loopback"),
        ("rediss://127.0.0.1:6379/0", "only runs on loopback"),
        ("redis://:pw@127.0.0.1:6379/0", "has no password"),
    ],
)
def test_other_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ToolkitError, match=message):
        embeddable_address(url)
    assert "pw" not in message


def test_queued_jobs_survive_a_restart(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path).start()
    try:
        job = Queue("default", connection=Redis.from_url(server.url)).enqueue("jobs.demo.sleep", 0)
    finally:
        server.stop()
    assert not answers(server.url)
    server.start()
    try:
        assert Queue("default", connection=Redis.from_url(server.url)).job_ids == [job.id]
    finally:
        server.stop()
