"""Bad input, swept: every known bad input of every job type and CLI command, and random ones
(hypothesis), get a clear one-line error; those that only show when a job runs fail that job with a
readable reason, and the worker goes on."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue

from cli import cli
from jobs import JOBS, enqueue, get_spec, submit
from jobs.errors import JobInputError
from launcher.redis_server import free_port
from ops.outcomes import wait_for
from tests.pictures import photo
from tests.support import run
from tests.test_cli import all_commands

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


# Every value-taking option and argument of every command, given hostile text. Left out: the commands
# that serve until stopped (up, redis, dashboard, metrics, mail serve) and demo seed, which writes
# rows by the thousand.
NOT_FUZZED = {("up",), ("redis",), ("dashboard",), ("metrics",), ("mail", "serve"), ("demo", "seed")}
JOB_ID = "0b5f6a0e-5c5e-4d5e-9f7e-1d2a3b4c5d6e"  # the fixture's pending job
GOOD_ARGS: dict[tuple[str, ...], list[str]] = {  # a valid value of each argument, to reach the next check
    ("enqueue", "sleep"): ["1"],
    ("enqueue", "thumbnail"): ["photo.jpg"],
    ("enqueue", "api-call"): ["GET", "http://127.0.0.1:1/"],
    ("enqueue", "webhook"): ["http://127.0.0.1:1/", "paid"],
    ("enqueue", "word-count"): ["comment"],
    ("enqueue", "expire-sessions"): ["default"],
    **{("jobs", action): [JOB_ID] for action in ("show", "cancel", "move", "front", "edit")},
    ("workers", "kill"): ["nobody"],
    ("workers", "stop"): ["nobody"],
    ("schedule", "run"): ["prune-tags"],
    ("thumbnails",): ["."],
}
GOOD_OPTIONS: dict[tuple[str, ...], list[str]] = {  # the required options, with valid values
    ("enqueue", "email"): ["--to=a@example.com", "--subject=s", "--text=t"],
    ("enqueue", "webhook"): ["--secret=S"],
    ("jobs", "move"): ["--to=default"],
}
HOSTILE = [
    "",
    " ",
    "\t\n",
    "\x00",
    "\x1b]0;pwned\x07",
    "\x1b[2J",
    "\u202e",
    "\x9b",
    "-1",
    "0",
    "1e309",
    "nan",
    "-inf",
    "9" * 400,
    "99999999999d",
    "3000000d",
    "٣s",
    "３",
    "9999-12-31T23:59:59-10:00",
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00+14:00",
    "[" * 100_000,
    '"\\udcff"',
    "../../etc/passwd",
    "a=b",
    "NaN",
]


def fuzz_targets() -> list[tuple[tuple[str, ...], click.Parameter]]:
    """(command path, parameter) for every value-taking parameter of every command fuzzed."""
    targets = []
    for path in all_commands(cli):
        command = command_of(path)
        if path in NOT_FUZZED or isinstance(command, click.Group) and not command.params:
            continue
        targets += [
            (path, param)
            for param in command.params
            if isinstance(param, click.Argument) or (isinstance(param, click.Option) and not param.is_flag)
        ]
    return targets


def command_line(path: tuple[str, ...], param: click.Parameter, value: str) -> list[str]:
    """The command with valid values for all but `param`, which gets `value`."""
    arguments = list(GOOD_ARGS.get(path, []))
    options = list(GOOD_OPTIONS.get(path, []))
    if isinstance(param, click.Argument):
        index = [p for p in command_of(path).params if isinstance(p, click.Argument)].index(param)
        arguments[index : index + 1] = [value]
    else:
        options.append(f"{param.opts[0]}={value}")
    return [*path, *options, "--", *arguments]


def fuzz_id(value: tuple[str, ...] | click.Parameter) -> str:
    return value.human_readable_name if isinstance(value, click.Parameter) else " ".join(value)


def command_of(path: tuple[str, ...]) -> click.Command:
    command: Any = cli
    for name in path:
        command = command.commands[name]
    return command


def assert_one_line_error_at_most(result: Any) -> None:
    """Exit 0, or 1 or 2 with one `Error:` line; never a traceback, never a raw control character."""
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code:
        assert [line for line in result.stderr.splitlines() if line.startswith("Error:")], result.output
    assert not [c for c in result.stderr if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} and c != "\n"]


@pytest.fixture
def pending_job(connection: Redis, media: Any) -> None:
    """A pending job under JOB_ID and a picture, for the commands' valid arguments to name."""
    photo(media.root / "photo.jpg")
    Queue("default", connection=connection).enqueue("jobs.demo.sleep", 1, job_id=JOB_ID)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "param"), fuzz_targets(), ids=fuzz_id)
def test_every_value_of_every_option_is_taken_or_refused_in_one_line(
    path: tuple[str, ...], param: click.Parameter, pending_job: None
) -> None:
    for value in HOSTILE:
        assert_one_line_error_at_most(run(*command_line(path, param, value)))


@pytest.mark.slow
@pytest.mark.parametrize(("path", "param"), fuzz_targets(), ids=fuzz_id)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(exclude_categories=()), max_size=20) | st.integers().map(str))
def test_random_values_of_every_option_are_taken_or_refused_in_one_line(
    path: tuple[str, ...], param: click.Parameter, value: str, pending_job: None
) -> None:
    assert_one_line_error_at_most(run(*command_line(path, param, value)))
