"""Jobs queued before the layout changed still run: plain RQ enqueues each job function, and the
schedule's trigger, by the dotted path that Redis holds for them, and a worker runs it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from redis import Redis
from rq import Queue
from sqlalchemy import Engine

from ops.outcomes import wait_for
from tests.conftest import Media
from tests.pictures import photo
from tests.smtp_servers import smtp_server


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch, media: Media, engine: Engine) -> Iterator[HTTPServer]:
    """An SMTP server, an HTTP server, a webhook secret, a photo in the media root and a database."""
    photo(media.root / "cat.jpg")
    monkeypatch.setenv("RQKIT_SECRET_HOOK", "s3cret")
    http = HTTPServer(host="127.0.0.1", port=0)
    http.start()
    http.expect_request("/status").respond_with_json({"ok": True})
    http.expect_request("/hook", method="POST").respond_with_data("", 204)
    with smtp_server("none") as mail:
        monkeypatch.setenv("RQKIT_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("RQKIT_SMTP_PORT", str(mail.port))
        monkeypatch.setenv("RQKIT_SMTP_SECURITY", "none")
        yield http
    http.stop()


def test_jobs_queued_by_their_stored_paths_run(
    connection: Redis, services: HTTPServer, run_jobs: Any
) -> None:
    calls: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
        ("default", "jobs.demo.sleep", (0,), {}),
        ("images", "jobs.images.thumbnail", ("cat.jpg",), {}),
        ("email", "jobs.email.send_email", (["a@example.com"], "Hi"), {"text": "Hello"}),
        ("api", "jobs.api.call_api", ("GET", services.url_for("/status")), {}),
        ("api", "jobs.api.deliver_webhook", (services.url_for("/hook"), "paid", {"id": 7}, "HOOK"), {}),
        ("maintenance", "jobs.maintenance.expire_sessions", (), {}),
        ("maintenance", "jobs.maintenance.sweep_cache", (), {}),
        ("maintenance", "jobs.tags.prune_tags", (), {}),
        ("maintenance", "jobs.stats.word_count", ("comment",), {}),
        ("maintenance", "scheduler.periodic.fire", ("gone", 0), {}),
    ]
    queued = {
        path: Queue(queue, connection=connection).enqueue(path, *args, **kwargs)
        for queue, path, args, kwargs in calls
    }
    run_jobs()
    outcomes = {path: wait_for(job, timeout=10) for path, job in queued.items()}
    assert {path: (o.status, o.reason) for path, o in outcomes.items()} == {
        path: ("finished", None) for path in queued
    }
    assert outcomes["scheduler.periodic.fire"].result["status"] == "removed"
