"""A secret echoed by the server (as is, URL-encoded, base64, escaped) is kept nowhere: not in the
result, the failure reason, any Redis key or the worker's log (a real `rq worker` against a real HTTP
server on loopback)."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from pytest_httpserver import HTTPServer
from redis import Redis
from werkzeug import Request, Response

from jobs import enqueue
from jobs.api_guard import Redactor
from ops.outcomes import wait_for

TOKEN = "tok-S3cr3t/+=?&"
SECRET = f"Bearer {TOKEN}"
HOOK_SECRET = "whsec-Ab/cd+ef=="


def forms(value: str) -> list[str]:
    """The forms a test looks for: as is, URL-encoded (both ways), base64."""
    return [value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()]


def echoes(value: str) -> str:
    return " ".join([*forms(value), json.dumps(value, ensure_ascii=True), value.upper()])


def echoing(request: Request) -> Response:
    """Sends the Authorization header (or the webhook secret) back in the body, headers and reason."""
    sent = request.headers.get("Authorization") or HOOK_SECRET
    headers = {"X-Request-Id": sent, "Location": f"/next?t={quote(sent)}", "ETag": quote_plus(sent)}
    status = {"/ok": 200, "/json": 200, "/denied": 400, "/down": 503}[request.path]
    reason = f"{status} {sent}" if status >= 400 else status
    if request.path == "/json":
        body = json.dumps({"you": sent, sent: [quote(sent), {"b64": echoes(sent)}], "\\u": "\\" + sent})
        return Response(body, status=reason, headers=headers, content_type="application/json")
    return Response(f"you sent {echoes(sent)}", status=reason, headers=headers)


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPServer]:
    http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    http.start()
    http.expect_request("/ok").respond_with_handler(echoing)
    for path in ("/json", "/denied", "/down"):
        http.expect_request(path).respond_with_handler(echoing)
    for name, value in {
        "RQKIT_API_ALLOWED_HOSTS": "127.0.0.1",
        "RQKIT_API_BACKOFF_SECONDS": "0",
        "RQKIT_API_MAX_RETRIES": "1",
        "RQKIT_SECRET_CRM": SECRET,
        "RQKIT_SECRET_HOOK": HOOK_SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    yield http
    http.clear()
    http.stop()


def everything_in(connection: Redis) -> bytes:
    """Every key and value in Redis, decompressed where RQ compresses (job data, exc_info)."""
    seen = []
    for key in connection.scan_iter(count=1000):
        values = values_of(connection, key, connection.type(key).decode())
        seen += [key, *values, *(decompressed(v) for v in values)]
    return b"\n".join(seen)


def values_of(connection: Redis, key: bytes, kind: str) -> list[bytes]:
    if kind == "string":
        return [connection.get(key) or b""]
    if kind == "hash":
        return [b for pair in connection.hgetall(key).items() for b in pair]
    if kind == "list":
        return list(connection.lrange(key, 0, -1))
    if kind == "set":
        return list(connection.smembers(key))
    if kind == "zset":
        return list(connection.zrange(key, 0, -1))
    assert kind == "stream", kind
    return [b for _, fields in connection.xrange(key) for pair in fields.items() for b in pair]


def decompressed(value: bytes) -> bytes:
    try:
        return zlib.decompress(value)
    except zlib.error:
        return b""


def assert_hidden(text: str | bytes, *secrets: str) -> None:
    data = text if isinstance(text, bytes) else text.encode()
    for secret in secrets:
        for form in {*forms(secret), *forms(TOKEN)}:
            assert form.encode() not in data, (form, data[data.find(form.encode()) - 200 :][:400])


def test_a_secret_the_server_echoes_is_kept_nowhere(
    echo: HTTPServer, connection: Redis, processes: Any, tmp_path: Path
) -> None:
    calls = {
        path: enqueue("api-call", "GET", echo.url_for(path), secret_headers={"Authorization": "CRM"})
        for path in ("/ok", "/json", "/denied", "/down")
    }
    calls["/stored"] = enqueue(
        "api-call", "GET", echo.url_for("/json"), secret_headers={"Authorization": "CRM"}, store_as="echo"
    )
    hooks = [enqueue("webhook", echo.url_for(path), "paid", {"id": 1}, "HOOK") for path in ("/ok", "/down")]
    log = tmp_path / "worker.log"
    worker = processes(
        "-m", "rq.cli", "worker", "-c", "config.rq", "--burst", "--logging_level", "DEBUG", "api", log=log
    )
    assert worker.wait(60) == 0
    outcomes = {path: wait_for(job, timeout=5) for path, job in calls.items()}
    hook_outcomes = [wait_for(job, timeout=5) for job in hooks]
    assert [o.status for o in outcomes.values()] == ["finished", "finished", "failed", "failed", "finished"]
    assert outcomes["/denied"].reason and "400" in outcomes["/denied"].reason
    assert outcomes["/json"].result["body"]["you"] == "[redacted]"
    assert [o.status for o in hook_outcomes] == ["finished", "failed"]
    assert connection.get("rqkit:api:store:echo")
    for outcome in [*outcomes.values(), *hook_outcomes]:
        assert_hidden(json.dumps(outcome.result) + str(outcome.reason), SECRET, HOOK_SECRET)
    assert_hidden(everything_in(connection), SECRET, HOOK_SECRET)
    assert "Job OK" in log.read_text() and "[redacted]" in log.read_text()
    assert_hidden(log.read_bytes(), SECRET, HOOK_SECRET)


def test_a_body_cut_in_a_secret_hides_its_start() -> None:
    redactor = Redactor([SECRET])
    assert redactor.text("x Bearer tok-S3c", cut=True) == "x [redacted]"
    assert redactor.text("x Bearer tok-S3c") == "x Bearer tok-S3c"  # whole bodies: only whole secrets
    assert redactor.text(f"a {quote(SECRET).lower()} b") == "a [redacted] b"
