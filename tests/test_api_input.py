"""What the api jobs would refuse when run is refused at enqueue, in one line; any input gives either
acceptance or a JobInputError (never a traceback), and what is accepted runs (fuzzed with hypothesis)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from redis import Redis

from jobs import get_spec, submit
from jobs.api import STORE_NAME, call_api, deliver_webhook
from jobs.errors import JobInputError, RejectedError
from tests.support import run

BASE = "http://127.0.0.1:8/"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPServer]:
    """Answers 200 to anything on 127.0.0.1, the only allowed host."""
    http = HTTPServer(host="127.0.0.1", port=0)
    http.start()
    http.expect_request(re.compile(".*")).respond_with_data("ok")
    monkeypatch.setenv("RQKIT_API_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("RQKIT_SECRET_HOOK", "whsec-1")
    yield http
    http.clear()
    http.stop()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("GET", " " + BASE), {}, "printable ASCII, without blanks"),
        (("GET", BASE + "\r\n"), {}, "printable ASCII, without blanks"),
        (("GET", "http://127.0.0.1:99999/"), {}, "Port out of range"),
        (("GET", "http://127.0.0.1:0/"), {}, "a port in 1-65535"),
        (("GET", "http://127.0.0.1:+80/"), {}, "not a valid URL"),
        (("GET", "http://[127.0.0.1]/"), {}, "not a valid URL"),
        (("GET", "http://127.0.0.1\\@example.com/"), {}, "without blanks"),
        (("GET", "http://user:pw@127.0.0.1/"), {}, "can't carry credentials"),
        (("GET", "http://127.0.0.1/é"), {}, "printable ASCII"),
        (("GET", BASE), {"headers": {"X Trace": "a"}}, "not a header name"),
        (("GET", BASE), {"headers": {"Content-Length": "5"}}, "not a header name"),
        (("GET", BASE), {"headers": {"X-Trace": "café"}}, "a one-line value in printable ASCII"),
        (("GET", BASE), {"headers": {"X-Trace": " a"}}, "without blanks at its ends"),
        (("GET", BASE), {"secret_headers": {"X Key": "K"}}, "not a header name"),
        (("GET", BASE), {"secret_headers": {"X-Key": "K\n"}}, "a secret is named by NAME"),
        (("GET", BASE), {"idempotency_key": "clé"}, "idempotency_key must be a one-line value (not empty)"),
        (("GET", BASE), {"params": {"q": "\ud800"}}, "UTF-8"),
        (("POST", BASE), {"json": {"s": "x"}, "store_as": "a b"}, "store_as must be"),
        (("get ", BASE), {}, "method must be one of"),
    ],
)
def test_bad_calls_are_refused_at_enqueue(
    connection: Redis, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobInputError, match=re.escape(message)):
        submit("api-call", args, kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((BASE, "paid\n", {}, "HOOK"), "event must be a one-line name (not empty)"),
        ((BASE, "payé", {}, "HOOK"), "event must be a one-line name (not empty)"),
        ((BASE, "", {}, "HOOK"), "event must be a one-line name (not empty)"),
        ((BASE, "paid", {}, "HOOK\n"), "a secret is named by NAME"),
        ((" " + BASE, "paid", {}, "HOOK"), "printable ASCII, without blanks"),
    ],
)
def test_bad_webhooks_are_refused_at_enqueue(connection: Redis, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(JobInputError, match=re.escape(message)):
        submit("webhook", args)


def test_the_cli_says_one_line_and_exits_2() -> None:
    result = run("enqueue", "api-call", "GET", "http://[127.0.0.1]/")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not a valid URL" in result.output


def test_store_as_writes_under_its_own_prefix_only(server: HTTPServer, connection: Redis) -> None:
    connection.set("comment/total_word_count", 5)
    for name in ("comment/total_word_count", "rq:queue:api", "rqkit:metrics:runs"):
        call_api("GET", server.url_for("/x"), store_as=name)
        assert connection.get(f"rqkit:api:store:{name}") == b'"ok"'
    assert connection.get("comment/total_word_count") == b"5" and connection.type("rq:queue:api") == b"none"
    for bad in ("../x", "a\nb", "*", "", ":x", "x" * 201):
        with pytest.raises(JobInputError, match="store_as must be 1 to 200"):
            submit("api-call", ("GET", server.url_for("/x")), {"store_as": bad})


TEXT = st.one_of(st.text(max_size=30), st.text(alphabet="aZ09-_.:/ \t\r\n?#@%[]\\é", max_size=20))
PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
TOKEN = st.text(alphabet="Xa0-!#$%&'*+.^_`|~", min_size=1, max_size=8)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ANY = st.one_of(TEXT, st.lists(TEXT, max_size=3), st.dictionaries(TEXT, TEXT, max_size=3), JSONISH)


def either(likely: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly something likely to pass (so that many calls run), else anything at all."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda pick: likely if pick else ANY)


def urls(server: HTTPServer) -> st.SearchStrategy[Any]:
    tail = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20) | TEXT
    return either(st.builds(lambda path: server.url_for("/") + path, tail))


def accepted(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The enqueue-time check's verdict; anything but a JobInputError fails the test."""
    try:
        get_spec(name).validate(args, kwargs)
    except JobInputError as exc:
        assert "\n" not in str(exc)
        return False
    return True


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_any_call_is_refused_in_one_line_or_runs(server: HTTPServer, data: st.DataObject) -> None:
    method = data.draw(either(st.sampled_from(["GET", "post", "HEAD", "DELETE", "OPTIONS", "PATCH"])))
    url = data.draw(urls(server))
    kwargs = {
        "json": data.draw(st.none() | JSONISH),
        "params": data.draw(either(st.none() | st.dictionaries(TEXT, TEXT, max_size=3))),
        "headers": data.draw(either(st.none() | st.dictionaries(TOKEN, PRINTABLE, max_size=3))),
        "idempotency_key": data.draw(either(st.none() | PRINTABLE)),
        "store_as": data.draw(either(st.none() | st.from_regex(STORE_NAME, fullmatch=True))),
    }
    if accepted("api-call", (method, url), kwargs):
        assert call_api(method, url, **kwargs)["status"] == 200


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_any_webhook_is_refused_in_one_line_or_runs(server: HTTPServer, data: st.DataObject) -> None:
    event, secret_name = data.draw(either(PRINTABLE)), data.draw(either(st.just("HOOK")))
    args = (data.draw(urls(server)), event, data.draw(JSONISH), secret_name)
    if not accepted("webhook", args, {}):
        return
    if secret_name == "HOOK":
        assert deliver_webhook(*args)["status"] == 200
    else:  # a well-formed name the worker's environment lacks: refused where the job runs, by name
        with pytest.raises(
            RejectedError, match=re.escape(f"the secret RQKIT_SECRET_{secret_name} is not set")
        ):
            deliver_webhook(*args)
