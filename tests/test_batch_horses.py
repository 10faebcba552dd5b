"""A ForkingWorker's work-horse that runs up to `horse_jobs` jobs one after the other: replaced after
the Nth, after growing `horse_growth_mb`, or when it dies, which fails only the job it was running; a
time-out, a failure and RQ's `get_current_job` work in it as in a horse per job."""

from __future__ import annotations

import os
from typing import cast

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from config import ConfigError, get_settings, load_settings
from tests import compat_jobs
from workers import ForkingWorker


def run(connection: Redis, monkeypatch: pytest.MonkeyPatch, horse_jobs: int, *calls: tuple) -> list[Job]:
    """Enqueue the calls (function, args, options), drain them with one ForkingWorker; the jobs."""
    monkeypatch.setenv("RQKIT_HORSE_JOBS", str(horse_jobs))
    get_settings.cache_clear()
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(function, *args, **options) for function, args, options in calls]
    ForkingWorker(["default"], connection=connection).work(burst=True)
    return [Job.fetch(job.id, connection=connection) for job in jobs]


def test_a_horse_runs_n_jobs_then_a_fresh_one_takes_over(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = run(connection, monkeypatch, 3, *[(compat_jobs.pid, (), {})] * 7)
    assert [job.get_status() for job in jobs] == ["finished"] * 7
    pids = [cast(int, job.return_value()) for job in jobs]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert os.getpid() not in pids
    for pid in set(pids):  # none left behind: the last one waiting was stopped with the worker
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dying_horse_fails_only_its_own_job(connection: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [
        (compat_jobs.pid, (), {}),
        (compat_jobs.fail, ("boom",), {}),
        (compat_jobs.sleep, (3,), {"job_timeout": 1}),
        (compat_jobs.keep_in_meta, (), {}),
        (compat_jobs.pid, (), {}),
        (compat_jobs.crash, (), {}),
        (compat_jobs.pid, (), {}),
    ]
    first, failed, timed_out, meta, before, crashed, after = run(connection, monkeypatch, 100, *calls)
    assert [job.get_status() for job in (first, meta, before, after)] == ["finished"] * 4
    assert [job.get_status() for job in (failed, timed_out, crashed)] == ["failed"] * 3
    assert "JobTimeoutException" in str(timed_out.latest_result().exc_string)  # type: ignore[union-attr]
    assert "Work-horse terminated unexpectedly" in str(crashed.latest_result().exc_string)  # type: ignore[union-attr]
    assert meta.meta["seen_by"] == meta.id
    assert first.return_value() == before.return_value() != after.return_value()  # a fresh one after


def test_a_horse_that_grew_too_much_is_replaced_before_its_next_job(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_HORSE_GROWTH_MB", "20")
    small, big, after_big, last = run(
        connection,
        monkeypatch,
        100,
        (compat_jobs.hold, (1,), {}),
        (compat_jobs.hold, (40,), {}),
        (compat_jobs.pid, (), {}),
        (compat_jobs.pid, (), {}),
    )
    assert small.return_value() == big.return_value() != after_big.return_value() == last.return_value()


@pytest.mark.parametrize("name, value", [("HORSE_JOBS", "0"), ("HORSE_GROWTH_MB", "-1")])
def test_bad_horse_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"RQKIT_{name}"):
        load_settings({f"RQKIT_{name}": value})
