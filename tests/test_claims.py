"""A job id that a worker's blocking wait handed over is claimed once, whoever else reaches for it: a
late BLPOP reply, a claim retried after an outage, a claim made as the job arrived; and a pop that
a failover kept without its claim is run."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.utils import now, utcformat

from config.put_back import put_back
from launcher.redis_server import RedisServer, free_port
from tests import compat_jobs
from tests.support import blocked_clients, wait_until
from workers import InProcessWorker
from workers.claims import CLAIM_SCRIPT, WHERE_NOWHERE, WHERE_UNKNOWN, Popped, lapsed


def test_a_job_claimed_as_it_arrived_goes_to_one_claim(connection: Redis) -> None:
    """Worker B's wait on one queue claimed the job as it arrived; worker A retries a claim of it after
    an outage: one of them."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1)
    arrived = InProcessWorker(["default"], connection=connection).wait_and_claim("rq:queue:default", 1)
    assert arrived and arrived.job_id == job.id and arrived.claimed
    retried = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", job.id, WHERE_UNKNOWN)
    )
    assert retried is None
    assert connection.zcard("rq:executions:" + job.id) == 1


def test_a_late_blpop_reply_never_runs_a_job_put_back_and_taken(connection: Redis) -> None:
    """The orphan recovery put the job back and another worker took it: the late reply claims nothing;
    put back and not yet taken, the late reply takes it, and its copy leaves the queue."""
    queue = Queue("default", connection=connection)
    job = queue.enqueue(compat_jobs.add, 1, 1)
    taken = InProcessWorker(["default"], connection=connection).claim()
    assert taken and taken[0].id == job.id
    late = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", job.id, WHERE_NOWHERE)
    )
    assert late is None
    other = queue.enqueue(compat_jobs.add, 2, 2)
    connection.lpush("rq:queue:default", other.id)  # popped once, put back: a copy on the queue
    late = InProcessWorker(["default"], connection=connection).claim(
        Popped("rq:queue:default", other.id, WHERE_NOWHERE)
    )
    assert late and late[0].id == other.id
    assert connection.lrange("rq:queue:default", 0, -1) == []


def test_a_job_whose_claim_a_failover_lost_is_put_back_once_the_worker_is_past_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The new master got the blocking wait's pop of a job, not the claim that followed on the old
    one: queued on no list. The worker, past the outage (its writes refused while its Redis is a
    replica), puts it back and runs it; a job it had claimed before is not run again."""
    server = RedisServer(free_port(), tmp_path, admin_commands=True).start()
    try:
        connection = Redis(port=server.port)
        queue = Queue("default", connection=connection)
        worker = InProcessWorker(["default", "email"], connection=connection)
        done = queue.enqueue(compat_jobs.add, 1, 1)
        worker.work(burst=True)
        lost = queue.enqueue(compat_jobs.add, 2, 2)
        assert worker.wait_for_job(1) == Popped("rq:queue:default", lost.id, WHERE_NOWHERE)
        connection.replicaof("127.0.0.1", free_port())  # a failover as the worker sees it: READONLY
        threading.Timer(1.5, connection.replicaof, ("NO", "ONE")).start()  # then the new master
        with caplog.at_level(logging.WARNING):
            claimed = worker.claim_or_wait(None, None)  # as in a burst: claim, or stop
        assert claimed and claimed[0].id == lost.id
        worker.execute_job(*claimed)
        worker.record()
        assert "refusing writes" in caplog.text and f"Job {lost.id}: popped before an outage" in caplog.text
        assert [Job.fetch(job.id, connection).get_status() for job in (done, lost)] == ["finished"] * 2
        assert [connection.xlen(f"rq:results:{job.id}") for job in (done, lost)] == [1, 1]
        assert connection.llen("rq:queue:default") == 0
    finally:
        server.stop()


def test_a_claim_as_the_job_arrives_starts_it_at_redis_time_in_rq_format(connection: Redis) -> None:
    """The script stamps the start with Redis's TIME, in RQ's date format: the job's started_at, its
    execution's created_at and the worker's own start all say the same."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1)
    seconds, micros = connection.time()
    arrived = InProcessWorker(["default"], connection=connection).wait_and_claim("rq:queue:default", 1)
    assert arrived and arrived.claimed
    started = datetime.fromisoformat(arrived.claimed[1][4].decode())
    assert 0 <= started.timestamp() - (seconds + micros / 1e6) < 5
    job.refresh()
    assert job.started_at == started
    execution = connection.hget(f"rq:execution:{job.id}:{arrived.claimed[0]}", "created_at")
    assert execution is not None and float(execution) == pytest.approx(started.timestamp(), abs=1e-6)


@pytest.mark.parametrize(
    "seconds",
    [
        0,
        951_782_399,
        951_868_799,
        1_709_251_199,
        1_735_689_599,
        4_107_542_399,
        4_107_542_400,
        253_402_300_799,
    ],
)
def test_the_scripts_date_format_is_rqs(connection: Redis, seconds: int) -> None:
    """claim.lua's own date formatting (Redis's Lua has no date library) against RQ's, across leap days,
    year and century ends."""
    script = CLAIM_SCRIPT[
        CLAIM_SCRIPT.index("local function utcformat") : CLAIM_SCRIPT.index("local function claim")
    ]
    for micros in (0, 7, 999_999):
        written = connection.eval(
            script + "return utcformat(tonumber(ARGV[1]), tonumber(ARGV[2]))", 0, seconds, micros
        )
        expected = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
        assert written.decode() == utcformat(expected)


def test_a_job_an_outage_left_in_the_workers_own_list_runs_once(connection: Redis) -> None:
    """Its BLMOVE ran, its claim did not (Redis went away between the two): the worker's next wait
    claims it; put back on its queue by the orphan pass meanwhile, it is still claimed only once."""
    queue = Queue("default", connection=connection)
    worker = InProcessWorker(["default"], connection=connection)
    own = f"rq:worker:{worker.name}:popped"
    left = queue.enqueue(compat_jobs.add, 1, 1)
    connection.lmove("rq:queue:default", own, "LEFT", "RIGHT")
    arrived = worker.wait_and_claim("rq:queue:default", 1)  # nothing arrives: the one left is claimed
    assert arrived and arrived.job_id == left.id
    put = queue.enqueue(compat_jobs.add, 2, 2)
    connection.lmove("rq:queue:default", own, "LEFT", "RIGHT")
    assert put_back(connection, put.id, "default") == 1  # the orphan pass: on no list, back on its queue
    arrived = worker.wait_and_claim("rq:queue:default", 1)  # the copy on the queue moves in too
    assert arrived and arrived.job_id == put.id
    assert worker.wait_and_claim("rq:queue:default", 1) is None  # the copy: started, passed over
    assert connection.llen(own) == 0 and connection.llen("rq:queue:default") == 0
    assert [connection.zcard(f"rq:executions:{job.id}") for job in (left, put)] == [1, 1]


def test_the_workers_own_list_holds_up_no_job(connection: Redis) -> None:
    """An entry there no longer queued is passed over for the job that arrived; of two queued (one an
    outage left), the older is claimed and the other goes back to the front of its queue."""
    queue = Queue("default", connection=connection)
    worker = InProcessWorker(["default"], connection=connection)
    own = f"rq:worker:{worker.name}:popped"
    started = queue.enqueue(compat_jobs.add, 1, 1)
    assert worker.claim()
    connection.rpush(own, started.id)
    arrived = queue.enqueue(compat_jobs.add, 2, 2)
    claimed = worker.wait_and_claim("rq:queue:default", 1)
    assert claimed and claimed.job_id == arrived.id
    left, later = (queue.enqueue(compat_jobs.add, n, n) for n in (3, 4))
    connection.lmove("rq:queue:default", own, "LEFT", "RIGHT")
    claimed = worker.wait_and_claim("rq:queue:default", 1)
    assert claimed and claimed.job_id == left.id
    assert connection.lrange("rq:queue:default", 0, -1) == [later.id.encode()] and connection.llen(own) == 0


def test_a_script_cache_emptied_during_the_wait_loses_no_job(connection: Redis) -> None:
    """Redis restarted (or SCRIPT FLUSH) while the worker waited: the job its BLMOVE moved is claimed by
    the script on its own."""
    worker = InProcessWorker(["default"], connection=connection)
    got: list[Popped | None] = []
    waiting = threading.Thread(target=lambda: got.append(worker.wait_and_claim("rq:queue:default", 10)))
    waiting.start()
    wait_until(lambda: blocked_clients(connection), what="the worker's BLMOVE")
    connection.script_flush()
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1)
    waiting.join(15)
    assert got and got[0] and got[0].job_id == job.id
    assert connection.zcard("rq:executions:" + job.id) == 1


def test_a_claim_read_after_its_lease_lapsed_is_not_run(
    connection: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen worker, or one whose host was cut off, reads a claim Redis made long before: it runs the
    job only if its execution still stands (its lease); fresh, the claim costs no check at all."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1)
    worker = InProcessWorker(["default"], connection=connection)
    arrived = worker.wait_and_claim("rq:queue:default", 1)
    assert arrived and arrived.claimed
    execution_id, reply = arrived.claimed
    old = [*reply[:4], utcformat(now() - timedelta(seconds=60)).encode()]
    assert not lapsed(connection, old, execution_id, worker.log)  # late, its lease still holds
    connection.delete(f"rq:execution:{job.id}:{execution_id}")
    assert not lapsed(connection, reply, execution_id, worker.log)  # fresh: not checked
    with caplog.at_level(logging.WARNING):
        assert lapsed(connection, old, execution_id, worker.log)
    assert f"Job {job.id}: claimed 60 s ago, its lease lapsed since: not run here" in caplog.text
