"""End to end: `cli.py up` brings up Redis, workers, rqscheduler and the dashboard, runs jobs, stops clean."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq_scheduler import Scheduler

from config.connection import answers
from launcher.children import descendants
from launcher.redis_server import RedisServer, free_port
from tests.pictures import photo
from tests.support import python, start_python, wait_until
from tests.up_stack import Up, running_ups

pytestmark = pytest.mark.slow


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[[str], Up]]:
    with running_ups(tmp_path) as start:
        yield start


def database_words(var: Path, table: str) -> int:
    with sqlite3.connect(var / "content.db") as db:
        return sum(len(body.split()) for (body,) in db.execute(f"SELECT body FROM {table}"))


def test_up_embeds_redis_runs_jobs_and_leaves_nothing_behind(
    start_up: Callable[[str], Up], tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    up = start_up(url)
    parts = descendants(up.process.pid)
    assert len(parts) >= 6  # redis-server, 2 workers, rqscheduler, dashboard, mail sink
    assert_workers_pinned_where_they_fill_the_cpus(up)

    seeded = up.cli_json("demo", "seed", "--articles", "5", "--comments", "4")
    assert seeded["comments"] == 20
    slept = up.cli_json("enqueue", "sleep", "1", "--wait")
    counted = up.cli_json("enqueue", "word-count", "comment", "--wait")
    assert (slept["status"], slept["result"]) == ("finished", {"slept": 1})
    assert counted["status"] == "finished"
    words = database_words(tmp_path / "var", "comments")
    assert up.cli_json("stats")["comment"] == words == counted["result"]["total_word_count"]

    connection = Redis.from_url(url)
    periodic = Scheduler(connection=connection).enqueue_in(timedelta(seconds=1), "jobs.demo.sleep", 0)
    wait_until(
        lambda: Job.fetch(periodic.id, connection=connection).get_status() == "finished", what="rqscheduler"
    )

    dashboard = f"http://127.0.0.1:{up.env['RQKIT_DASHBOARD_PORT']}/"
    with urllib.request.urlopen(dashboard, timeout=10) as response:
        assert response.status == 200 and "'nonce-" in response.headers["Content-Security-Policy"]
    called = up.cli_json("enqueue", "api-call", "GET", dashboard, "--wait")
    assert (called["status"], called["result"]["status"]) == ("finished", 200)

    photo(tmp_path / "path.jpg", (1600, 1200))
    thumbs = up.cli_json("enqueue", "thumbnail", str(tmp_path / "path.jpg"), "--wait")
    assert thumbs["result"]["written"]["256"] == str(tmp_path / "var" / "thumbnails" / "256" / "path.jpg.jpg")
    images_queue = next(q for q in up.cli_json("info")["queues"] if q["name"] == "images")
    assert (images_queue["finished"], images_queue["failed"]) == (1, 0)

    mailed = up.cli_json(
        "enqueue", "email", "--to", "a@example.com", "--subject", "Hi", "--text", "Hello", "--wait"
    )
    assert (mailed["status"], mailed["result"]["status"]) == ("finished", "sent")
    [stored] = up.cli_json("mail", "list")
    assert (stored["to"], stored["subject"]) == ("a@example.com", "Hi")

    rq_info = python("-m", "rq.cli", "info", "-c", "config.rq", env=up.env)
    assert rq_info.returncode == 0 and "2 workers" in rq_info.stdout

    assert up.stop(signal.SIGTERM) == 0
    assert not parts & descendants(os.getpid()), "a child of `up` is still running"
    assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()
    log = up.log.read_text()
    assert "embedded redis-server" in log and "redis     | stopped" in log
    assert "schedule  | synced: 6 added" in log


def cpus_of(pid: int) -> tuple[int, ...] | None:
    """The CPUs a process may run on (None once it is gone)."""
    try:
        return tuple(sorted(os.sched_getaffinity(pid)))
    except ProcessLookupError:
        return None


def assert_workers_pinned_where_they_fill_the_cpus(up: Up) -> None:
    """2 workers on 2 CPUs: each with its processes (fork server, spare horse, RQ's scheduler) on a CPU
    of its own; on 1 CPU or more than 2, left to the kernel."""
    cpus = os.sched_getaffinity(0)
    workers = [
        worker["pid"]
        for worker in up.cli_json("info")["workers"]
        if worker["pid"] in descendants(up.process.pid)
    ]
    wait_until(lambda: all(descendants(pid) for pid in workers), what="each worker's fork server")
    placed = sorted(
        sorted({allowed for p in {pid} | descendants(pid) if (allowed := cpus_of(p))}) for pid in workers
    )
    if len(cpus) == 2:
        assert placed == [[(cpu,)] for cpu in sorted(cpus)]
    else:
        assert placed == [[tuple(sorted(cpus))]] * len(workers)


def test_ctrl_c_lets_the_running_job_finish(start_up: Callable[[str], Up], redis_server: RedisServer) -> None:
    up = start_up(redis_server.url)
    parts = descendants(up.process.pid)
    assert "using the server at" in up.log.read_text()
    job_id = up.cli_json("enqueue", "sleep", "2")["id"]
    connection = Redis.from_url(redis_server.url)
    job = Job.fetch(job_id, connection=connection)
    wait_until(lambda: job.get_status() == "started", what="the job to start")

    assert up.stop(signal.SIGINT) == 0
    assert job.get_status() == "finished"
    assert not parts & descendants(os.getpid())
    assert connection.ping()  # a server that was already there is left running


def test_a_second_ctrl_c_stops_the_running_job_now(
    start_up: Callable[[str], Up], redis_server: RedisServer
) -> None:
    up = start_up(redis_server.url)
    parts = descendants(up.process.pid)
    job = Job.fetch(up.cli_json("enqueue", "sleep", "60")["id"], connection=Redis.from_url(redis_server.url))
    wait_until(lambda: job.get_status() == "started", what="the job to start")
    up.process.send_signal(signal.SIGINT)
    time.sleep(0.3)  # two presses of Ctrl-C: signals sent back to back would merge into one
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(30) == 0  # a guard against a hang: the job's status says if it was waited for
    assert not parts & descendants(os.getpid())
    # RQ's cold shutdown kills the work-horse and leaves the job as it was: started (not finished), to
    # be found abandoned (and failed) by the next worker's registry cleanup.
    assert job.get_status() == "started"


def test_up_refuses_a_dashboard_off_loopback_without_a_password(tmp_path: Path) -> None:
    done = python("cli.py", "up", env={"RQKIT_DASHBOARD_HOST": "0.0.0.0", "RQKIT_VAR_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert "RQKIT_DASHBOARD_USERNAME" in done.stderr and "Traceback" not in done.stderr


def test_up_refuses_a_dashboard_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = python("cli.py", "up", env={"RQKIT_DASHBOARD_PORT": str(port), "RQKIT_VAR_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert f"dashboard address 127.0.0.1:{port} is not free" in done.stderr


def test_redis_alone_serves_the_stock_rq_commands(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"REDIS_URL": url, "RQ_REDIS_URL": url, "RQKIT_VAR_DIR": str(tmp_path)}
    server = start_python(
        "cli.py", "redis", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: answers(url), what="redis")
        assert python("cli.py", "enqueue", "sleep", "0", env=env).returncode == 0
        worker = python("-m", "rq.cli", "worker", "--burst", "default", env=env)
        assert worker.returncode == 0 and "Job OK" in worker.stderr + worker.stdout
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0
        assert "redis     | stopped" in (server.stdout.read() if server.stdout else "")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
