"""A job whose work-horse died and which RQ runs again reads as such in the worker's log: the failed
attempt, RQ's line for the retry, then the rerun's end."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Retry

from launcher.stack import WORKER_ARGS
from ops.outcomes import wait_for
from tests.support import blocked_clients, wait_until, work_horses

pytestmark = pytest.mark.slow


def test_a_job_rerun_after_its_horse_died_is_logged_as_retried_then_ok(
    connection: Redis, processes: Any, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    args = [arg for arg in WORKER_ARGS if arg != "--with-scheduler"]  # a worker's only forks: its horses
    worker = processes("-m", "rq.cli", *args, "default", log=log)
    wait_until(lambda: blocked_clients(connection), what="the worker")
    job = Queue("default", connection=connection).enqueue("tests.compat_jobs.sleep", 2, retry=Retry(max=1))
    wait_until(lambda: job.get_status(refresh=True) == "started", what="the job to start")
    [horse] = wait_until(lambda: work_horses(worker.pid), 5, "its horse")
    os.kill(horse, signal.SIGKILL)

    assert wait_for(job, timeout=30).status == "finished"
    ok = f"default: Job OK ({job.id})"  # logged just after the script that marks it finished returns
    wait_until(lambda: ok in log.read_text(), 10, "the worker's line for it")
    lines = [line for line in log.read_text().splitlines() if job.id in line]
    retry_line = f"Job {job.id}: enqueued for retry, 0 remaining"  # RQ's own
    cut_short = next(i for i, line in enumerate(lines) if "Work-horse terminated unexpectedly" in line)
    retried = next((i for i, line in enumerate(lines) if retry_line in line), None)
    assert retried is not None and cut_short < retried < len(lines) - 1, lines
    assert lines[-1].endswith(f"default: Job OK ({job.id})"), lines
