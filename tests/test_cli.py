"""The CLI: exit codes, one-line errors, --json output, and --wait against a real `rq worker`."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import Engine

from cli import cli
from commands.enqueue import enqueue
from jobs import JOBS
from launcher.redis_server import free_port
from tests.support import run, run_json, start_python

KNOWN = ", ".join(sorted(JOBS))


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        found += (
            all_commands(command, (*prefix, name)) if isinstance(command, click.Group) else [(*prefix, name)]
        )
    return found


@pytest.mark.parametrize("command", all_commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(command: tuple[str, ...]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Example: python cli.py" in result.output


def test_enqueue_prints_the_job(connection: Redis) -> None:
    report = run_json("enqueue", "sleep", "2")
    assert report | {"id": None} == {
        "id": None,
        "job": "sleep",
        "args": [2],
        "kwargs": {},
        "queue": "default",
        "status": "queued",
        "duplicate": False,
    }
    assert Queue("default", connection=connection).job_ids == [report["id"]]
    human = run("enqueue", "sleep", "1.5", "--at-front")
    assert human.exit_code == 0 and human.output.startswith("sleep 1.5: queued as job ")
    assert Queue("default", connection=connection).job_ids[0] in human.output


def test_enqueue_in_and_at_schedule_the_job(connection: Redis) -> None:
    later = run_json("enqueue", "sleep", "1", "--in", "5m")
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    exact = run_json("enqueue", "sleep", "1", "--at", at)
    assert later["status"] == exact["status"] == "scheduled"
    registry = Queue("default", connection=connection).scheduled_job_registry
    assert sorted(registry.get_job_ids()) == sorted([later["id"], exact["id"]])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "sleeep", "1"], f"unknown job 'sleeep'; did you mean 'sleep'? known jobs: {KNOWN}"),
        (
            ["enqueue", "thumbnial", "x.jpg"],
            "unknown job 'thumbnial'; did you mean 'thumbnail'? known jobs: ",
        ),
        (["enqueue", "sweep-caches"], "unknown job 'sweep-caches'; did you mean 'sweep-cache'? known jobs: "),
        (["enqueue", "xyzzy"], f"unknown job 'xyzzy'; known jobs: {KNOWN}"),  # nothing close: no guess
        (["enqueue", "sleep", "abc"], "'abc' is not a valid float"),
        (["enqueue", "sleep", "99999"], "SECONDS must be a number from 0 to 3600"),
        (["enqueue", "sleep", "-1"], "SECONDS must be a number from 0 to 3600, got -1"),
        (["enqueue", "sleep"], "Missing argument 'SECONDS'"),
        (["enqueue", "word-count", "post"], "'post' is not one of 'article', 'comment'"),
        (["enqueue", "sleep", "1", "--in", "5 minutes"], "not a duration like 30s"),
        (["enqueue", "sleep", "1", "--at", "tomorrow"], "not an ISO-8601 time"),
        (["enqueue", "sleep", "1", "--in", "1m", "--at", "2030-01-01T00:00:00"], "cannot be used together"),
        (["enqueue", "sleep", "1", "--queue", "nope"], "queue 'nope' is not configured"),
    ],
)
def test_usage_errors_exit_2_with_one_line(connection: Redis, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert Queue("default", connection=connection).count == 0


@pytest.mark.parametrize("args", [["enqueue", "sleep", "1"], ["info"], ["stats"]])
def test_unreachable_redis_is_one_line_naming_the_url(
    monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", url)
    result = run(*args)
    assert result.exit_code == 1
    assert result.output == f"Error: Redis is not reachable at {url}\n"


def test_bad_settings_stop_every_command_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQKIT_SCHEDULER_INTERVAL", "often")
    result = run("info")
    assert result.exit_code == 1
    assert result.output == "Error: RQKIT_SCHEDULER_INTERVAL: expected float, got 'often'\n"


def test_info_counts_queues_and_lists_workers(connection: Redis) -> None:
    run_json("enqueue", "sleep", "1")
    run_json("enqueue", "sleep", "1", "--in", "1h")
    view = run_json("info")
    default = next(q for q in view["queues"] if q["name"] == "default")
    assert (default["queued"], default["scheduled"], default["failed"]) == (1, 1, 0)
    assert [q["name"] for q in view["queues"]][:5] == ["images", "email", "api", "maintenance", "default"]
    assert view["workers"] == [] and view["rq_scheduler_jobs"] == 0
    assert "default" in run("info").output


def test_wait_prints_the_result_from_a_real_worker(connection: Redis, start_worker: Any) -> None:
    start_worker("default")
    result = run("enqueue", "sleep", "0.2", "--wait", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"id": None} == {
        "id": None,
        "job": "sleep",
        "args": [0.2],
        "kwargs": {},
        "queue": "default",
        "status": "finished",
        "duplicate": False,
        "result": {"slept": 0.2},
        "reason": None,
    }
    worker_view = run_json("info")["workers"]
    assert len(worker_view) == 1 and worker_view[0]["finished"] == 1


def test_wait_reports_a_failure_and_exits_1(connection: Redis, start_worker: Any, tmp_path: Path) -> None:
    start_worker(
        "maintenance", env={"DATABASE_URL": f"sqlite:///{tmp_path}"}
    )  # a directory: cannot be opened
    result = run("enqueue", "word-count", "comment", "--wait")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "failed: OperationalError: (sqlite3.OperationalError) unable to open database file"
    )


def test_demo_seed_adds_rows_and_queues_the_recounts(
    engine: Engine, connection: Redis, run_jobs: Any
) -> None:
    added = run_json("demo", "seed", "--articles", "2", "--comments", "3")
    assert (added["articles"], added["comments"], len(added["word_count_jobs"])) == (2, 6, 2)
    assert run_json("stats") == {"comment": None, "article": None}
    run_jobs()
    totals = run_json("stats")
    assert totals["comment"] > 0 and totals["article"] > 0
    assert run("stats").output.startswith(f"comment   {totals['comment']}\n")


def test_wait_says_when_no_worker_listens(connection: Redis, start_worker: Any) -> None:
    command = ["cli.py", "enqueue", "sleep", "0", "--queue", "maintenance", "--wait", "--json"]
    waiting = start_python(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert waiting.stderr is not None
    assert "is queued on 'maintenance', where no worker listens yet" in waiting.stderr.readline()
    start_worker("maintenance")
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and json.loads(out)["status"] == "finished"


def test_a_negative_delay_gets_the_jobs_own_message(connection: Redis) -> None:
    result = run("enqueue", "sleep", "--", "-3")
    assert result.exit_code == 2
    assert result.output == "Error: sleep: SECONDS must be a number from 0 to 3600, got -3\n"


def test_every_registered_job_has_an_enqueue_command() -> None:
    assert sorted(enqueue.commands) == sorted(JOBS)
