"""The api-call and webhook jobs against a real HTTP server on loopback (pytest-httpserver)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pytest_httpserver import HTTPServer
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from werkzeug import Request, Response

from cli import cli
from config import get_settings
from jobs import enqueue, submit, submit_many
from jobs.api import verify_signature
from jobs.errors import JobInputError
from ops.outcomes import wait_for
from tests.support import start_python


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPServer]:
    """A threaded HTTP server on 127.0.0.1, the only allowed host; retries immediate, time-outs short."""
    http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    http.start()
    monkeypatch.setenv("RQKIT_API_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("RQKIT_API_BACKOFF_SECONDS", "0")
    monkeypatch.setenv("RQKIT_API_MAX_RETRIES", "3")
    monkeypatch.setenv("RQKIT_API_READ_TIMEOUT", "0.5")
    yield http
    http.clear()
    http.stop()


class Recorder:
    """A handler that answers from a script (the last answer repeats) and records each request."""

    def __init__(self, *answers: Response, delays: tuple[float, ...] = ()) -> None:
        self.answers, self.delays = list(answers), list(delays)
        self.requests: list[tuple[float, Request, bytes]] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append((time.monotonic(), request, request.get_data()))
        if self.delays:
            time.sleep(self.delays.pop(0))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def route(server: HTTPServer, path: str, recorder: Recorder, method: str = "GET") -> str:
    server.expect_request(path, method=method).respond_with_handler(recorder)
    return server.url_for(path)


def ran(run_jobs: Any, job: Any) -> Any:
    run_jobs()
    outcome = wait_for(job, timeout=10)
    job.refresh()
    return outcome


def test_a_call_returns_the_response_and_stores_the_body(
    server: HTTPServer, connection: Redis, run_jobs: Any
) -> None:
    recorder = Recorder(Response(json.dumps({"ok": True, "items": [1, 2]}), content_type="application/json"))
    url = route(server, "/status", recorder)
    outcome = ran(run_jobs, enqueue("api-call", "GET", url, params={"q": "x"}, store_as="cache/status"))
    assert outcome.result == {
        "status": 200,
        "headers": {"content-type": "application/json", "content-length": "29"},
        "body": {"ok": True, "items": [1, 2]},
        "truncated": False,
    }
    assert json.loads(connection.get("rqkit:api:store:cache/status") or b"") == {"ok": True, "items": [1, 2]}
    assert 3500 < connection.pttl("rqkit:api:store:cache/status") <= 3600 * 1000
    [(_, request, _)] = recorder.requests
    assert request.args["q"] == "x" and request.headers["User-Agent"].startswith("rqkit/")
    assert "Idempotency-Key" not in request.headers  # GET is idempotent already


def test_a_500_is_retried_with_the_same_idempotency_key(server: HTTPServer, run_jobs: Any) -> None:
    recorder = Recorder(Response("boom", status=500), Response('{"id": 9}', content_type="application/json"))
    url = route(server, "/charges", recorder, "POST")
    job = enqueue("api-call", "POST", url, json={"amount": 100})
    outcome = ran(run_jobs, job)
    assert (outcome.status, outcome.result["body"]) == ("finished", {"id": 9})
    keys = [request.headers["Idempotency-Key"] for _, request, _ in recorder.requests]
    assert keys == [f"rqkit-{job.id}"] * 2
    assert [json.loads(body) for _, _, body in recorder.requests] == [{"amount": 100}] * 2


def test_a_404_fails_at_once_with_the_status_and_an_excerpt(server: HTTPServer, run_jobs: Any) -> None:
    recorder = Recorder(Response("no such customer\n  cus_42", status=404))
    url = route(server, "/customers/42", recorder)
    job = enqueue("api-call", "GET", url)
    outcome = ran(run_jobs, job)
    assert outcome.reason == f"RejectedError: api: GET {url}: 404 NOT FOUND: no such customer cus_42"
    assert len(recorder.requests) == 1 and job.retries_left == 0


def test_a_time_out_is_retried(server: HTTPServer, run_jobs: Any) -> None:
    recorder = Recorder(Response("late"), delays=(1.0,))
    url = route(server, "/slow", recorder)
    outcome = ran(run_jobs, enqueue("api-call", "GET", url))
    assert outcome.status == "finished" and outcome.result["body"] == "late"
    assert len(recorder.requests) == 2


def test_retries_run_out_on_a_server_that_keeps_failing(server: HTTPServer, run_jobs: Any) -> None:
    recorder = Recorder(Response("still down", status=503))
    url = route(server, "/down", recorder)
    outcome = ran(run_jobs, enqueue("api-call", "GET", url))
    assert outcome.reason == f"UpstreamError: api: GET {url}: 503 SERVICE UNAVAILABLE: still down"
    assert len(recorder.requests) == 4  # the first attempt and 3 retries


def test_a_429_waits_as_long_as_retry_after_asks(
    server: HTTPServer, connection: Redis, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(Response("slow down", status=429, headers={"Retry-After": "2"}), Response("ok"))
    url = route(server, "/limited", recorder)
    start_worker("api", "--with-scheduler")
    outcome = wait_for(enqueue("api-call", "GET", url), timeout=30)
    assert outcome.status == "finished"
    first, second = (when for when, _, _ in recorder.requests)
    assert second - first >= 2.0


def test_hosts_off_the_allow_list_are_refused_and_so_are_redirects_to_them(
    server: HTTPServer, connection: Redis, run_jobs: Any
) -> None:
    with pytest.raises(JobInputError, match="host localhost is not allowed"):
        submit("api-call", ("GET", server.url_for("/x").replace("127.0.0.1", "localhost")))
    elsewhere = server.url_for("/target").replace("127.0.0.1", "localhost")
    recorder = Recorder(Response("", status=302, headers={"Location": elsewhere}))
    job = enqueue("api-call", "GET", route(server, "/hop", recorder))
    outcome = ran(run_jobs, job)
    assert outcome.reason == "DisallowedHost: api: host localhost is not allowed (RQKIT_API_ALLOWED_HOSTS)"
    assert job.retries_left == 0 and len(recorder.requests) == 1


def test_secret_headers_come_from_the_environment_and_stay_out_of_results(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    monkeypatch.setenv("RQKIT_SECRET_CRM", "Bearer tok-123")
    recorder = Recorder(Response("{}", content_type="application/json"))
    job = enqueue("api-call", "GET", route(server, "/me", recorder), secret_headers={"Authorization": "CRM"})
    outcome = ran(run_jobs, job)
    assert recorder.requests[0][1].headers["Authorization"] == "Bearer tok-123"
    assert "tok-123" not in json.dumps(outcome.result) + (job.description or "") + json.dumps(job.kwargs)
    monkeypatch.delenv("RQKIT_SECRET_CRM")
    missing = ran(
        run_jobs, enqueue("api-call", "GET", route(server, "/me", recorder), secret_headers={"A": "CRM"})
    )
    assert missing.reason == "RejectedError: api: the secret RQKIT_SECRET_CRM is not set where the job runs"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("FETCH", "http://127.0.0.1/"), {}, "method must be one of"),
        (("GET", "ftp://127.0.0.1/x"), {}, "not an http\\(s\\) URL"),
        (("GET", "http://example.com/"), {}, "host example.com is not allowed"),
        (("GET", "http://127.0.0.1/"), {"headers": {"X": "a\r\nB: c"}}, "must be a one-line value"),
        (("GET", "http://127.0.0.1/"), {"headers": {"X": 1}}, "headers must map names to strings"),
        (
            ("GET", "http://127.0.0.1/"),
            {"secret_headers": {"Authorization": "lower"}},
            "a secret is named by NAME",
        ),
        (("GET", "http://127.0.0.1/"), {"store_as": ""}, "store_as must be 1 to 200"),
    ],
)
def test_bad_calls_are_refused_at_enqueue(
    server: HTTPServer, connection: Redis, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobInputError, match=message):
        submit("api-call", args, kwargs)


def test_a_webhook_is_signed_and_the_receiver_can_verify_it(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    monkeypatch.setenv("RQKIT_SECRET_SHOP", "whsec-abc")
    verdicts = []

    def receiver(request: Request) -> Response:
        headers, body = request.headers, request.get_data()
        valid = verify_signature(
            b"whsec-abc", headers["X-Rqkit-Timestamp"], body, headers["X-Rqkit-Signature"]
        )
        verdicts.append((valid, headers["X-Rqkit-Event"], json.loads(body)))
        return Response("thanks" if valid else "bad signature", status=200 if valid else 401)

    server.expect_request("/hooks", method="POST").respond_with_handler(receiver)
    url = server.url_for("/hooks")
    assert ran(run_jobs, enqueue("webhook", url, "order.paid", {"id": 7}, "SHOP")).status == "finished"
    monkeypatch.setenv("RQKIT_SECRET_SHOP", "not-the-receivers-secret")
    forged = ran(run_jobs, enqueue("webhook", url, "order.paid", {"id": 8}, "SHOP"))
    assert forged.reason == f"RejectedError: api: POST {url}: 401 UNAUTHORIZED: bad signature"
    assert verdicts == [
        (True, "order.paid", {"event": "order.paid", "payload": {"id": 7}}),
        (False, "order.paid", {"event": "order.paid", "payload": {"id": 8}}),
    ]


def test_a_webhook_is_described_in_json_in_redis_and_on_the_command_line(
    server: HTTPServer, connection: Redis
) -> None:
    """What `rq info`, the dashboard and `enqueue` show: the payload as JSON, not as a Python dict."""
    url = server.url_for("/hooks")
    payload = '{"id": 7, "paid": true, "note": null}'
    args = ["enqueue", "webhook", url, "order.paid", "--payload", payload, "--secret", "SHOP"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [job] = Queue("api", connection=connection).jobs
    described = f'webhook "{url}" "order.paid" {payload} "SHOP"'
    assert job.description == described
    assert result.stdout == f"{described}: queued as job {job.id} on api\n"


def test_a_call_over_the_rate_limit_is_deferred_to_its_slot_without_using_a_retry(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    # One every 10 s: the second call's slot is more than a second away (so deferred, not slept on)
    # however slowly a busy machine gets from the first call to the second.
    monkeypatch.setenv("RQKIT_API_RATE_LIMITS", "127.0.0.1=6/m")
    recorder = Recorder(Response("ok"))
    url = route(server, "/slow-lane", recorder)
    first, second = (enqueue("api-call", "GET", url) for _ in range(2))
    run_jobs()
    assert wait_for(first, timeout=5).status == "finished"
    second.refresh()
    assert second.get_status() == JobStatus.SCHEDULED and second.retries_left == 3
    assert "rqkit_slot" in second.get_meta()
    assert len(recorder.requests) == 1


def test_two_workers_share_a_rate_limit(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    rate, calls = 10, 40
    monkeypatch.setenv("RQKIT_API_RATE_LIMITS", f"127.0.0.1={rate}/s")
    recorder = Recorder(Response("ok"))
    url = route(server, "/paced", recorder)
    jobs, _ = submit_many("api-call", [("GET", url)] * calls)
    workers = [
        start_python("-m", "rq.cli", "worker", "-c", "config.rq", "--burst", "--quiet", "api")
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(60) == 0
    times = sorted(when for when, _, _ in recorder.requests)
    assert len(times) == calls and all(job.get_status() == "finished" for job in jobs)  # the work completes
    # The limit bounds the pace from above only: a busy machine may make the calls slower, never faster.
    # Each call goes out at its reserved slot or later, one slot every 1/rate s across both workers, so
    # the calls span at least (calls - 1) / rate s, less the first call's own way to the server (allowed
    # up to 0.5 s). Two workers limited each on its own would take half that; unlimited, far less.
    assert times[-1] - times[0] >= (calls - 1) / rate - 0.5, times[-1] - times[0]


def test_the_cli_builds_the_call(server: HTTPServer, connection: Redis) -> None:
    url = server.url_for("/v1/contacts")
    args = [
        "enqueue",
        "api-call",
        "post",
        url,
        "--data",
        '{"name": "Ann"}',
        "--param",
        "dry=1",
        "--header",
        "X-Trace: abc",
        "--secret-header",
        "Authorization=CRM",
        "--key",
        "k-1",
        "--store-as",
        "crm/ann",
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [job] = Queue("api", connection=connection).jobs
    assert list(job.args) == ["POST", url]
    assert job.kwargs == {
        "json": {"name": "Ann"},
        "params": {"dry": "1"},
        "headers": {"X-Trace": "abc"},
        "secret_headers": {"Authorization": "CRM"},
        "idempotency_key": "k-1",
        "store_as": "crm/ann",
    }
    for bad, message in (
        (["--data", "{nope"], "--data: not JSON"),
        (["--header", "X-Trace"], "expected NAME:VALUE"),
    ):
        refused = CliRunner().invoke(cli, ["enqueue", "api-call", "GET", url, *bad])
        assert refused.exit_code == 2 and message in refused.output


def test_retry_after_reads_seconds_and_http_dates() -> None:
    from email.utils import format_datetime

    from jobs.api_pacing import retry_after

    def asking(value: str) -> float | None:
        return retry_after(httpx.Headers({"Retry-After": value}))

    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert asking("7") == 7.0 and asking("999999") == 24 * 3600
    assert 55 < (asking(in_a_minute) or 0) <= 60
    assert asking("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and asking("soon") is None
    assert asking("Wed, 21 Oct 2015 07:28:00 -0000") == 0.0  # parses naive: read as UTC, not a crash


def test_backoff_has_jitter_within_its_ceiling() -> None:
    from config import load_settings
    from jobs.api_pacing import backoff

    settings = load_settings(
        {"RQKIT_API_BACKOFF_SECONDS": "2", "RQKIT_API_BACKOFF_MAX": "10", "RQKIT_CONFIG": ""}
    )
    waits = {backoff(settings) for _ in range(50)}
    assert all(1 <= wait <= 2 for wait in waits) and len(waits) > 1  # no job: the first attempt, 2 s at most


def test_hardening_from_review(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    assert verify_signature(b"s", "not-a-time", b"{}", "sha256=00") is False
    big = Recorder(Response("x" * 5000))
    monkeypatch.setenv("RQKIT_API_MAX_BODY_KB", "1")
    get_settings.cache_clear()
    outcome = ran(run_jobs, enqueue("api-call", "GET", route(server, "/big", big)))
    assert outcome.result["truncated"] is True and len(outcome.result["body"]) == 1024
    monkeypatch.setenv("RQKIT_SECRET_K", "key-1")
    hop = Recorder(Response("", status=302, headers={"Location": server.url_for("/elsewhere")}))
    kept = ran(
        run_jobs, enqueue("api-call", "GET", route(server, "/hop", hop), secret_headers={"X-Api-Key": "K"})
    )
    assert kept.result["status"] == 302 and len(hop.requests) == 1  # not followed: the key stays here


def test_allowed_hosts_are_case_insensitive(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> None:
    monkeypatch.setenv("RQKIT_API_ALLOWED_HOSTS", "API.Example.com")
    submit("api-call", ("GET", "https://api.example.com/v1"))
    assert Queue("api", connection=connection).count == 1
