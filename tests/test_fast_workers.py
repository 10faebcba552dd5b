"""The toolkit's fast workers against RQ's own: one suite of jobs, identical outcomes in Redis, and RQ's
tools (`rq info`, `rq requeue`, rq-dashboard, stop commands) at home with the jobs they ran."""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

import pytest
import rq
from redis import Redis
from rq import Callback, Queue, Retry, SimpleWorker
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from config import get_settings, rq_classes
from launcher.children import descendants
from launcher.dashboard import create_app
from tests import compat_jobs
from tests.outcomes import snapshot
from tests.support import blocked_clients, python, wait_until, work_horses
from workers import ForkingWorker, InProcessWorker

SUITE: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {
    "add": (compat_jobs.add, (2, 3), {}),
    "nothing": (compat_jobs.nothing, (), {}),
    "no-result": (compat_jobs.add, (1, 1), {"result_ttl": 0}),
    "kept-result": (compat_jobs.add, (1, 2), {"result_ttl": -1}),
    "short-result": (compat_jobs.add, (1, 3), {"result_ttl": 100}),
    "fail": (compat_jobs.fail, ("boom",), {}),
    "fail-retried": (compat_jobs.fail, ("again",), {"retry": Retry(max=2)}),
    "time-out": (compat_jobs.sleep, (3,), {"job_timeout": 1}),
    "meta": (compat_jobs.keep_in_meta, (), {"meta": {"given": 1}}),
    "ask-again": (compat_jobs.ask_again, (2,), {}),
    "unpicklable": (compat_jobs.unpicklable, (), {}),
    "callbacks": (compat_jobs.add, (4, 4), {"on_success": Callback(compat_jobs.record_success)}),
    "failure-callback": (compat_jobs.fail, ("cb",), {"on_failure": Callback(compat_jobs.record_failure)}),
    "parent": (compat_jobs.add, (5, 5), {}),
    "child": (compat_jobs.add, (6, 6), {"depends_on": "parent"}),
}
PAIRS = [(SimpleWorker, InProcessWorker), (rq.Worker, ForkingWorker)]


def enqueue_suite(connection: Redis) -> dict[str, str]:
    """Every job of the suite on queue `default`; their ids by name."""
    queue = Queue("default", connection=connection)
    ids: dict[str, str] = {}
    for name, (func, args, options) in SUITE.items():
        options = dict(options)
        if "depends_on" in options:
            options["depends_on"] = ids[options["depends_on"]]
        ids[name] = queue.enqueue(func, *args, **options).id
    return ids


def run_suite(connection: Redis, worker_class: type[rq.worker.BaseWorker]) -> dict[str, Any]:
    connection.flushdb()
    ids = enqueue_suite(connection)
    worker = worker_class(["default"], connection=connection)
    worker.work(burst=True)
    return snapshot(connection, ids, [worker.name])


@pytest.mark.parametrize(("stock", "toolkit"), PAIRS, ids=["in-process", "forking"])
def test_the_suite_ends_the_same_under_rq_and_the_toolkit(
    connection: Redis, stock: type[rq.worker.BaseWorker], toolkit: type[rq.worker.BaseWorker]
) -> None:
    expected = run_suite(connection, stock)
    got = run_suite(connection, toolkit)
    for name in SUITE:
        assert got["jobs"][name] == expected["jobs"][name], name
    assert got["workers"] == expected["workers"]
    assert [k for k in got["keys"] if k not in expected["keys"]] == []
    assert [k for k in expected["keys"] if k not in got["keys"]] == []
    # the suite covers what it claims to: RQ's outcomes, read back through RQ
    jobs = expected["jobs"]
    assert jobs["add"]["return_value"] == "5" and jobs["add"]["registries"] == ["finished"]
    assert jobs["no-result"]["ttl"] == "gone"
    assert jobs["kept-result"]["ttl"] == "kept" and jobs["short-result"]["ttl"] == "expires"
    assert jobs["fail-retried"]["retries_left"] == 0 and jobs["fail-retried"]["registries"] == ["failed"]
    assert jobs["time-out"]["error"] == [
        "rq.timeouts.JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"
    ]
    assert jobs["meta"]["meta"]["seen_by"] and jobs["meta"]["meta"]["given"] == 1
    assert jobs["ask-again"]["results"][0] == "SUCCESSFUL" and jobs["ask-again"]["return_value"] == "3"
    assert jobs["callbacks"]["callbacks"] == ["success"]
    assert jobs["failure-callback"]["callbacks"] == ["failure"]
    assert jobs["child"]["status"] == JobStatus.FINISHED
    assert expected["workers"][0]["successful_job_count"]


@pytest.mark.parametrize("worker_class", [rq.Worker, ForkingWorker])
def test_a_work_horse_that_dies_fails_its_job_as_rq_does(
    connection: Redis, worker_class: type[rq.worker.BaseWorker]
) -> None:
    job = Queue("default", connection=connection).enqueue(compat_jobs.crash)
    worker_class(["default"], connection=connection).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert result and "Work-horse terminated unexpectedly; waitpid returned 768" in str(result.exc_string)


def start_worker_process(processes: Any, worker_class: str, *queues: str) -> Any:
    return processes("-m", "rq.cli", "worker", "-c", "config.rq", "-w", worker_class, *queues)


def live_workers(connection: Redis) -> list[rq.worker.BaseWorker]:
    return rq.Worker.all(connection=connection)


@pytest.mark.parametrize("worker_class", ["workers.ForkingWorker", "workers.InProcessWorker"])
def test_rq_info_requeue_and_the_dashboard_read_what_the_toolkit_ran(
    connection: Redis, processes: Any, worker_class: str
) -> None:
    start_worker_process(processes, worker_class, "default")
    worker = wait_until(lambda: live_workers(connection), what="the worker registers")[0]
    queue = Queue("default", connection=connection)
    ok, bad = queue.enqueue(compat_jobs.add, 20, 22), queue.enqueue(compat_jobs.fail, "no")
    wait_until(lambda: bad.get_status(refresh=True) == JobStatus.FAILED and ok.get_status() == "finished")

    info = python("-m", "rq.cli", "info", "-u", os.environ["REDIS_URL"], "default")
    assert info.returncode == 0, info.stderr
    assert re.search(r"default\s+\|\s+0", info.stdout)
    assert re.search(rf"{worker.name} \(.*\): idle default. jobs: 1 finished, 1 failed", info.stdout)

    app = create_app(get_settings()).test_client()
    base = "http://127.0.0.1:9181"
    listed = app.get("/0/data/jobs/default/failed/10/asc/1.json", base_url=base).get_json()
    assert [j["id"] for j in listed["jobs"]] == [bad.id]
    shown = app.get(f"/0/data/job/{ok.id}.json", base_url=base).get_json()
    assert shown["status"] == "finished" and shown["result"] == 42
    workers = app.get("/0/data/workers.json", base_url=base).get_json()["workers"]
    assert [w["name"] for w in workers] == [worker.name]
    assert workers[0]["successful_job_count"] == 1 and workers[0]["failed_job_count"] == 1

    again = python("-m", "rq.cli", "requeue", "-u", os.environ["REDIS_URL"], "--queue", "default", "--all")
    assert again.returncode == 0, again.stderr
    wait_until(lambda: len(bad.results()) == 2, what="the requeued job ran again")
    assert bad.get_status(refresh=True) == JobStatus.FAILED


def test_a_stop_command_stops_the_forking_workers_job(connection: Redis, processes: Any) -> None:
    start_worker_process(processes, "workers.ForkingWorker", "default")
    wait_until(lambda: live_workers(connection), what="the worker registers")
    job = Queue("default", connection=connection).enqueue(compat_jobs.sleep, 60)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED)
    time.sleep(0.2)
    send_stop_job_command(connection, job.id)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STOPPED, what="the job stops")
    assert job.id in Queue("default", connection=connection).failed_job_registry
    follow = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 2)
    wait_until(lambda: follow.get_status(refresh=True) == JobStatus.FINISHED, what="the worker goes on")


def test_workers_stay_compatible_with_a_stock_worker_on_the_same_queue(
    connection: Redis, processes: Any
) -> None:
    """A stock `rq worker` and the toolkit's on one queue: every job runs once, by one or the other."""
    start_worker_process(processes, "rq.worker.SimpleWorker", "default")
    start_worker_process(processes, "workers.InProcessWorker", "default")
    wait_until(lambda: len(live_workers(connection)) == 2, what="both workers register")
    queue = Queue("default", connection=connection)
    jobs = queue.enqueue_many([Queue.prepare_data(compat_jobs.add, (i, 0)) for i in range(400)])
    wait_until(lambda: queue.finished_job_registry.count == 400, what="all jobs finish", timeout=60)
    ran = [job for job in Job.fetch_many([j.id for j in jobs], connection=connection) if job]
    assert len({job.worker_name for job in ran}) == 2
    assert [job.return_value() for job in ran] == list(range(400))


def test_each_job_gets_a_fresh_horse_and_a_spare_waits_while_idle(connection: Redis, processes: Any) -> None:
    """Fork per job, isolation kept: no two jobs share a process. While idle, the next horse is
    forked and waiting; if it dies, the next job gets a new one; stopping the worker ends it."""
    worker = start_worker_process(processes, "workers.ForkingWorker", "default")
    spare = wait_until(lambda: work_horses(worker.pid), what="the spare horse")
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(compat_jobs.pid) for _ in range(3)]
    wait_until(lambda: all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs))
    pids = {job.return_value() for job in jobs}
    assert len(pids) == 3 and worker.pid not in pids and spare & pids

    killed = wait_until(lambda: work_horses(worker.pid), what="a new spare")
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not killed & descendants(worker.pid), 5, "the spare to die")
    after_kill = queue.enqueue(compat_jobs.pid)
    wait_until(lambda: after_kill.get_status(refresh=True) == JobStatus.FINISHED, what="a job after the kill")

    left = wait_until(lambda: work_horses(worker.pid), what="the spare")
    worker.terminate()
    assert worker.wait(10) == 0
    wait_until(lambda: not left & descendants(1), 5, "the spare to exit with the worker")


def test_the_horses_come_from_a_fork_server_replaced_if_killed_and_ending_with_the_worker(
    connection: Redis, processes: Any
) -> None:
    """The worker forks one process, which forks every horse (the worker, forked per job, copied each
    page it wrote after each fork); killed, the next job gets a new one; it ends with the worker."""
    worker = start_worker_process(processes, "workers.ForkingWorker", "default")
    queue = Queue("default", connection=connection)

    def parents(count: int) -> set[int]:
        jobs = [queue.enqueue(compat_jobs.parent) for _ in range(count)]
        wait_until(lambda: all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs))
        return {cast(int, job.return_value()) for job in jobs}

    (server,) = parents(3)
    assert server != worker.pid and server in descendants(worker.pid)
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: server not in descendants(worker.pid), 5, "the fork server to die")
    (new,) = parents(2)
    assert new not in (server, worker.pid) and new in descendants(worker.pid)
    worker.terminate()
    assert worker.wait(10) == 0
    wait_until(lambda: new not in descendants(1), 5, "the fork server to end with the worker")


def test_a_job_is_recorded_without_waiting_for_its_horse_to_be_reaped(
    connection: Redis, processes: Any
) -> None:
    """Once a horse's report is whole, the worker goes on: the horse exits by itself, and its fork server
    reaps it (here stopped by the job, so that the horse's exit status never comes while it is)."""
    worker = start_worker_process(processes, "workers.ForkingWorker", "default")
    job = Queue("default", connection=connection).enqueue(compat_jobs.stop_parent)
    try:
        wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, "the job recorded")
    finally:
        with suppress(ProcessLookupError):
            for pid in descendants(worker.pid):
                os.kill(pid, signal.SIGCONT)
    assert job.return_value() in descendants(worker.pid)  # the fork server, alive
    worker.terminate()
    assert worker.wait(10) == 0


def test_a_job_larger_than_a_message_to_the_fork_server_runs(connection: Redis) -> None:
    """The server's socket takes messages of some 200 kB: the job itself goes to the horse by pipe."""
    queue = Queue("default", connection=connection)
    text = base64.b64encode(os.urandom(300_000)).decode()  # RQ compresses a job's data: this stays big
    jobs = [queue.enqueue(compat_jobs.length, text), queue.enqueue(compat_jobs.add, 1, 2)]
    ForkingWorker(["default"], connection=connection).work(burst=True)
    assert [job.return_value() for job in jobs] == [400_000, 3]


def test_a_sigterm_to_the_workers_process_group_lets_the_running_job_finish(
    connection: Redis, processes: Any
) -> None:
    """As `kill -TERM -PGID` (supervisord's stopasgroup, a container's init) sends it: the worker's warm
    shutdown waits for the job, and the fork server, in the worker's group, lives on until then."""
    worker = start_worker_process(processes, "workers.ForkingWorker", "default")
    job = Queue("default", connection=connection).enqueue(compat_jobs.sleep, 1.5)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, what="the job to start")
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(10) == 0
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def test_the_horses_take_over_one_redis_connection_in_turn(connection: Redis) -> None:
    """A fresh horse per job, not a fresh Redis connection per job: the worker keeps one for them."""
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(compat_jobs.keep_in_meta) for _ in range(20)]  # a job that writes to Redis
    before = connection.info("stats")["total_connections_received"]
    ForkingWorker(["default"], connection=connection).work(burst=True)
    opened = connection.info("stats")["total_connections_received"] - before
    assert [job.return_value() for job in jobs] == [job.id for job in jobs]
    # The worker's own (RQ's command listener among them) and the two it keeps for its horses (theirs, and
    # one for a job's own client): 22 when each horse opened its own.
    assert opened <= 4, opened


def test_a_job_connecting_on_its_own_with_the_same_settings_takes_that_connection_over(
    connection: Redis,
) -> None:
    """The one connection the worker keeps for its horses goes to the job's own client if that connects
    first, to the same server and database as the same user; not to one that differs, and not on to the
    next horse once a job left its session changed."""
    kwargs = connection.connection_pool.connection_kwargs
    server, db = f"redis://{kwargs['host']}:{kwargs['port']}", int(kwargs.get("db") or 0)
    url, other_db = f"{server}/{db}", f"{server}/{db + 1}"
    connection.set("compat:seen", "here")
    connection.hset("compat:hash", "field", "value")
    calls = [
        (url, [["GET", "compat:seen"]]),
        (url, [["GET", "compat:seen"]], True),  # its own decoding: the same connection on the server
        (other_db, [["GET", "compat:seen"]]),  # another database: a connection of its own
        (url, [["SELECT", db + 1]]),  # leaves its session changed
        (url, [["GET", "compat:seen"]]),  # a fresh connection, in the URL's database
        (url, [["GET", "compat:seen"]]),
        (f"{url}?protocol=2", [["HGETALL", "compat:hash"]]),  # RESP2: a RESP3 session's map is misread
    ]
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(compat_jobs.with_own_client, *call) for call in calls]
    ForkingWorker(["default"], connection=connection).work(burst=True)
    ids, replies = zip(*(cast(tuple, job.return_value()) for job in jobs), strict=True)
    assert replies == ([b"here"], ["here"], [None], [True], [b"here"], [b"here"], [{b"field": b"value"}])
    assert ids[0] == ids[1] == ids[3] != ids[2]
    assert ids[4] == ids[5] not in (ids[0], ids[2])
    assert ids[6] not in ids[:6]


def test_a_job_client_on_a_kept_connection_repeats_its_handshake_only_where_it_differs(
    connection: Redis,
) -> None:
    """A job's own client that takes over a kept connection set up as it would set up its own does not
    say HELLO 3 (and CLIENT SETINFO...) on it again; one with a name of its own does, and has its name."""
    kwargs = connection.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/{int(kwargs.get('db') or 0)}"
    calls = [(url, [["INCR", "compat:n"]])] * 4 + [(f"{url}?client_name=mine", [["CLIENT", "GETNAME"]])]
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(compat_jobs.with_own_client, *call) for call in calls]
    with commands_logged(connection) as logged:
        opened = opened_in_all(connection)
        ForkingWorker(["default"], connection=connection).work(burst=True)
        opened = opened_in_all(connection) - opened
    ids, replies = zip(*(cast(tuple, job.return_value()) for job in jobs), strict=True)
    assert replies == ([1], [2], [3], [4], [b"mine"])
    assert len(set(ids)) == 1  # one connection on the server, the named one's too (its name is a session's)
    handshakes = [command for command in logged if command == b"HELLO 3"]
    assert len(handshakes) == opened + 1, (logged, opened)  # each connection opened, and the named one


def test_a_job_that_left_its_connection_in_another_protocol_leaves_the_next_job_a_right_one(
    connection: Redis,
) -> None:
    """RESP2 set by hand (HELLO 2) on a kept connection is seen (HELLO) where CLIENT INFO doesn't show it
    (Redis before 7.0): the next job's client, which skips its handshake on a kept one, gets another."""
    kwargs = connection.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/{int(kwargs.get('db') or 0)}"
    connection.hset("compat:hash", "field", "value")
    calls = [[["HELLO", 2]], [["HGETALL", "compat:hash"]], [["HGETALL", "compat:hash"]]]
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(compat_jobs.with_own_client, url, call) for call in calls]
    ForkingWorker(["default"], connection=connection).work(burst=True)
    ids, replies = zip(*(cast(tuple, job.return_value()) for job in jobs), strict=True)
    assert replies[1:] == ([{b"field": b"value"}], [{b"field": b"value"}])
    assert ids[0] != ids[1] == ids[2]


@contextmanager
def commands_logged(connection: Redis) -> Iterator[list[bytes]]:
    """The commands Redis runs meanwhile, each with its arguments (the slow log, at a threshold of 0)."""
    saved = connection.config_get("slowlog-*")
    connection.config_set("slowlog-max-len", 100000)
    connection.config_set("slowlog-log-slower-than", 0)
    connection.slowlog_reset()
    logged: list[bytes] = []
    try:
        yield logged
        logged += [entry["command"] for entry in reversed(connection.slowlog_get(100000))]
    finally:
        for name, value in saved.items():
            connection.config_set(name, value)


def opened_in_all(connection: Redis) -> int:
    return int(connection.info("stats")["total_connections_received"])


@pytest.mark.parametrize(
    ("leaving", "args"),
    [
        (compat_jobs.name_the_connection, ("leaked",)),
        (compat_jobs.stay_subscribed, ("leaked",)),
        (compat_jobs.crash, ()),
    ],
    ids=["named", "subscribed", "horse-died"],
)
def test_a_job_that_changes_its_connection_leaves_the_next_job_a_clean_one(
    connection: Redis, leaving: Any, args: tuple[Any, ...]
) -> None:
    queue = Queue("default", connection=connection)
    queue.enqueue(compat_jobs.add, 1, 1)  # the horses' connection in use before
    queue.enqueue(leaving, *args)
    after = [queue.enqueue(compat_jobs.connection_name) for _ in range(2)]
    ForkingWorker(["default"], connection=connection).work(burst=True)
    assert [job.get_status(refresh=True) for job in after] == [JobStatus.FINISHED] * 2
    assert [job.return_value() for job in after] == [None, None]
    assert not any(client.get("name") == "leaked" for client in connection.client_list())


def test_a_stop_command_leaves_the_in_process_worker_alive(connection: Redis, processes: Any) -> None:
    worker = start_worker_process(processes, "workers.InProcessWorker", "default")
    wait_until(lambda: live_workers(connection), what="the worker registers")
    queue = Queue("default", connection=connection)
    job = queue.enqueue(compat_jobs.sleep, 1)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED)
    send_stop_job_command(connection, job.id)  # RQ's SimpleWorker has no horse to kill either
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, what="the job to end")
    assert worker.poll() is None
    follow = queue.enqueue(compat_jobs.add, 1, 2)
    wait_until(lambda: follow.get_status(refresh=True) == JobStatus.FINISHED, what="the worker goes on")


@pytest.mark.parametrize("worker_class", ["workers.ForkingWorker", "workers.InProcessWorker"])
def test_an_idle_worker_keeps_beating(connection: Redis, processes: Any, worker_class: str) -> None:
    worker_process = start_worker_process(processes, worker_class, "--worker-ttl", "16", "default")
    worker = wait_until(lambda: live_workers(connection), what="the worker registers")[0]
    first = connection.hget(worker.key, "last_heartbeat")
    wait_until(lambda: connection.hget(worker.key, "last_heartbeat") != first, 10, "a heartbeat while idle")
    assert worker_process.poll() is None and connection.ttl(worker.key) > 60


def test_queues_named_like_the_scripts_replies_work(connection: Redis) -> None:
    queues = [Queue(name, connection=connection) for name in ("suspended", "dependents", "job")]
    jobs = [queue.enqueue(compat_jobs.add, 1, 1) for queue in queues for _ in range(2)]
    InProcessWorker([queue.name for queue in queues], connection=connection).work(burst=True)
    assert [job.get_status(refresh=True) for job in jobs] == [JobStatus.FINISHED] * 6
    assert [len(job.results()) for job in jobs] == [1] * 6


def test_a_success_is_recorded_once_even_if_recorded_again(connection: Redis) -> None:
    """A script whose reply was lost is sent again with the next one: it must not count twice."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 2, 2)
    worker = InProcessWorker(["default"], connection=connection)
    claimed = worker.claim()
    assert claimed and claimed != "suspended"
    worker.execute_job(*claimed)
    success = worker._unrecorded
    worker.record()
    worker._unrecorded = success
    worker.record()
    assert len(job.results()) == 1 and job.get_status(refresh=True) == JobStatus.FINISHED
    assert connection.hget(worker.key, "successful_job_count") == b"1"


def test_a_process_the_job_leaves_behind_does_not_hold_up_the_forking_worker(
    connection: Redis, processes: Any
) -> None:
    """Without `-c config.rq` (no parent-death signal for the horse's children), a process the job
    forked keeps the horse's pipe open: the worker must go by the horse's exit, not the pipe's end."""
    url = os.environ["REDIS_URL"]
    worker = processes("-m", "rq.cli", "worker", "-u", url, "-w", "workers.ForkingWorker", "default")
    wait_until(lambda: live_workers(connection), what="the worker registers")
    queue = Queue("default", connection=connection)
    # A first job, so that the next one runs in a horse forked after the worker's wait had connected.
    first = queue.enqueue(compat_jobs.add, 1, 1)
    wait_until(lambda: first.get_status(refresh=True) == JobStatus.FINISHED, what="a first job")
    job = queue.enqueue(compat_jobs.leave_a_child, 10)
    wait_until(
        lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 5, "the job, before its child ends"
    )
    # Killed while it waits for a job, with that child still alive: the next job must not be lost to
    # a socket of its wait that the child would hold open.
    wait_until(lambda: blocked_clients(connection), what="its wait")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_until(lambda: not blocked_clients(connection), 5, "Redis to drop the wait")
    later = queue.enqueue(compat_jobs.add, 1, 1)
    SimpleWorker(["default"], connection=connection).work(burst=True)
    assert later.get_status(refresh=True) == JobStatus.FINISHED


@pytest.mark.parametrize("worker_class", ["workers.ForkingWorker", "workers.InProcessWorker"])
def test_a_worker_stays_registered_after_a_job_that_fails(
    connection: Redis, processes: Any, worker_class: str
) -> None:
    """A failure goes through RQ's own code: the worker's key must get its idle TTL back then too, or it
    expires while the worker waits for the next job (as `up` runs them: the key lives 5 + 15 s after a
    claim, and the worker waits up to 25 s)."""
    options = ("--worker-ttl", "40", "--job-monitoring-interval", "5")
    start_worker_process(processes, worker_class, *options, "default")
    worker = wait_until(lambda: live_workers(connection), what="the worker registers")[0]
    failed = Queue("default", connection=connection).enqueue(compat_jobs.fail, "no")
    wait_until(lambda: failed.get_status(refresh=True) == JobStatus.FAILED, what="the failure")
    wait_until(lambda: blocked_clients(connection), what="the worker waits for a job")
    assert connection.ttl(worker.key) > 40


class PrefixedJob(Job):
    """A job class that keeps its hashes under a key prefix of its own."""

    redis_job_namespace_prefix = "custom:job:"


class RecordingWorker(ForkingWorker):
    """A subclass that does its own thing around each job, as users' subclasses do."""

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        job.meta["performed_by_subclass"] = True
        job.save_meta()
        return super().perform_job(job, queue, execution)


@pytest.mark.parametrize("worker_class", [ForkingWorker, InProcessWorker])
def test_plain_rq_queues_are_taken_as_they_are(connection: Redis, worker_class: type[Any]) -> None:
    """Most code that starts a worker makes plain rq.Queue objects: the toolkit's workers take them."""
    queue = rq.Queue("default", connection=connection)
    job = queue.enqueue(compat_jobs.add, 1, 2)
    worker = worker_class([queue], connection=connection)
    assert worker.work(burst=True) and not worker.rq_path_reason
    assert job.get_status(refresh=True) == JobStatus.FINISHED and job.return_value() == 3


@pytest.mark.parametrize("worker_class", [ForkingWorker, InProcessWorker])
def test_a_job_class_with_its_own_key_prefix_takes_rqs_path(
    connection: Redis, worker_class: type[Any]
) -> None:
    """The claim script writes RQ's own keys: a job kept elsewhere goes through RQ's code, not lost."""
    queue = rq.Queue("default", connection=connection, job_class=PrefixedJob)
    job = queue.enqueue(compat_jobs.add, 2, 2)
    assert connection.exists("custom:job:" + job.id)
    worker = worker_class([queue], connection=connection, job_class=PrefixedJob)
    assert worker.rq_path_reason == "job keys under 'custom:job:'"
    worker.work(burst=True)
    assert PrefixedJob.fetch(job.id, connection=connection).return_value() == 4


def test_a_subclass_that_overrides_perform_job_gets_it_called(connection: Redis) -> None:
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 3, 3)
    worker = RecordingWorker(["default"], connection=connection)
    assert worker.rq_path_reason == "RecordingWorker.perform_job is replaced"
    worker.work(burst=True)
    job.refresh()
    assert job.return_value() == 6 and job.meta["performed_by_subclass"] is True


@pytest.mark.parametrize("log_description", [True, False])
def test_the_worker_names_each_job_as_it_takes_it(
    connection: Redis, caplog: pytest.LogCaptureFixture, log_description: bool
) -> None:
    """RQ's INFO line as a job is taken, with its description unless log_job_description is off."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 4, 4)
    worker = ForkingWorker(["default"], connection=connection, log_job_description=log_description)
    with caplog.at_level("INFO", logger="rq.worker"):
        worker.work(burst=True)
    taken = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().endswith(f"default: {job.description} ({job.id})")
    ]
    assert len(taken) == int(log_description)
    assert any(r.getMessage().endswith(f"default: {job.id}") for r in caplog.records) != log_description


def test_the_heartbeat_grace_is_15_seconds_past_the_monitoring_interval(connection: Redis) -> None:
    """Deliberate, against RQ's 60 s: a worker killed mid-job has its job found abandoned sooner."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1, job_timeout=300)
    assert rq.Worker(["default"], connection=connection).get_heartbeat_ttl(job) == 30 + 60
    assert ForkingWorker(["default"], connection=connection).get_heartbeat_ttl(job) == 30 + 15
    assert InProcessWorker(["default"], connection=connection).get_heartbeat_ttl(job) == 300 + 15
    claimed = InProcessWorker(["default"], connection=connection, job_monitoring_interval=5).claim()
    assert claimed and claimed != "suspended"
    executions = connection.keys("rq:execution:*")
    assert [connection.ttl(key) for key in executions] == [300 + 15]  # in-process: the job's time-out


def test_the_toolkits_workers_default_to_the_toolkits_job_and_queue_classes() -> None:
    """Deliberate, against RQ's rq.Job and rq.Queue: they read and write with the configured serializer."""
    from config import rq_classes

    assert (ForkingWorker.job_class, ForkingWorker.queue_class) == (rq_classes.Job, rq_classes.Queue)
    assert (InProcessWorker.job_class, InProcessWorker.queue_class) == (rq_classes.Job, rq_classes.Queue)


@pytest.mark.parametrize("given", [Job, "rq.job.Job"])
def test_a_worker_that_rq_worker_starts_takes_the_toolkits_job_class(connection: Redis, given: Any) -> None:
    """`rq worker` passes its default job class, rq.job.Job: the toolkit's is that one with the
    configured serializer and dates read faster, so the worker keeps its own. One named is kept."""

    class Custom(Job):
        pass

    for worker_class in (ForkingWorker, InProcessWorker, rq_classes.Worker):
        started = worker_class(["default"], connection=connection, job_class=given)
        assert issubclass(started.job_class, rq_classes.Job)
        named = worker_class(["default"], connection=connection, job_class=Custom)
        assert issubclass(named.job_class, Custom)


def test_the_toolkits_job_checks_a_serializer_as_rq_does_unless_it_is_rqs_own(connection: Redis) -> None:
    """RQ's own two serializers go unchecked (the check costs 7 us a job); a name is resolved, and
    anything else is checked as RQ checks it."""
    assert rq_classes.Job(connection=connection, serializer=JSONSerializer).serializer is JSONSerializer
    assert rq_classes.Job(connection=connection, serializer="json").serializer is JSONSerializer
    assert rq_classes.Job(connection=connection).serializer is rq_classes.configured_serializer()
    with pytest.raises(NotImplementedError):
        rq_classes.Job(connection=connection, serializer=object())


def test_a_worker_stops_listening_at_once_when_its_listener_reads_the_unsubscribe_first(
    connection: Redis,
) -> None:
    """RQ stops a worker's command listener by sending UNSUBSCRIBE, then stopping the listener thread
    and joining it for a second. When the thread reads the reply first (a busy machine) it waits for
    the next message, up to 60 s: redis-py's stop() must not wait for that read (8.2.0 did)."""
    worker = ForkingWorker(["default"], connection=connection)
    worker.subscribe()
    assert worker.pubsub is not None and worker.pubsub_thread is not None
    time.sleep(0.3)
    worker.pubsub.unsubscribe()
    time.sleep(0.5)  # the listener reads the reply and waits again
    started = time.monotonic()
    worker.pubsub_thread.stop()
    worker.pubsub_thread.join(timeout=1)
    worker.pubsub.close()
    assert time.monotonic() - started < 30


def test_the_toolkits_job_reads_every_date_as_rq_does(connection: Redis) -> None:
    """Job.restore reads RQ's dates with datetime.fromisoformat: the same values, in RQ's format, RQ's
    older one without microseconds, and a value RQ can't read either."""
    job = Queue("default", connection=connection).enqueue(compat_jobs.add, 1, 1)
    stamps = {"started_at": "2026-12-05T00:24:43.000001Z", "ended_at": "2026-12-05T00:24:44Z"}
    connection.hset(job.key, mapping={**stamps, "last_heartbeat": "2026-12-05T00:24:45.5Z"})
    ours, rqs = rq_classes.Job.fetch(job.id, connection), Job.fetch(job.id, connection)
    dates = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")
    assert [getattr(ours, name) for name in dates] == [getattr(rqs, name) for name in dates]
    assert all(getattr(ours, name).tzinfo == getattr(rqs, name).tzinfo for name in dates)
    connection.hset(job.key, "ended_at", "2026-12-05Z")
    with pytest.raises(ValueError):
        Job.fetch(job.id, connection)
    with pytest.raises(ValueError):
        rq_classes.Job.fetch(job.id, connection)
