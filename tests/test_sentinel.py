"""One redis+sentinel URL (with the master's and the sentinels' passwords from the environment) serves
every part: the CLI, both toolkit workers and stock RQ's, the scheduler, the dashboard and metrics."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from launcher.redis_server import free_port
from tests.sentinels import SentinelGroup
from tests.support import python, start_python, wait_until

pytestmark = pytest.mark.slow

MASTER_SECRET, SENTINEL_SECRET = "master-secret-1", "sentinel-secret-2"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    servers = SentinelGroup(tmp_path_factory.mktemp("sentinel"), password=MASTER_SECRET)
    servers.sentinel_password = SENTINEL_SECRET
    yield servers.start()
    servers.stop()


@pytest.fixture
def env(group: SentinelGroup) -> dict[str, str]:
    group.admin(group.master()).flushdb()
    return group.env


@pytest.fixture
def master(group: SentinelGroup) -> Redis:
    return group.admin(group.master())


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = python("cli.py", *args, env=env)
    assert MASTER_SECRET not in done.stdout + done.stderr and SENTINEL_SECRET not in done.stdout + done.stderr
    return done


def test_the_cli_enqueues_and_lists_through_the_sentinels(env: dict[str, str], master: Redis) -> None:
    done = cli(env, "enqueue", "word-count", "comment")
    assert done.returncode == 0, done.stderr
    assert master.llen("rq:queue:maintenance") == 1
    queues = {queue["name"]: queue for queue in json.loads(cli(env, "info", "--json").stdout)["queues"]}
    assert queues["maintenance"]["queued"] == 1


@pytest.mark.parametrize("worker_class", ["workers.ForkingWorker", "workers.InProcessWorker", "rq.Worker"])
def test_every_worker_runs_jobs_and_stops_when_asked(
    env: dict[str, str], master: Redis, worker_class: str
) -> None:
    """`workers stop` reaches a Sentinel-connected worker: stock RQ's ignored it (rq/rq#2268)."""
    assert cli(env, "enqueue", "word-count", "comment").returncode == 0
    worker = start_python(
        "-m", "rq.cli", "worker", "-c", "config.rq", "-w", worker_class, "maintenance",
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The queue and the intermediate list empty out as the job starts, before it has finished.
        wait_until(lambda: master.zcard("rq:finished:maintenance") == 1, what="the job to finish")
        assert master.llen("rq:queue:maintenance") == 0
        name = wait_until(
            lambda: [key.split(":")[-1] for key in master.keys("rq:worker:*") if ":" not in key[10:]]
        )
        assert cli(env, "workers", "stop", name[0]).returncode == 0
        asked = time.monotonic()
        assert worker.wait(30) == 0
        assert time.monotonic() - asked < 15
    finally:
        worker.kill()
        worker.wait()


def test_the_scheduler_fires_through_the_sentinels(
    env: dict[str, str], master: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[schedule.tick]\njob = "word-count"\nargs = ["comment"]\nevery = 1\n')
    env = {**env, "RQKIT_CONFIG": str(config)}
    assert cli(env, "schedule", "sync").returncode == 0
    scheduler = start_python(
        "-m", "scheduler", "-i", "0.5", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: master.llen("rq:queue:maintenance") >= 1, timeout=30)
    finally:
        scheduler.terminate()
        scheduler.wait(30)


@pytest.mark.parametrize("command", ["dashboard", "metrics"])
def test_the_dashboard_and_metrics_read_through_the_sentinels(
    env: dict[str, str], master: Redis, command: str
) -> None:
    assert cli(env, "enqueue", "word-count", "comment").returncode == 0
    port = free_port()
    server = start_python("cli.py", command, "--port", str(port), env=env, stderr=subprocess.DEVNULL)
    path = "/0/data/queues.json" if command == "dashboard" else "/metrics"
    try:
        body = wait_until(lambda: fetch(f"http://127.0.0.1:{port}{path}"), timeout=30)
    finally:
        server.terminate()
        server.wait(30)
    assert "maintenance" in body
    assert MASTER_SECRET not in body and SENTINEL_SECRET not in body


def test_the_dashboards_own_pages_read_and_act_through_the_sentinels(
    env: dict[str, str], master: Redis
) -> None:
    assert cli(env, "schedule", "sync").returncode == 0
    assert cli(env, "enqueue", "word-count", "comment", "--tag", "nightly").returncode == 0
    worker = python("-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.InProcessWorker", "--burst",
                    "maintenance", env=env)  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert cli(env, "enqueue", "word-count", "article").returncode == 0  # left queued
    port = free_port()
    server = start_python("cli.py", "dashboard", "--port", str(port), env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/rqkit"
    try:
        data = json.loads(wait_until(lambda: fetch(f"{base}/overview.json"), timeout=30))
        pages = {
            page: fetch(f"{base}/{page}") for page in ("schedule", "failures", "tags?tag=nightly", "workers")
        }
        run = httpx.post(f"{base}/schedule/prune-tags/run", headers={"Origin": f"http://127.0.0.1:{port}"})
    finally:
        server.terminate()
        server.wait(30)
    runs = {(r["job"], r["outcome"]): sum(r["counts"]) for r in data["minute"]["runs"]}
    assert runs == {("word-count", "succeeded"): 1}
    assert next(q for q in data["queues"] if q["name"] == "maintenance")["queued"] == 1
    assert "expire-sessions" in pages["schedule"] and "No failed jobs" in pages["failures"]
    assert "word-count" in pages["tags?tag=nightly"] and "finished" in pages["tags?tag=nightly"]
    assert "No workers" in pages["workers"]  # the burst worker ended and left
    assert run.status_code == 200 and "prune-tags: enqueued" in run.text
    assert master.llen("rq:queue:maintenance") == 2
    for body in (json.dumps(data), *pages.values(), run.text):
        assert MASTER_SECRET not in body and SENTINEL_SECRET not in body


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_a_bad_sentinel_url_is_one_line(env: dict[str, str]) -> None:
    done = cli({**env, "REDIS_URL": "redis+sentinel://127.0.0.1:26379"}, "info")
    assert done.returncode != 0 and "names the master's service" in done.stderr
    assert "Traceback" not in done.stderr


def test_rq_redis_url_beside_the_settings_is_refused_by_config_rq(env: dict[str, str]) -> None:
    """RQ's --url reads RQ_REDIS_URL before the settings module: it would pin the worker to one server."""
    done = python(
        "-m",
        "rq.cli",
        "worker",
        "-c",
        "config.rq",
        "--burst",
        env={**env, "RQ_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert done.returncode != 0 and "config.rq: RQ_REDIS_URL is set and differs from REDIS_URL" in done.stderr
    assert "Traceback" not in done.stderr
