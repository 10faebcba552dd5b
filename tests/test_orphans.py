"""A job that a blocking pop took for a client that never read it is put back on its queue, once, and
nothing else is touched (jobs/orphans.py): the lost reply made with a real client process, SIGSTOPped
while blocked in BLPOP on two queues, then SIGKILLed once Redis has popped a job for it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.job import Job

from config import get_settings
from config.rq_classes import Queue, configured_serializer
from jobs import submit
from jobs.orphans import SEEN, Timing, recover_orphans
from jobs.scheduled import release_due
from launcher.stack import WORKER_ARGS
from scheduler import sync
from tests.support import start_python, wait_until
from workers import InProcessWorker
from workers.claims import WHERE_NOWHERE, Popped

QUEUES = ("default", "email")
QUICK = Timing(grace=1, confirm=1, slack=1.5)  # the defaults' rules, without their minutes


@pytest.fixture
def popper(connection: Redis) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a plain redis-py client blocked in a pop on queues, as a waiting worker is."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*queues: str, command: str = "blpop") -> subprocess.Popen[bytes]:
        keys = [f"rq:queue:{name}" for name in queues]
        args = f"{keys}, 0" if command == "blpop" else f"{keys[0]!r}, {keys[0] + ':intermediate'!r}, 0"
        code = f"import redis; redis.Redis.from_url({get_settings().redis_url!r}).{command}({args})"
        before = blocked(connection)
        process = start_python("-c", code)
        started.append(process)
        wait_until(lambda: blocked(connection) > before, what=f"the client blocked in {command.upper()}")
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def blocked(connection: Redis) -> int:
    return sum("b" in client["flags"] for client in connection.client_list())


def pops(connection: Redis) -> int:
    """Connections whose last command is a blocking pop: blocked in it, or served and quiet since."""
    return sum(client["cmd"] in ("blpop", "blmove") for client in connection.client_list())


def lose(connection: Redis, client: subprocess.Popen[bytes], *args: Any) -> Job:
    """Submit a job while `client` is frozen in its BLPOP, so that Redis pops it into its socket; then
    kill the client (its connection closes with the reply unread)."""
    os.kill(client.pid, signal.SIGSTOP)
    job = submit(*args).job
    wait_until(lambda: connection.llen(f"rq:queue:{job.origin}") == 0, what="the frozen client's pop")
    client.kill()
    client.wait()
    wait_until(lambda: pops(connection) == 0, what="its connection closed")
    return job


def on_no_list(connection: Redis, job: Job) -> bool:
    queue = f"rq:queue:{job.origin}"
    return all(connection.lpos(key, job.id) is None for key in (queue, queue + ":intermediate"))


def sighted(connection: Redis, timing: Timing = QUICK) -> dict[str, int]:
    """The first pass that finds an orphan (a job counts once it was enqueued `slack` s before)."""
    return wait_until(lambda: (r := recover_orphans(connection, timing))["orphaned"] and r, what="a sighting")


def run_jobs(connection: Redis, worker: str) -> None:
    """Run every queued job in-process: RQ's SimpleWorker or the toolkit's, in the configured mode."""
    if worker == "rq":
        SimpleWorker(QUEUES, connection=connection, serializer=configured_serializer()).work(burst=True)
    else:
        InProcessWorker(list(QUEUES), connection=connection).work(burst=True)


@pytest.mark.parametrize("serializer", ["pickle", "json"])
@pytest.mark.parametrize("worker", ["rq", "toolkit"])
def test_a_job_popped_for_a_dead_client_is_put_back_at_the_front_and_runs_once(
    connection: Redis,
    popper: Callable[..., subprocess.Popen[bytes]],
    worker: str,
    serializer: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("RQKIT_SERIALIZER", serializer)
    get_settings.cache_clear()
    # Given a job popped for a client that died in its BLPOP
    lost = lose(connection, popper(*QUEUES), "sleep", (0,))
    assert lost.get_status(refresh=True) == "queued" and on_no_list(connection, lost)
    run_jobs(connection, worker)
    assert lost.get_status(refresh=True) == "queued"  # no worker can find it
    # When passes run: the first sights it, a later one puts it back, in front of a newer job
    first = sighted(connection)
    assert first["recovered"] == 0 and first["waiting"] == 1
    newer = submit("sleep", (0,)).job
    with caplog.at_level(logging.INFO, logger="jobs.orphans"):
        wait_until(lambda: recover_orphans(connection, QUICK)["recovered"], what="the put-back")
    assert connection.lrange("rq:queue:default", 0, -1) == [lost.id.encode(), newer.id.encode()]
    assert f"Job {lost.id}: queued but on no queue for " in caplog.text
    assert caplog.text.count("put back at the front of 'default'") == 1
    assert connection.ttl(f"rqkit:orphans:put-back:{lost.id}") > 0  # not put back again for a while
    # Then a worker runs it, once, and later passes leave it alone
    run_jobs(connection, worker)
    assert lost.get_status(refresh=True) == "finished" and len(lost.results()) == 1
    assert recover_orphans(connection, QUICK)["orphaned"] == 0 and connection.llen("rq:queue:default") == 0
    assert connection.hlen(SEEN) == 0


def test_a_pop_whose_client_may_still_read_it_is_held_until_its_connection_closes(
    connection: Redis, popper: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a client that popped a job and has not read it, its connection open (a worker whose host
    # is cut off, and whose network may come back before its socket times out)
    holder = popper(*QUEUES)
    os.kill(holder.pid, signal.SIGSTOP)
    held = submit("sleep", (0,)).job
    wait_until(lambda: connection.llen("rq:queue:default") == 0, what="the stopped client's pop")
    sighted(connection)
    report = wait_until(lambda: (r := recover_orphans(connection, QUICK))["waiting"] == 0 and r, what="due")
    assert report["held"] == 1 and report["recovered"] == 0 and on_no_list(connection, held)
    # When its connection closes, the job is put back
    holder.kill()
    holder.wait()
    wait_until(lambda: pops(connection) == 0, what="its connection closed")
    wait_until(lambda: recover_orphans(connection, QUICK)["recovered"], what="the put-back")
    assert connection.lrange("rq:queue:default", 0, -1) == [held.id.encode()]


def test_a_job_younger_than_the_grace_or_claimed_between_passes_is_left_alone(
    connection: Redis, popper: Callable[..., subprocess.Popen[bytes]]
) -> None:
    lost = lose(connection, popper(*QUEUES), "sleep", (0,))
    young = Timing(grace=3600, confirm=0, slack=QUICK.slack)
    sighted(connection, young)
    report = recover_orphans(connection, young)
    assert report["recovered"] == 0 and report["waiting"] == 1 and on_no_list(connection, lost)
    # A worker claims it between two passes (as a live worker does, milliseconds after its pop)
    worker = InProcessWorker(list(QUEUES), connection=connection)
    claimed = worker.claim(Popped("rq:queue:default", lost.id, WHERE_NOWHERE))
    assert claimed and lost.get_status(refresh=True) == "started"
    report = recover_orphans(connection, Timing(grace=0, confirm=0, slack=QUICK.slack))
    assert report["orphaned"] == report["recovered"] == 0 and on_no_list(connection, lost)
    assert connection.hlen(SEEN) == 0


def test_finished_failed_scheduled_queued_and_intermediate_jobs_are_never_touched(
    connection: Redis, popper: Callable[..., subprocess.Popen[bytes]]
) -> None:
    finished = submit("sleep", (0,)).job
    failed = Queue("default", connection=connection).enqueue("tests.compat_jobs.fail", "on purpose")
    run_jobs(connection, "toolkit")
    assert (finished.get_status(refresh=True), failed.get_status(refresh=True)) == ("finished", "failed")
    waiting = [submit("sleep", (0,), queue="email").job for _ in range(3)]
    later = submit("sleep", (0,), at=datetime.now(UTC) + timedelta(hours=1)).job
    popper("api", command="blmove")
    in_intermediate = submit("sleep", (0,), queue="api").job  # a one-queue worker's BLMOVE took it
    wait_until(lambda: connection.llen("rq:queue:api:intermediate") == 1, what="the BLMOVE")
    connection.hset("rq:job:odd", mapping={"status": "queued", "origin": "default", "enqueued_at": "soon"})
    connection.set("rq:job:plain", "not a hash")
    jobs = [finished, failed, *waiting, later, in_intermediate]
    before = {job.id: connection.hgetall(job.key) for job in jobs}
    time.sleep(QUICK.slack)  # old enough to be judged
    for _ in range(3):
        report = recover_orphans(connection, Timing(grace=0, confirm=0, slack=QUICK.slack))
        assert report["orphaned"] == report["recovered"] == 0 and report["queued"] == 5
    assert {job.id: connection.hgetall(job.key) for job in jobs} == before
    assert [connection.llen(f"rq:queue:{name}") for name in ("default", "email", "api")] == [0, 3, 0]


def test_release_due_runs_the_pass(connection: Redis, popper: Callable[..., subprocess.Popen[bytes]]) -> None:
    lose(connection, popper(*QUEUES), "sleep", (0,))
    report = wait_until(lambda: (r := release_due())["orphans"]["orphaned"] and r, what="a sighting")
    assert report["orphans"]["waiting"] == 1 and report["orphans"]["recovered"] == 0  # the defaults wait


def test_a_pass_over_100000_job_keys_reads_pages_not_lists(connection: Redis) -> None:
    """Its cost grows with the keys and the queues' lengths, never with their product: 10,000 queued
    jobs are read in 10 pages of their queue, not checked one by one."""
    stamp = "2020-01-01T00:00:00.000000Z"
    with connection.pipeline(transaction=False) as pipe:
        for n in range(100_000):
            status = "queued" if n < 10_000 else "finished"
            pipe.hset(
                f"rq:job:bulk-{n}", mapping={"status": status, "origin": "default", "enqueued_at": stamp}
            )
            if n < 10_000:
                pipe.rpush("rq:queue:default", f"bulk-{n}")
        pipe.execute()
    connection.lrem("rq:queue:default", 1, "bulk-5000")  # the one orphan
    calls = command_calls(connection)
    first = recover_orphans(connection, Timing(grace=0, confirm=0))
    second = recover_orphans(connection, Timing(grace=0, confirm=0))
    spent = {name: count - calls.get(name, 0) for name, count in command_calls(connection).items()}
    assert first["scanned"] == 100_000 and first["queued"] == 10_000 and first["orphaned"] == 1
    assert second["recovered"] == 1 and connection.lindex("rq:queue:default", 0) == b"bulk-5000"
    assert spent["hmget"] == 200_000 and spent["scan"] <= 2 * 140  # pages of about 1,000 keys
    assert spent["lrange"] <= 2 * (10 + 1) + 2  # the queue's pages, and its (empty) intermediate list
    assert spent["evalsha"] <= spent["scan"] + 1 and spent["lpos"] == 2  # a script a page, one put-back


def command_calls(connection: Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): stat["calls"] for name, stat in connection.info("commandstats").items()
    }


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_under_ups_parts_a_lost_job_is_back_on_its_queue_within_about_two_minutes(
    connection: Redis,
    popper: Callable[..., subprocess.Popen[bytes]],
    processes: Callable[..., subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default schedule's release-due, fired by `python -m scheduler` and run by a worker as `up`
    starts them, finds the job and puts it back: the figure docs/reliability.md gives."""
    monkeypatch.setenv("RQKIT_SCHEDULE", json.dumps({"release-due": get_settings().schedule["release-due"]}))
    get_settings.cache_clear()
    sync.sync()
    processes("-m", "scheduler", "-i", str(get_settings().scheduler_interval))
    processes("-m", "rq.cli", *WORKER_ARGS, "maintenance")
    lost = lose(connection, popper(*QUEUES), "sleep", (0,))
    started = time.monotonic()
    wait_until(lambda: connection.lpos("rq:queue:default", lost.id) is not None, timeout=300, what="put-back")
    took = time.monotonic() - started
    assert took < 190, f"back on its queue after {took:.0f} s"  # two passes a minute apart, and slack
    run_jobs(connection, "toolkit")
    assert lost.get_status(refresh=True) == "finished" and len(lost.results()) == 1
