"""No control character from data reaches the terminal: every human view of jobs, failures, workers,
queues, tags, the schedule and files written by others shows them escaped, one line per record;
`--json` keeps them exact."""

from __future__ import annotations

import json
import logging
import os
import socket
import unicodedata
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import Result
from pytest_httpserver import HTTPServer
from redis import Redis
from rq import Queue, SimpleWorker, Worker

from cli import PrintableFormatter
from commands.common import printable
from jobs import enqueue
from jobs.tags import tag_key
from scheduler.runner import Scheduler
from tests.support import run, run_json

# A title change, a bell, a screen clear, a right-to-left override, a C1 CSI, isolates, separators,
# DEL, and a line break that would forge a row of its own.
EVIL = "\x1b]0;pwned\x07\x1b[2J\u202e\x9b\u2066\u2069\u2028\u2029\x7f\r\nFORGED row"
UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def raw_controls(text: str, line_breaks: bool = False) -> list[str]:
    """The unsafe characters in `text`; its line breaks too unless `line_breaks` are meant."""
    return [c for c in text if unicodedata.category(c) in UNSAFE and not (line_breaks and c == "\n")]


def assert_shown_safely(result: Result, multiline: bool = False) -> None:
    """No traceback, no raw control character on stdout or stderr, and no forged line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert not raw_controls(result.stdout, line_breaks=True), repr(result.stdout)
    assert not raw_controls(result.stderr, line_breaks=True), repr(result.stderr)
    if not multiline:
        assert not any(line.startswith("FORGED") for line in result.output.splitlines()), result.output


@pytest.fixture
def boom(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of an allowed API that answers 400 with EVIL as its body, not retried."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/boom").respond_with_data(EVIL, status=400)
    server.start()
    monkeypatch.setenv("RQKIT_API_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("RQKIT_API_MAX_RETRIES", "0")
    monkeypatch.setenv("RQKIT_API_BACKOFF_SECONDS", "0")
    monkeypatch.setenv("RQKIT_API_READ_TIMEOUT", "5")
    yield server.url_for("/boom")
    server.stop()


@pytest.fixture
def evil_data(connection: Redis, boom: str) -> dict[str, Any]:
    """Jobs, failures, a result, a worker, a queue, a tag and an rq-scheduler entry holding EVIL."""
    remote = enqueue("api-call", "GET", boom)
    queue = Queue(f"q{EVIL}", connection=connection)
    meta = {"rqkit_job": f"job{EVIL}", "tags": [EVIL]}
    failing = queue.enqueue("tests.compat_jobs.fail", EVIL, description=EVIL, meta=meta)
    echoing = queue.enqueue("tests.compat_jobs.add", EVIL, EVIL, description=EVIL, meta=meta)
    pending = queue.enqueue("tests.compat_jobs.nothing", description=EVIL, meta=meta)
    run_each(connection, [queue, Queue("api", connection=connection)])
    queue.enqueue_job(pending)
    connection.zadd(tag_key(EVIL), {pending.id: 1})
    Scheduler(connection=connection).enqueue_in(
        timedelta(hours=1), "tests.compat_jobs.nothing", description=EVIL
    )
    worker = Worker([queue], name=f"w{EVIL}", connection=connection)
    worker.hostname = socket.gethostname()
    worker.register_birth()
    return {"ids": [remote.id, failing.id, echoing.id, pending.id], "worker": worker.name}


def run_each(connection: Redis, queues: list[Queue]) -> None:
    """Run the queued jobs in-process, by RQ's own code, without `work()`: its pubsub thread can hold
    up its end for a minute when it ends as soon as it started."""
    worker = SimpleWorker(queues, connection=connection)
    worker.register_birth()
    while found := Queue.dequeue_any(queues, None, connection=connection):
        job, queue = found
        worker.execute_job(job, queue)
    worker.register_death()


LISTINGS = [
    ["info"],
    ["stats"],
    ["jobs", "list"],
    ["jobs", "list", "--status", "failed"],
    ["jobs", "list", "--status", "scheduled"],
    ["jobs", "list", "--tag", EVIL],
    ["jobs", "list", "--queue", f"q{EVIL}"],
    ["failed", "list"],
    ["workers"],
    ["schedule", "list"],
]


@pytest.mark.parametrize("command", LISTINGS, ids=lambda c: " ".join(c[:3]).encode("unicode_escape").decode())
def test_listings_escape_what_data_holds(command: list[str], evil_data: dict[str, Any]) -> None:
    result = run(*command)
    assert_shown_safely(result)
    assert result.exit_code == 0


def test_the_remote_error_body_is_escaped_in_failed_list(evil_data: dict[str, Any]) -> None:
    shown = run("failed", "list").stdout
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202e\\x9b" in shown  # escaped, where it was
    assert any("\x1b]0;pwned\x07\x1b[2J\u202e\x9b" in g["reason"] for g in run_json("failed", "list"))


def test_jobs_show_keeps_the_tracebacks_lines_and_escapes_the_rest(evil_data: dict[str, Any]) -> None:
    for job_id in evil_data["ids"]:
        result = run("jobs", "show", job_id)
        assert_shown_safely(result, multiline=True)
        head, _, traceback = result.stdout.partition("\n\n")
        assert not any(line.startswith("FORGED") for line in head.splitlines()), head
    failed = run("jobs", "show", evil_data["ids"][1]).stdout
    assert "Traceback (most recent call last):\n" in failed  # the traceback's own lines stay lines
    assert "FORGED row" in failed  # the exception's message, which held the line break


def test_json_output_is_exact(evil_data: dict[str, Any]) -> None:
    [job] = [j for j in run_json("jobs", "list", "--tag", EVIL)]
    assert job["description"] == EVIL and job["queue"] == f"q{EVIL}"
    shown = run_json("jobs", "show", evil_data["ids"][2])
    assert shown["result"] == EVIL + EVIL and shown["args"] == [EVIL, EVIL]
    assert any(w["name"] == evil_data["worker"] for w in run_json("workers"))


def test_actions_on_evil_jobs_print_escaped(evil_data: dict[str, Any]) -> None:
    pending = evil_data["ids"][3]
    assert_shown_safely(run("jobs", "edit", pending, "--arg", json.dumps(EVIL)))
    assert_shown_safely(run("failed", "requeue", "--all"))
    assert_shown_safely(run("workers", "kill", evil_data["worker"]))
    assert_shown_safely(run("workers", "stop", evil_data["worker"]))


@pytest.mark.parametrize(
    "args",
    [
        ["thumbnails", EVIL],  # click's own "does not exist", which quotes the path as is
        ["jobs", f"--{EVIL}"],  # "No such option", as is
        ["jobs", "show", EVIL],
        ["jobs", "list", "--status", EVIL],
        ["workers", "kill", EVIL],
        ["failed", "delete", EVIL],
        ["schedule", "run", EVIL],
        ["enqueue", "sleep", "1", "--queue", EVIL],
        ["enqueue", "sleep", "1", "--tag", EVIL],
        ["enqueue", "sleep", "1", "--at", EVIL],
        ["enqueue", "sleep", "1", "--in", EVIL],
        ["enqueue", "email", "--to", EVIL, "--subject", "s", "--text", "t"],
        ["enqueue", "api-call", "GET", f"http://127.0.0.1/{EVIL}"],
        ["enqueue", EVIL],
        ["info", EVIL],
        ["jobs", "show", "\udcff"],  # bytes that are not UTF-8, as Python decodes them from argv
    ],
    ids=lambda args: " ".join(args[:2]).encode("unicode_escape").decode(),
)
def test_errors_quoting_input_are_escaped(args: list[str], connection: Redis, media: Any) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not raw_controls(result.stderr, line_breaks=True), repr(result.stderr)
    assert not any(line.startswith("FORGED") for line in result.stderr.splitlines()), result.stderr


def test_file_names_are_escaped_and_non_utf8_ones_refused(connection: Redis, media: Any) -> None:
    (media.root / f"a{EVIL}.jpg").write_bytes(b"not a picture")
    os.close(os.open(media.root / os.fsdecode(b"b\xff.jpg"), os.O_CREAT | os.O_WRONLY))
    result = run("thumbnails", ".")
    assert_shown_safely(result)
    assert "refused b\\udcff.jpg" in result.stdout
    assert_shown_safely(run("jobs", "list"))


def test_enqueue_wait_escapes_the_reason(connection: Redis, boom: str, start_worker: Any) -> None:
    start_worker("api")
    result = run("enqueue", "api-call", "GET", boom, "--wait")
    assert result.exit_code == 1, result.output
    assert_shown_safely(result)
    assert "\\x1b]0;pwned" in result.stdout


def test_printable_escapes_each_unsafe_character_once() -> None:
    assert printable("plain text, é, 中文") == "plain text, é, 中文"
    assert (
        printable("\x1b[2J\u202e\x9b\x7f\t\n\U000e0001") == "\\x1b[2J\\u202e\\x9b\\x7f\\x09\\x0a\\U000e0001"
    )
    assert printable("a\nb", keep="\n") == "a\nb"
    assert printable("\ud800") == "\\ud800"


def test_a_group_without_a_command_still_shows_its_help() -> None:
    shown = run("jobs").output
    assert "Usage: cli jobs [OPTIONS] COMMAND [ARGS]...\n" in shown and "\n  Example: " in shown


def test_log_lines_and_errors_escape_what_they_quote(connection: Redis) -> None:
    record = logging.LogRecord("jobs", logging.WARNING, __file__, 1, "reply %s", ("\x1b]0;pwned\x07",), None)
    assert PrintableFormatter("%(message)s").format(record) == "reply \\x1b]0;pwned\\x07"
    connection.hset("rqkit:schedule:state:expire-sessions", mapping={"skipped": "\x1b[2J", "last_job": "x"})
    assert_shown_safely(run("schedule", "list"))
    assert_shown_safely(run("mail", "show", "\x1b[2J" + "a" * 400))


def test_a_result_shown_by_wait_is_escaped_once(
    connection: Redis, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/page").respond_with_data(
        "<html>\nline two \x1b[2J\n</html>", content_type="text/html"
    )
    server.start()
    monkeypatch.setenv("RQKIT_API_ALLOWED_HOSTS", "127.0.0.1")
    start_worker("api")
    try:
        result = run("enqueue", "api-call", "GET", server.url_for("/page"), "--wait")
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert_shown_safely(result)
    assert "<html>\\nline two \\u001b[2J\\n</html>" in result.stdout  # JSON's own escapes, nothing doubled


def test_mail_show_keeps_the_bodys_lines(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQKIT_VAR_DIR", str(tmp_path))
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "1700000000000000000-0123abcd.eml").write_bytes(
        b"Subject: hi\r\nFrom: a@example.com\r\n\r\nline one\r\nline two \x1b[2J\r\n"
    )
    result = run("mail", "show", "latest")
    assert_shown_safely(result, multiline=True)
    assert "line one\nline two \\x1b[2J\n" in result.stdout
