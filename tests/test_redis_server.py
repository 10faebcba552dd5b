"""The embedded Redis: loopback only, append-only persistence, refused where it cannot stand in."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ResponseError
from rq import Queue

from config import ToolkitError
from config.connection import answers
from launcher.redis_server import (
    RedisServer,
    check_free,
    embeddable_address,
    find_redis_server,
    free_port,
    open_to_the_network,
)
from tests.support import python


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


def test_the_embedded_server_refuses_the_commands_that_make_a_client_its_administrator(
    tmp_path: Path,
) -> None:
    """CONFIG SET dir + SAVE (a file where the client chooses), MODULE LOAD (code), DEBUG, ACL,
    REPLICAOF and MIGRATE are unknown commands there; what the toolkit uses works."""
    server = RedisServer(free_port(), tmp_path / "redis").start()
    client = Redis.from_url(server.url)
    try:
        refused = [
            ("CONFIG", "SET", "dir", str(tmp_path)),
            ("CONFIG", "GET", "*"),
            ("MODULE", "LOAD", "/tmp/evil.so"),
            ("DEBUG", "SLEEP", "0"),
            ("ACL", "SETUSER", "intruder", "on"),
            ("REPLICAOF", "127.0.0.1", "1"),
            ("SLAVEOF", "127.0.0.1", "1"),
            ("MIGRATE", "127.0.0.1", "1", "k", "0", "1000"),
        ]
        for command in refused:
            with pytest.raises(ResponseError, match="unknown command"):
                client.execute_command(*command)
        assert client.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v") == b"OK"
        assert Queue("default", connection=client).enqueue("jobs.demo.sleep", 0).get_status() == "queued"
    finally:
        server.stop()
    assert not any(tmp_path.glob("*.rdb"))


@pytest.mark.parametrize(
    ("url", "open_"),
    [
        ("redis://10.1.2.3:6379/0", True),
        ("rediss://cache.example.com:6380/0", True),
        ("redis://[2001:db8::1]:6379/0", True),
        ("redis://user@10.1.2.3/0", True),
        ("redis://:hunter2@10.1.2.3:6379/0", False),
        ("redis://10.1.2.3:6379/0?password=hunter2", False),
        ("redis://127.0.0.1:6379/0", False),
        ("redis://127.0.0.5:6379/0", False),
        ("redis://localhost/0", False),
        ("redis://[::1]:6379/0", False),
        ("unix:///run/redis.sock", False),
    ],
)
def test_a_redis_off_loopback_without_a_password_is_open(url: str, open_: bool) -> None:
    assert open_to_the_network(url) is open_


def test_up_refuses_an_open_redis_off_loopback_unless_told() -> None:
    done = python("cli.py", "up", "--no-dashboard", env={"REDIS_URL": "redis://192.0.2.1:6379/0"})
    assert done.returncode == 1
    assert "off loopback and has no password" in done.stderr and "--allow-open-redis" in done.stderr
    told = python(
        "cli.py", "up", "--allow-open-redis", "--no-dashboard", env={"REDIS_URL": "redis://192.0.2.1:6379/0"}
    )
    assert told.returncode == 1 and "off loopback and has no password" not in told.stderr


def test_a_port_is_free_again_while_a_stopped_servers_connections_wait_out_time_wait() -> None:
    """The parts' servers bind with SO_REUSEADDR; the check must too, or `up` refuses to start for a
    minute after a restart (the mail sink's closed connections in TIME_WAIT)."""
    port = free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    with pytest.raises(ToolkitError, match="is not free"):
        check_free("127.0.0.1", port, "mail sink", "RQKIT_SMTP_SINK_PORT")  # it listens
    accepted.close()  # the server closes first: its side of the connection waits in TIME_WAIT
    client.close()
    server.close()
    check_free("127.0.0.1", port, "mail sink", "RQKIT_SMTP_SINK_PORT")
