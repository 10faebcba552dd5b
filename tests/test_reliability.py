"""Faults: workers killed, Redis restarted or away. Nothing queued is lost, nothing runs twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from config import RedisUnavailable, get_settings, rq_classes
from jobs import enqueue, submit, submit_many
from jobs.registry import RERUN_IF_CUT_SHORT
from jobs.runtime import RUNS
from launcher.children import descendants
from launcher.redis_server import RedisServer, free_port
from launcher.stack import WORKER_ARGS
from ops.outcomes import wait_for
from scheduler import sync as schedule_store
from tests.pictures import photo
from tests.support import blocked_clients, python, start_python, wait_until
from tests.test_schedule import fired

ABANDONED_WITHIN = 60  # s: heartbeat 5 + 15 s, then a registry sweep every 10 s, at most 25 s apart

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("queues", [("default",), ("email", "default")], ids=["BLMOVE", "BLPOP"])
def test_a_worker_killed_while_idle_takes_no_job_with_it(
    queues: tuple[str, ...], connection: Redis, start_worker: Any
) -> None:
    """kill -9 of a worker must not leave its forked scheduler holding the worker's blocked BLPOP or
    BLMOVE: Redis would hand the next job to that socket, which nobody reads."""
    victim = start_worker("--with-scheduler", *queues)
    children = wait_until(lambda: descendants(victim.pid), what="the worker's scheduler process")
    wait_until(lambda: blocked_clients(connection), what="its dequeue")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_until(lambda: not children & descendants(1), 5, "its children to die with it")
    wait_until(lambda: not blocked_clients(connection), 5, "Redis to drop its blocked connection")
    job = enqueue("sleep", 0)
    start_worker("default")
    assert wait_for(job, timeout=20).status == "finished"


def test_a_job_cut_short_by_kill_9_is_found_abandoned_and_rerun_elsewhere(
    connection: Redis, start_worker: Any, media: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL to workers and their work-horses mid-job: another worker finds the jobs abandoned
    within the bound that `up`'s worker options give (ABANDONED_WITHIN); it fails the one-off job
    with that reason, and runs the idempotent one (a thumbnail) again to the end."""
    monkeypatch.setenv("RQKIT_THUMBNAIL_MAX_PIXELS", "200000000")
    photo(media.root / "huge.png", (12000, 12000), compress_level=1)  # about a second of work
    victims = [start_worker(*WORKER_ARGS[3:], queue) for queue in ("images", "default")]
    wait_until(lambda: len(blocked_clients(connection)) == 2, what="the first workers")
    job, one_off = enqueue("thumbnail", "huge.png"), enqueue("sleep", 60)
    both_started = lambda: all(j.get_status(refresh=True) == "started" for j in (job, one_off))  # noqa: E731
    wait_until(both_started, 20, "the jobs to start")
    for victim in victims:
        for pid in {victim.pid} | descendants(victim.pid):
            os.kill(pid, signal.SIGKILL)
        victim.wait()
    killed_at = time.monotonic()
    assert job.get_status(refresh=True) == "started"  # killed mid-job, not after it

    start_worker(*WORKER_ARGS[3:], "images", "default")
    wait_until(lambda: job.get_status(refresh=True) != "started", ABANDONED_WITHIN, "the abandoned job")
    detected = time.monotonic() - killed_at
    assert wait_for(job, timeout=60).status == "finished"
    failed = wait_for(one_off, timeout=30)
    assert failed.status == "failed" and "AbandonedJobError" in (failed.reason or ""), failed
    job.refresh()
    assert job.retries_left == len(RERUN_IF_CUT_SHORT) - 1
    assert all(media.output(size, "huge.png.jpg").exists() for size in get_settings().thumbnail_sizes)
    print(f"abandoned job detected {detected:.1f} s after kill -9, then rerun to the end")


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may shut down and start again on the same data."""
    server = RedisServer(free_port(), tmp_path / "redis").start()
    monkeypatch.setenv("REDIS_URL", server.url)
    get_settings.cache_clear()
    yield server
    server.stop()


def held(connection: Redis, queued: list[str], scheduled: list[str]) -> tuple[int, int]:
    """How many of `queued` are in the queue, and of `scheduled` in RQ's scheduled registry."""
    in_queue = {job_id.decode() for job_id in connection.lrange("rq:queue:default", 0, -1)}
    in_registry = {job_id.decode() for job_id in connection.zrange("rq:scheduled:default", 0, -1)}
    return len(in_queue & set(queued)), len(in_registry & set(scheduled))


def statuses(connection: Redis, ids: list[str]) -> Counter[str]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        return Counter((status or b"missing").decode() for status in pipe.execute())


def result_counts(connection: Redis, ids: list[str]) -> Counter[int]:
    """How many results each job has: 1 for a job that ran once."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.xlen(f"rq:results:{job_id}")
        return Counter(pipe.execute())


@pytest.mark.timeout(600)
def test_a_redis_restart_keeps_every_job_and_everything_reconnects(
    own_redis: RedisServer, processes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 queued and 1,000 scheduled jobs survive SHUTDOWN and a start on the same data; the workers
    and `python -m scheduler`, running all along, reconnect by themselves and run each job once."""
    connection = Redis.from_url(own_redis.url)
    monkeypatch.setenv("RQKIT_SCHEDULE", json.dumps({"tick": {"job": "sleep", "args": [0], "every": 2}}))
    get_settings.cache_clear()
    schedule_store.sync()
    for _ in range(2):
        processes("-m", "rq.cli", *WORKER_ARGS, "default")
    processes("-m", "scheduler", "-i", "1")
    wait_until(lambda: len(blocked_clients(connection)) == 2, what="the workers")
    # Hold the work: suspend the workers, and wake each from its wait for a job to notice.
    assert python("-m", "rq.cli", "suspend", "-c", "config.rq").returncode == 0
    submit_many("sleep", [(0,)] * 2)
    states = lambda: [w.get_state() for w in rq_classes.Worker.all(connection=connection)]  # noqa: E731
    wait_until(lambda: states() == ["suspended"] * 2, what="the workers to be suspended")

    queued = [job.id for job in submit_many("sleep", [(0,)] * 10_000).jobs]
    due = datetime.now(UTC) + timedelta(seconds=20)
    scheduled = [submit("sleep", (0,), at=due).job.id for _ in range(1_000)]
    before = held(connection, queued, scheduled)
    assert before == (10_000, 1_000)

    connection.shutdown()  # SHUTDOWN: Redis flushes its append-only file and exits
    assert own_redis.process is not None and own_redis.process.wait(10) == 0
    time.sleep(2)  # the workers and the scheduler meet a closed port meanwhile
    restarted = time.time()
    own_redis.start()
    assert held(connection, queued, scheduled) == before
    assert statuses(connection, queued + scheduled) == {"queued": 10_000, "scheduled": 1_000}

    assert python("-m", "rq.cli", "resume", "-c", "config.rq").returncode == 0
    everything = queued + scheduled
    wait_until(lambda: statuses(connection, everything) == {"finished": 11_000}, 400, "every job", every=2)
    assert result_counts(connection, queued + scheduled) == {1: 11_000}  # each ran exactly once
    wait_until(lambda: [d for d in fired(connection, "tick") if d > restarted], 20, "the schedule to fire")
    print(f"before and after the restart: {before[0]:,} queued, {before[1]:,} scheduled; all ran once")


def test_while_redis_is_away_enqueue_fails_cleanly_and_nothing_crashes(
    own_redis: RedisServer, processes: Any
) -> None:
    """Enqueue says which Redis is unreachable and writes nothing; idle workers and the scheduler wait
    for it without exiting or spinning, and the work resumes when it is back."""
    connection = Redis.from_url(own_redis.url)
    worker = processes("-m", "rq.cli", *WORKER_ARGS, "default")
    scheduler = processes("-m", "scheduler", "-i", "1")
    wait_until(lambda: blocked_clients(connection), what="the worker")
    own_redis.stop()

    refused = python("cli.py", "enqueue", "sleep", "0")
    assert refused.returncode == 1 and refused.stderr == f"Error: Redis is not reachable at {own_redis.url}\n"
    with pytest.raises(RedisUnavailable):
        submit_many("sleep", [(0,)] * 100)
    cpu_before = cpu_seconds(worker.pid) + cpu_seconds(scheduler.pid)
    time.sleep(8)
    assert worker.poll() is None and scheduler.poll() is None  # no exit, so no crash loop under `up`
    assert cpu_seconds(worker.pid) + cpu_seconds(scheduler.pid) - cpu_before < 1.0  # and no spinning

    own_redis.start()
    assert not connection.keys("rq:job:*")  # the refused enqueues left nothing behind
    job = enqueue("sleep", 0)
    assert wait_for(job, timeout=60).status == "finished"


def test_a_worker_stops_at_once_on_sigterm_while_redis_is_away(
    own_redis: RedisServer, processes: Any
) -> None:
    connection = Redis.from_url(own_redis.url)
    worker = processes("-m", "rq.cli", *WORKER_ARGS, "default")
    wait_until(lambda: blocked_clients(connection), what="the worker")
    own_redis.stop()
    time.sleep(3)  # it meets the outage, and waits for Redis
    worker.terminate()
    assert worker.wait(10) == 0


def test_a_busy_worker_outlives_a_redis_outage_and_records_its_job(
    own_redis: RedisServer, processes: Any, tmp_path: Path
) -> None:
    """Redis stops while the work-horse runs a job and comes back after it ended: the worker waits
    (stock RQ's exits with a traceback), then records the job once; what it can't record meanwhile
    (the run's metrics) is one line, not a traceback. (Without --with-scheduler: RQ's forked scheduler
    dies of an outage with a traceback; the worker starts it again.)"""
    connection = Redis.from_url(own_redis.url)
    log = tmp_path / "worker.log"
    args = [arg for arg in WORKER_ARGS if arg != "--with-scheduler"]
    worker = processes("-m", "rq.cli", *args, "default", log=log)
    wait_until(lambda: blocked_clients(connection), what="the worker")
    job = enqueue("sleep", 3)
    wait_until(lambda: job.get_status(refresh=True) == "started", what="the job to start")
    own_redis.stop()
    time.sleep(6)  # the job ends while Redis is away
    assert worker.poll() is None
    own_redis.start()
    assert wait_for(job, timeout=60).status == "finished"
    assert len(job.results()) == 1 and worker.poll() is None
    assert "Traceback" not in log.read_text(), log.read_text()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PRODUCER = """
import json, sys
from jobs import submit_many
ids = []
for _ in range(int(sys.argv[1]) // 1000):
    ids += submit_many("sleep", [(0,)] * 1000).jobs.ids
print(json.dumps(ids))
"""


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.timeout(600)
def test_100000_jobs_from_4_producers_run_exactly_once_on_2_workers(
    own_redis: RedisServer, processes: Any
) -> None:
    """Four producer processes enqueue 25,000 jobs each (in bulk, 1,000 at a time) while two of the
    toolkit's in-process workers run them: every job finishes exactly once, and the workers' memory
    stays flat."""
    connection = Redis.from_url(own_redis.url)
    worker_args = ("-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.InProcessWorker")
    workers = [processes(*worker_args, "--quiet", "default") for _ in range(2)]
    wait_until(lambda: len(blocked_clients(connection)) == 2, what="the workers")
    started = time.monotonic()
    producers = [start_python("-c", PRODUCER, "25000", stdout=subprocess.PIPE) for _ in range(4)]
    ids = [job_id for producer in producers for job_id in json.loads(producer.communicate(timeout=300)[0])]
    assert len(ids) == len(set(ids)) == 100_000

    finished = lambda: connection.zcard("rq:finished:default")  # noqa: E731
    samples: list[tuple[int, list[float]]] = []

    def all_done() -> bool:
        samples.append((finished(), [rss_mb(worker.pid) for worker in workers]))
        return samples[-1][0] == 100_000

    wait_until(all_done, 400, "every job", every=1)
    elapsed = time.monotonic() - started
    assert statuses(connection, ids) == {"finished": 100_000}
    assert result_counts(connection, ids) == {1: 100_000}  # one result each: none ran twice
    assert int(connection.hget(RUNS, "sleep\tdefault\tsucceeded") or 0) == 100_000  # runs counted
    assert connection.llen("rq:queue:default") == 0 and not connection.zcard("rq:wip:default")
    assert all(worker.poll() is None for worker in workers)
    warm = next(rss for done, rss in samples if done >= 10_000)
    end = samples[-1][1]
    assert all(after - before < 5 for before, after in zip(warm, end, strict=True)), (warm, end)
    print(
        f"100,000 jobs from 4 producers on 2 workers in {elapsed:.0f} s: 0 lost, 0 run twice; "
        f"worker RSS at 10,000 jobs {' and '.join(f'{mb:.1f}' for mb in warm)} MB, "
        f"at the end {' and '.join(f'{mb:.1f}' for mb in end)} MB"
    )
