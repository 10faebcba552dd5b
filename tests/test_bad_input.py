"""Bad input, swept: every known bad input of every job type and CLI command, and random ones
(hypothesis), get a clear one-line error; those that only show when a job runs fail that job with a
readable reason, and the worker goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from jobs import JOBS, enqueue, get_spec, submit
from jobs.errors import JobInputError
from launcher.redis_server import free_port
from ops.outcomes import wait_for
from tests.pictures import photo
from tests.support import run

# Every job type, and inputs its enqueue-time check must refuse: (job, args, kwargs, message part).
KNOWN_BAD: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("sleep", (-1,), {}, "SECONDS must be a number from 0 to 3600, got -1"),
    ("sleep", ("5",), {}, "got '5'"),
    ("sleep", (True,), {}, "got True"),
    ("sleep", (float("nan"),), {}, "nan is not a JSON number"),
    ("sleep", (), {}, "missing a required argument"),
    ("sleep", (1, 2), {}, "too many positional arguments"),
    ("sleep", (1,), {"forever": True}, "unexpected keyword argument"),
    ("thumbnail", ("",), {}, "PATH must be a path"),
    ("thumbnail", ("missing.jpg",), {}, "missing.jpg"),
    ("thumbnail", ("/etc/passwd",), {}, "outside the media root"),
    ("thumbnail", ("../x.jpg",), {}, "outside the media root"),
    ("thumbnail", ("a\x00.jpg",), {}, "cannot hold a NUL character"),
    ("thumbnail", ("photo.jpg",), {"sizes": [0]}, "a size must be a whole number from 1 to 8192, got 0"),
    ("thumbnail", ("photo.jpg",), {"sizes": [100_000]}, "got 100000"),
    ("thumbnail", ("photo.jpg",), {"format": "gif"}, "format"),
    ("email", ("not-an-address",), {"subject": "s", "text": "t"}, "not-an-address"),
    ("email", ("a@example.com",), {"text": "t"}, "a subject is needed"),
    ("email", ("a@example.com",), {"subject": "s"}, "give text, html or a template"),
    ("email", ("a@example.com",), {"subject": "s\nBcc: x@example.com", "text": "t"}, "subject"),
    ("email", ("a@example.com",), {"template": "nope"}, "nope"),
    ("email", ("a@example.com",), {"subject": "s", "text": "t", "idempotency_key": ""}, "idempotency_key"),
    ("api-call", ("FETCH", "http://127.0.0.1/"), {}, "FETCH"),
    ("api-call", ("GET", "ftp://127.0.0.1/"), {}, "ftp"),
    ("api-call", ("GET", "http://169.254.169.254/latest/meta-data"), {}, "is not allowed"),
    ("api-call", ("GET", "not a url"), {}, "not a url"),
    ("api-call", ("GET", "http://127.0.0.1/"), {"headers": {"X": "a\r\nb"}}, "header"),
    ("webhook", ("http://127.0.0.1/", "", {}, "hook"), {}, "event must be a one-line name"),
    ("webhook", ("http://127.0.0.1/", "e", {}, "bad name!"), {}, "secret"),
    ("expire-sessions", ("nope",), {}, "session store 'nope' is not configured"),
    ("expire-sessions", ("default",), {"dry_run": "yes"}, "dry_run"),
    ("sweep-cache", ("nope",), {}, "cache target 'nope' is not configured"),
    ("prune-tags", (1,), {}, "too many positional arguments"),
    ("release-due", ("maintenance",), {}, "too many positional arguments"),
    ("word-count", ("post",), {}, "MODEL must be one of"),
]


def test_every_job_type_is_in_the_sweep() -> None:
    assert {job for job, *_ in KNOWN_BAD} == set(JOBS)


@pytest.mark.parametrize(("job", "args", "kwargs", "message"), KNOWN_BAD)
def test_known_bad_input_is_refused_at_enqueue(
    job: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str, connection: Redis, media: Any
) -> None:
    photo(media.root / "photo.jpg")
    with pytest.raises(JobInputError) as refused:
        submit(job, args, kwargs)
    text = str(refused.value)
    assert message in text and "\n" not in text, text
    assert not connection.keys("rq:*")  # nothing was written


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@pytest.mark.parametrize("job", sorted(JOBS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    args=st.lists(JSON_VALUES, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=3),
)
def test_random_arguments_pass_or_get_one_line(
    job: str, args: list[Any], kwargs: dict[str, Any], media: Any
) -> None:
    """The enqueue gate (signature, JSON, the job's own check) raises only JobInputError, in one line."""
    try:
        get_spec(job).validate(tuple(args), kwargs)
    except JobInputError as exc:
        assert str(exc) and "\n" not in str(exc), repr(exc)


def test_bad_input_that_only_shows_at_run_time_fails_the_job_not_the_worker(
    connection: Redis, start_worker: Any, media: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RQKIT_API_MAX_RETRIES", "0")
    monkeypatch.setenv("RQKIT_SMTP_HOST", closed.split(":")[0])
    monkeypatch.setenv("RQKIT_SMTP_PORT", closed.split(":")[1])
    monkeypatch.setenv("RQKIT_SMTP_SECURITY", "none")
    monkeypatch.setenv("RQKIT_EMAIL_RETRY_INTERVALS", "")
    monkeypatch.setenv(
        "RQKIT_SESSION_STORES",
        json.dumps(
            {"empty": {"kind": "sql", "preset": "django", "url": f"sqlite:///{tmp_path / 'empty.db'}"}}
        ),
    )
    whole = photo(media.root / "whole.jpg").read_bytes()
    (media.root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (media.root / "notes.jpg").write_text("not a picture")
    photo(media.root / "gone.jpg")
    worker = start_worker("images", "email", "api", "maintenance")
    jobs = {
        "truncated": enqueue("thumbnail", "truncated.jpg"),
        "not an image": enqueue("thumbnail", "notes.jpg"),
        "deleted after enqueue": enqueue("thumbnail", "gone.jpg"),
        "no such table": enqueue("expire-sessions", "empty"),
        "closed API port": enqueue("api-call", "GET", f"http://{closed}/"),
        "closed SMTP port": enqueue("email", "a@example.com", subject="s", text="t"),
    }
    (media.root / "gone.jpg").unlink()
    for what, job in jobs.items():
        outcome = wait_for(job, timeout=60)
        reason = outcome.reason or ""
        assert outcome.status == "failed" and reason and "\n" not in reason, (what, outcome)
        assert not reason.startswith("Traceback"), (what, reason)
    assert worker.poll() is None
    assert wait_for(enqueue("prune-tags"), timeout=30).status == "finished"  # the same worker goes on


# Known bad input of every CLI command: a usage error (exit 2) or a failure (exit 1), in one line.
BAD_COMMANDS: list[tuple[list[str], int, str]] = [
    (["nope"], 2, "No such command 'nope'"),
    (["enqueue", "sleep", "-1"], 2, "SECONDS must be a number"),
    (["enqueue", "thumbnail", "/etc/passwd"], 2, "outside the media root"),
    (["enqueue", "email", "--to", "x", "--subject", "s", "--text", "t"], 2, "'x'"),
    (["enqueue", "api-call", "GET", "http://169.254.169.254/"], 2, "is not allowed"),
    (["enqueue", "webhook", "http://127.0.0.1/", "e", "--payload", "{", "--secret", "s"], 2, "payload"),
    (["enqueue", "expire-sessions", "nope"], 2, "not configured"),
    (["enqueue", "sweep-cache", "nope"], 2, "not configured"),
    (["enqueue", "word-count", "post"], 2, "'post' is not one of"),
    (["enqueue", "sleep", "1", "--tag", "bad tag"], 2, "tag 'bad tag'"),
    (["jobs", "show", "no-such-id"], 2, "no job 'no-such-id'"),
    (["jobs", "list", "--status", "sleeping"], 2, "sleeping"),
    (["jobs", "move", "no-such-id", "--to", "nope"], 2, "queue 'nope' is not configured"),
    (["jobs", "cancel", "no-such-id"], 2, "no job 'no-such-id'"),
    (["jobs", "edit", "no-such-id", "--timeout", "5"], 2, "no job 'no-such-id'"),
    (["jobs", "show", "../etc"], 2, "no job '../etc'"),
    (["failed", "requeue"], 2, "name failed job ids, or --all"),
    (["failed", "delete", "no-such-id"], 2, "no job 'no-such-id'"),
    (["workers", "kill", "nobody"], 2, "no worker named 'nobody'"),
    (["workers", "stop", "nobody"], 2, "no worker named 'nobody'"),
    (["schedule", "run", "nope"], 2, "nope"),
    (["mail", "show", "nope"], 2, "nope"),
    (["thumbnails", "no-such-dir"], 2, "no-such-dir"),
    (["metrics", "--port", "0"], 2, "0"),
    (["dashboard", "--port", "70000"], 2, "70000"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_COMMANDS)
def test_known_bad_command_lines_get_one_line(
    args: list[str], code: int, message: str, connection: Redis, media: Any
) -> None:
    result = run(*args)
    assert (result.exit_code, "Traceback" in result.output) == (code, False), result.output
    assert message in result.output, result.output


FUZZED = ["enqueue", "jobs", "failed", "workers", "schedule", "mail", "info", "stats"]
TOKENS = st.sampled_from(
    [
        "sleep",
        "thumbnail",
        "email",
        "api-call",
        "webhook",
        "word-count",
        "sweep-cache",
        "list",
        "show",
        "cancel",
        "move",
        "front",
        "edit",
        "requeue",
        "delete",
        "kill",
        "stop",
        "run",
        "--json",
        "--all",
        "--to",
        "--tag",
        "--job",
        "--limit",
        "--status",
        "--queue",
        "--in",
        "--at",
        "--arg",
        "--kwarg",
        "--timeout",
        "-1",
        "0",
        "1e309",
        "",
        "x",
        "::",
        "--",
        "default",
        "comment",
        "http://127.0.0.1:1/",
    ]
) | st.text(max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(FUZZED), tokens=st.lists(TOKENS, max_size=6))
def test_random_command_lines_never_end_in_a_traceback(
    command: str, tokens: list[str], connection: Redis, media: Any
) -> None:
    result = run(command, *tokens)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
