"""The card's own setup, bare: `rq worker images email maintenance` (plus a worker on the other queues),
`rqscheduler` and `python cli.py ...`, nothing of the toolkit's launcher. Every job type works, and a
retry (an email's 4xx, an API's 429) runs, moved by the schedule's `release-due` since no worker runs
RQ's scheduler. Only the Redis URL comes from the environment (RQ_REDIS_URL, as the README says)."""

from __future__ import annotations

import json
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from redis import Redis
from werkzeug import Response

from launcher.redis_server import free_port
from tests.pictures import photo
from tests.smtp_servers import smtp_server
from tests.support import python, run_json, start_python, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A due job waits for bare rqscheduler's next look (every 60 s), which runs `release-due`; the README
# says "within about a minute, two at most". Not a speed test: this only bounds the wait.
RETRY_BOUND = 180


@pytest.fixture
def bare(
    connection: Redis, processes: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """The bare processes, with an SMTP server that answers 451 once to retry@example.com and an HTTP
    server that answers 429 once on /limited; what the test needs of them."""
    media = tmp_path / "media"
    media.mkdir()
    environment = {
        "RQKIT_MEDIA_ROOT": str(media),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'content.db'}",
        "RQKIT_EMAIL_RETRY_INTERVALS": "1",
        "RQKIT_SMTP_SECURITY": "none",
        "RQKIT_API_BACKOFF_SECONDS": "1",
        "RQKIT_SECRET_SHOP": "webhook-secret",
    }
    with smtp_server("none") as smtp, HTTPServer(host="127.0.0.1", port=0, threaded=True) as http:
        environment["RQKIT_SMTP_HOST"], environment["RQKIT_SMTP_PORT"] = "127.0.0.1", str(smtp.port)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        smtp.handler.rcpt_replies["retry@example.com"] = ["451 4.3.0 try again later", "250 OK"]
        answers = iter([Response("slow down", status=429, headers={"Retry-After": "1"})])
        http.expect_request("/limited").respond_with_handler(lambda r: next(answers, Response("ok")))
        http.expect_request("/hooks", method="POST").respond_with_data("thanks")
        assert python("cli.py", "schedule", "sync").returncode == 0
        processes(str(BIN / "rq"), "worker", "images", "email", "maintenance")
        processes(str(BIN / "rq"), "worker", "api", "default")
        processes(str(BIN / "rqscheduler"))
        wait_until(lambda: len(connection.smembers("rq:workers")) == 2, what="both workers register")
        yield {"media": media, "smtp": smtp.handler, "http": http}


def enqueue(*args: str) -> dict[str, Any]:
    """`python cli.py enqueue ARGS --wait --json`, as a user types it; its report (and exit 0)."""
    done = python("cli.py", "enqueue", *args, "--wait", "--json", timeout=RETRY_BOUND)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def finished(*args: str) -> bool:
    return enqueue(*args)["status"] == "finished"


def test_every_job_runs_under_the_bare_commands(bare: dict[str, Any]) -> None:
    picture = photo(bare["media"] / "cat.jpg")
    assert finished("sleep", "0")
    assert finished("thumbnail", str(picture))
    assert finished("email", "--to", "ann@example.com", "--subject", "Hi", "--text", "Hello")
    assert bare["smtp"].envelopes() == [["ann@example.com"]]
    assert finished(
        "webhook", bare["http"].url_for("/hooks"), "paid", "--payload", '{"id": 7}', "--secret", "SHOP"
    )
    assert run_json("demo", "seed", "--articles", "2", "--comments", "3")["articles"] == 2
    for job in (
        ["word-count", "comment"],
        ["expire-sessions"],
        ["sweep-cache", "thumbnails"],
        ["prune-tags"],
    ):
        assert finished(*job), job
    assert enqueue("release-due")["result"]["left_to_workers"] == []  # no worker runs RQ's scheduler


def test_retries_and_later_jobs_run_under_the_bare_commands(bare: dict[str, Any]) -> None:
    """An email's 4xx, an API's 429 and an --in job all wait in RQ's scheduled registry: with no
    worker's scheduler, the schedule's release-due moves them within the README's bound."""
    waiting = [
        start_python(
            "cli.py",
            "enqueue",
            *args,
            "--wait",
            "--json",
            stdout=PIPE,
            stderr=PIPE,
            text=True,
        )
        for args in (
            ["email", "--to", "retry@example.com", "--subject", "Again", "--text", "Hello"],
            ["api-call", "GET", bare["http"].url_for("/limited")],
            ["sleep", "0", "--in", "2s"],
        )
    ]
    said = []
    for process in waiting:
        out, err = process.communicate(timeout=RETRY_BOUND)
        assert process.returncode == 0, out + err
        assert json.loads(out)["status"] == "finished"
        assert "the schedule's 'release-due' (on 'maintenance') will move it" in err, err
        said.append(err)
    assert [" (its retry); " in err for err in said] == [True, True, False]
    assert bare["smtp"].envelopes() == [["retry@example.com"]]


def test_the_mail_sink_runs_on_its_own(
    processes: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("RQKIT_SMTP_SINK_PORT", str(port))
    monkeypatch.setenv("RQKIT_VAR_DIR", str(tmp_path))
    processes("cli.py", "mail", "serve")

    def send() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.sendmail("shop@example.com", ["ann@example.com"], b"Subject: Hi\r\n\r\nHello\r\n")
            return True
        except OSError:
            return False

    wait_until(send, what="the sink takes a message")
    [stored] = run_json("mail", "list")
    assert (stored["to"], stored["subject"]) == ("ann@example.com", "Hi")
