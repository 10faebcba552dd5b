"""A host name on the allow-list can't lead to a private address: the address actually connected to is
checked (DNS rebinding), on every redirect hop; an address on the allow-list itself is allowed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from redis import Redis
from werkzeug import Response

from config import get_settings
from jobs import enqueue
from jobs.api import call_api
from jobs.api_guard import CheckedAddresses, DisallowedHost
from ops.outcomes import wait_for


def serving(host: str) -> Iterator[HTTPServer]:
    http = HTTPServer(host=host, port=0)
    http.start()
    yield http
    http.clear()
    http.stop()


def allow(monkeypatch: pytest.MonkeyPatch, hosts: str) -> None:
    monkeypatch.setenv("RQKIT_API_ALLOWED_HOSTS", hosts)
    get_settings.cache_clear()


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    yield from serving("127.0.0.1")


@pytest.fixture
def second_loopback() -> Iterator[HTTPServer]:
    yield from serving("127.0.0.2")


def test_a_name_that_resolves_to_loopback_is_refused_unless_the_address_is_allowed(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    server.expect_request("/x").respond_with_data("ok")
    for name in ("localhost", socket.gethostname()):  # both resolve to 127.0.0.1 here
        url = f"http://{name}:{server.port}/x"
        allow(monkeypatch, name)
        with pytest.raises(DisallowedHost, match=f"{name} is at 127.0.0.1: not a public address"):
            call_api("GET", url)
        job = enqueue("api-call", "GET", url)  # allowed by name: refused when it connects, not retried
        run_jobs()
        assert f"{name} is at 127.0.0.1" in (wait_for(job, timeout=5).reason or "")
        job.refresh()
        assert job.retries_left == 0
        allow(monkeypatch, f"{name},127.0.0.1")
        assert call_api("GET", url)["body"] == "ok"
    assert len(server.log) == 2


def test_the_default_allow_list_keeps_working(server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RQKIT_API_ALLOWED_HOSTS", raising=False)
    server.expect_request("/x").respond_with_data("ok")
    assert call_api("GET", server.url_for("/x"))["body"] == "ok"
    assert call_api("GET", f"http://localhost:{server.port}/x")["body"] == "ok"


def test_every_redirect_hop_is_checked_where_it_connects(
    second_loopback: HTTPServer, server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """127.0.0.2 allowed by address; `localhost` allowed by name only: a redirect there is refused."""
    allow(monkeypatch, "127.0.0.2,localhost")
    server.expect_request("/target").respond_with_data("secret admin page")
    location = f"http://localhost:{server.port}/target"
    second_loopback.expect_request("/hop").respond_with_response(
        Response("", status=302, headers={"Location": location})
    )
    with pytest.raises(DisallowedHost, match="localhost is at 127.0.0.1"):
        call_api("GET", second_loopback.url_for("/hop"))
    assert server.log == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.1.2.3",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12::1",
        "fe80::1",
        "fe80::1%lo",
        "ff02::1",
        "ff0e::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_addresses_that_are_not_public_are_refused_unless_allowed(address: str) -> None:
    assert not CheckedAddresses(["localhost", "api.example.com"]).permits(address)
    assert CheckedAddresses([address.split("%")[0]]).permits(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_are_permitted(address: str) -> None:
    assert CheckedAddresses(["api.example.com"]).permits(address)
