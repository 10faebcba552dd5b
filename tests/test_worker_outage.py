"""A worker whose Redis goes away while a job runs waits for it (RQ's loop quit on the first Redis error
in the job's heartbeat, exit code 0): a ForkingWorker's horse runs on, each failed heartbeat is one line,
and once Redis answers the job is recorded and the next one runs. A job whose failure can't be written is
found abandoned. A SIGTERM meanwhile still stops the worker.

Two kinds of outage: "stalled" (SIGSTOP: every call hangs for the socket timeout, as over a cut
network, then SIGCONT) and "restarted" (stopped: every call refused at once, then started on the same
port and data)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from config import rq_classes
from config.connection import redis_client
from jobs import enqueue
from launcher.redis_server import RedisServer
from ops.outcomes import wait_for
from tests.support import blocked_clients, wait_until
from tests.test_metrics_outage import own_redis  # noqa: F401 - the fixture, used below

pytestmark = pytest.mark.slow

# RQ gives a worker's connection a socket timeout of max(1, TTL - 15) + 10 s: 11 s for a TTL of 16 s, the
# shortest it gives; a stalled Redis makes each call wait that long.
SOCKET_TIMEOUT = 11
WORKER = (
    *("-m", "rq.cli", "worker", "-c", "config.rq", "default"),
    *("--worker-ttl", "16", "--job-monitoring-interval", "2", "--maintenance-interval", "10"),
)
HEARTBEAT_FAILED = re.compile(r"heartbeat of job \S+: Redis is unreachable")
WAITING_FOR_REDIS = re.compile(r"Worker [0-9a-f]+: Redis is unreachable")  # to claim a job, or record one
# From a SIGTERM to the exit, past the horse's end: a back-off step, a heartbeat under way, the signal's
# own write (RQ notes the stop in the worker's entry), and the two writes of the worker's teardown.
STOP_BOUND = {"restarted": 45, "stalled": 45 + 4 * SOCKET_TIMEOUT}


def start_worker(
    processes: Any, server: RedisServer, log: Path, worker_class: str = "ForkingWorker", *options: str
) -> subprocess.Popen[bytes]:
    """`options` are added to WORKER's (the last of an option given twice counts)."""
    worker = processes(*WORKER, "-w", f"workers.{worker_class}", *options, log=log)
    connection = Redis.from_url(server.url)
    wait_until(lambda: blocked_clients(connection), 60, "the worker to wait for a job")
    return worker


def start_job(seconds: int, timeout: int | None = None) -> tuple[Any, float]:
    """A sleep job, once it has started, and when that was seen; with a time-out, a plain function's,
    failed when the time-out is up."""
    if timeout is None:
        job = enqueue("sleep", seconds)
    else:
        queue = rq_classes.Queue(connection=redis_client())
        job = queue.enqueue("tests.compat_jobs.sleep", seconds, job_timeout=timeout)
    wait_until(lambda: job.get_status(refresh=True) == "started", 60, "the job to start", every=0.05)
    return job, time.monotonic()


def take_away(server: RedisServer, outage: str) -> None:
    if outage == "restarted":
        server.stop()
    else:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)


def bring_back(server: RedisServer, outage: str) -> None:
    if outage == "restarted":
        server.start()
    else:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGCONT)


def heartbeat_failures(log: Path) -> int:
    return len(HEARTBEAT_FAILED.findall(log.read_text()))


def failures(log: Path) -> int:
    """The worker's lines that say a call to Redis failed: a heartbeat, or a claim (with the last job's
    outcome)."""
    text = log.read_text()
    return len(HEARTBEAT_FAILED.findall(text)) + len(WAITING_FOR_REDIS.findall(text))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("outage", ["stalled", "restarted"])
def test_a_forking_worker_waits_out_an_outage_mid_job_then_records_it_and_runs_the_next(
    own_redis: RedisServer,  # noqa: F811
    processes: Any,
    tmp_path: Path,
    outage: str,
) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(processes, own_redis, log)
    job, started = start_job(6)

    take_away(own_redis, outage)
    time.sleep(max(0.0, started + 7 - time.monotonic()))  # past the job's end, Redis away
    # Away until a call fails after it: a heartbeat under way since before the end (stalled: it hangs),
    # or the worker's first try to record the job (restarted: refused at once)
    before = failures(log)
    wait_until(lambda: failures(log) > before, SOCKET_TIMEOUT + 45, "a call to fail after the job's end")
    assert heartbeat_failures(log) and worker.poll() is None, log.read_text()
    back = time.monotonic()
    bring_back(own_redis, outage)

    assert wait_for(job, timeout=120).status == "finished", log.read_text()
    recorded = time.monotonic() - back
    assert job.results()[0].return_value == {"slept": 6} and len(job.results()) == 1
    following = enqueue("sleep", 0)
    assert wait_for(following, timeout=60).status == "finished", log.read_text()
    assert worker.poll() is None
    text = log.read_text()
    assert "quitting" not in text and "Traceback" not in text, text
    print(
        f"{outage}: {back - started:.1f} s away in all, {heartbeat_failures(log)} heartbeat failure lines; "
        f"job recorded {recorded:.1f} s after Redis was back, and the next job ran"
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("worker_class", ["ForkingWorker", "InProcessWorker"])
def test_a_job_that_fails_while_redis_is_away_is_found_abandoned_and_the_worker_goes_on(
    own_redis: RedisServer,  # noqa: F811
    processes: Any,
    tmp_path: Path,
    worker_class: str,
) -> None:
    """Its failure can't be written (by its horse, or in the worker), nor read back by RQ's handling of a
    horse's death: one line says so, and once Redis is back RQ's registry cleanup fails the job as
    abandoned."""
    log = tmp_path / "worker.log"
    # RQ's registry cleanup every second, not every 10: the job is found as soon as its heartbeat lapses
    worker = start_worker(processes, own_redis, log, worker_class, "--maintenance-interval", "1")
    job, _ = start_job(30, timeout=3)
    own_redis.stop()
    wait_until(lambda: f"job {job.id} ended unrecorded" in log.read_text(), 60, "the job to fail")
    own_redis.start()
    back = time.monotonic()

    following = enqueue("sleep", 0)
    assert wait_for(following, timeout=60).status == "finished", log.read_text()
    wait_until(lambda: job.get_status(refresh=True) == "failed", 120, "the job found abandoned")
    result = job.latest_result()
    assert result is not None and "AbandonedJobError" in (result.exc_string or "")
    assert worker.poll() is None and "quitting" not in log.read_text()
    print(f"{worker_class}: failed as abandoned {time.monotonic() - back:.1f} s after Redis was back")


@pytest.mark.timeout(300)
def test_a_sigterm_in_an_outage_mid_job_stops_the_worker_once_its_horse_ends(
    own_redis: RedisServer,  # noqa: F811
    processes: Any,
    tmp_path: Path,
) -> None:
    """A warm stop: the horse finishes its job (the worker has its success, unrecorded), then it exits."""
    log = tmp_path / "worker.log"
    worker = start_worker(processes, own_redis, log)
    job, started = start_job(10)
    own_redis.stop()
    wait_until(lambda: heartbeat_failures(log), 45, "a heartbeat to fail")
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(max(0.0, started + 10 - time.monotonic()) + STOP_BOUND["restarted"])
    stopped = time.monotonic() - started
    text = log.read_text()
    assert code == 0 and f"job {job.id} finished unrecorded" in text, text  # asked to stop, after the job
    print(f"SIGTERM mid-job in an outage: stopped {stopped:.1f} s into a 10 s job")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("outage", ["stalled", "restarted"])
def test_a_sigterm_in_an_outage_after_the_job_stops_the_worker(
    own_redis: RedisServer,  # noqa: F811
    processes: Any,
    tmp_path: Path,
    outage: str,
) -> None:
    """At once if Redis refuses connections; a stalled one makes each of the last writes wait for the
    socket timeout."""
    log = tmp_path / "worker.log"
    # Between the job and the SIGTERM, only the worker's call that records the job: no heartbeat or
    # maintenance falls due, and a plain function's horse ends with it (a registry job's then sends its
    # metrics, which a stalled Redis holds for the socket timeout)
    quiet = ("--job-monitoring-interval", "30", "--maintenance-interval", "60")
    worker = start_worker(processes, own_redis, log, "ForkingWorker", *quiet)
    job, _ = start_job(2, timeout=60)
    take_away(own_redis, outage)
    wait_until(lambda: WAITING_FOR_REDIS.search(log.read_text()), 4 * SOCKET_TIMEOUT + 30, "the wait")
    assert worker.poll() is None, log.read_text()
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(STOP_BOUND[outage]) == 0, log.read_text()
    assert f"job {job.id} finished unrecorded" in log.read_text()  # it ended in the outage
    print(f"SIGTERM after the job, Redis {outage}: stopped in {time.monotonic() - sent:.1f} s")
    bring_back(own_redis, outage)
