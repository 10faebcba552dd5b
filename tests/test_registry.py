"""The job registry and the enqueue path: policy, validation before Redis, scheduling, outcomes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from config import RedisUnavailable
from jobs import JOBS, enqueue, submit
from jobs.errors import JobInputError, UnknownJobError
from launcher.redis_server import free_port
from ops.outcomes import exception_line, failure_reason, wait_for

NOBODY_HOME = f"redis://127.0.0.1:{free_port()}/0"
JOBS_DOC = Path(__file__).parent.parent / "docs" / "jobs.md"


def documented_jobs() -> list[str]:
    """The names in the first column of the table under `## Jobs` in docs/jobs.md, in order."""
    section = JOBS_DOC.read_text().split("\n## Jobs\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_the_documented_jobs_table_lists_every_registered_job_once() -> None:
    documented = documented_jobs()
    assert len(documented) == len(set(documented)), documented
    assert sorted(documented) == sorted(JOBS)


def test_every_job_declares_a_known_queue_and_a_policy() -> None:
    for spec in JOBS.values():
        assert spec.queue in ("images", "email", "api", "maintenance", "default")
        assert spec.timeout > 0 and spec.failure_ttl >= spec.result_ttl > 0
        assert spec.description


def test_enqueue_puts_the_job_on_its_queue_with_its_policy(connection: Redis) -> None:
    job = enqueue("sleep", 0)
    assert Queue("default", connection=connection).job_ids == [job.id]
    spec = JOBS["sleep"]
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (spec.timeout, spec.result_ttl, spec.failure_ttl)
    assert job.description == "sleep 0"
    assert job.func_name == "jobs.demo.sleep"
    assert job.meta["rqkit_job"] == "sleep"


def test_a_job_runs_on_a_worker_and_keeps_its_result(connection: Redis, run_jobs: Any) -> None:
    job = enqueue("sleep", 0.01)
    run_jobs()
    assert wait_for(job, timeout=1).as_dict() == {
        "status": "finished",
        "result": {"slept": 0.01},
        "reason": None,
    }


def test_at_front_and_queue_override(connection: Redis) -> None:
    first = enqueue("sleep", 0)
    urgent = submit("sleep", (1,), at_front=True).job
    assert Queue("default", connection=connection).job_ids == [urgent.id, first.id]
    elsewhere = submit("sleep", (0,), queue="maintenance").job
    assert Queue("maintenance", connection=connection).job_ids == [elsewhere.id]


def test_a_future_time_goes_to_the_scheduled_registry(connection: Redis) -> None:
    when = datetime.now(UTC) + timedelta(minutes=5)
    job = submit("sleep", (0,), at=when).job
    queue = Queue("default", connection=connection)
    assert queue.job_ids == []
    assert queue.scheduled_job_registry.get_job_ids() == [job.id]
    assert job.get_status() == JobStatus.SCHEDULED
    scheduled = queue.scheduled_job_registry.get_scheduled_time(job)
    assert abs((scheduled - when).total_seconds()) < 1


def test_a_past_time_enqueues_at_once(connection: Redis) -> None:
    job = submit("sleep", (0,), at=datetime.now(UTC) - timedelta(hours=1)).job
    assert Queue("default", connection=connection).job_ids == [job.id]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((object(),), {}, "object is not a JSON type"),
        (({1, 2},), {}, "set is not a JSON type"),
        (((1, 2),), {}, "tuple is not a JSON type"),
        ((b"5",), {}, "bytes is not a JSON type"),
        ((datetime.now(),), {}, "datetime is not a JSON type"),
        ((float("nan"),), {}, "not a JSON number"),
        (([1, [2, {"a": {3}}]],), {}, "set is not a JSON type"),
        (({1: "x"},), {}, "keys must be strings"),
        ((), {"seconds": object()}, "keyword arguments"),
        ((), {}, "missing a required argument"),
        ((1, 2), {}, "too many positional arguments"),
        ((), {"second": 1}, "sleep"),
        (("5",), {}, "SECONDS must be a number"),
        ((True,), {}, "SECONDS must be a number"),
        ((-1,), {}, "SECONDS must be a number"),
        ((10**6,), {}, "SECONDS must be a number"),
    ],
)
def test_bad_arguments_are_refused_before_redis_is_touched(
    monkeypatch: pytest.MonkeyPatch, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("REDIS_URL", NOBODY_HOME)  # touching Redis would raise RedisUnavailable instead
    with pytest.raises(JobInputError, match=message):
        submit("sleep", args, kwargs)


def test_an_unknown_job_offers_the_closest_names_and_lists_the_known_ones() -> None:
    with pytest.raises(
        UnknownJobError, match=f"did you mean 'sleep'\\? known jobs: {', '.join(sorted(JOBS))}$"
    ) as error:
        enqueue("sleeep", 1)
    assert {"sleep", "word-count", "thumbnail"} <= set(error.value.known)
    assert error.value.close == ["sleep"]


def test_a_queue_that_no_worker_listens_to_is_refused() -> None:
    with pytest.raises(JobInputError, match="queue 'nope' is not configured"):
        submit("sleep", (1,), queue="nope")


def test_unreachable_redis_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", NOBODY_HOME)
    with pytest.raises(RedisUnavailable, match=f"not reachable at {NOBODY_HOME}"):
        enqueue("sleep", 1)


def test_a_job_that_fails_at_run_time_gives_a_one_line_reason(connection: Redis, run_jobs: Any) -> None:
    # Enqueued with plain RQ, past the registry's checks: the job checks its arguments again.
    job = Queue("default", connection=connection).enqueue("jobs.demo.sleep", -5)
    run_jobs()
    outcome = wait_for(job, timeout=1)
    assert outcome.status == "failed"
    assert outcome.reason == "JobInputError: sleep: SECONDS must be a number from 0 to 3600, got -5"
    assert failure_reason(job) == outcome.reason


def test_waiting_for_a_deleted_job_says_so(connection: Redis) -> None:
    job = enqueue("sleep", 0)
    job.delete()
    assert wait_for(job, timeout=1).status == "missing"


CHAINED = """Traceback (most recent call last):
  File "a.py", line 1, in f
    connect()
ConnectionRefusedError: [Errno 111] Connection refused

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "b.py", line 2, in g
    raise Failed("x: y") from exc
    ^^^^^^^^^^^^^^^^^^^^
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) x: y
(Background on this error at: https://sqlalche.me/e/21/e3q8)
"""


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (CHAINED, "OperationalError: (sqlite3.OperationalError) x: y"),
        (
            "Traceback (most recent call last):\n  File \"c.py\", line 3\n    x()\nKeyError: 'k'\n",
            "KeyError: 'k'",
        ),
        ("Moved to FailedJobRegistry, job abandoned", "Moved to FailedJobRegistry, job abandoned"),
    ],
)
def test_exception_line_is_the_last_exception_without_its_module(text: str, line: str) -> None:
    assert exception_line(text) == line


def test_every_job_runs_under_a_memory_cap_that_is_lifted_after(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.errors import MemoryLimitError
    from jobs.runtime import memory_cap

    with pytest.raises(MemoryLimitError, match="memory limit: the job needed more than 10 MB"):
        with memory_cap(10):
            bytearray(200 * 2**20)
    assert len(bytearray(200 * 2**20)) == 200 * 2**20  # the cap is gone again
    assert all(getattr(spec.func, "__wrapped__", None) for spec in JOBS.values())  # each under the policy


def test_arguments_nested_too_deep_or_holding_themselves_are_refused_in_one_line() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    itself: list[Any] = []
    itself.append(itself)
    for payload in (deep, itself):
        with pytest.raises(JobInputError, match="nested more than 100 levels deep"):
            enqueue("webhook", "http://127.0.0.1/hook", "paid", {"a": payload}, "SHOP")
