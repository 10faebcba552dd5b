"""The Prometheus endpoint, as a real process, after real job runs; open on loopback to loopback names
only, behind the dashboard's basic auth off loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from redis import Redis
from rq import Queue

from jobs import enqueue
from launcher.redis_server import free_port
from tests.support import run, start_python, wait_until


def scrape(url: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_metrics_show_queues_workers_runs_and_durations(connection: Redis, run_jobs: Any) -> None:
    enqueue("sleep", 0)
    enqueue("sleep", 0.05)
    Queue("default", connection=connection).enqueue("jobs.demo.sleep", -1, meta={"rqkit_job": "sleep"})
    Queue("default", connection=connection).enqueue("jobs.demo.sleep", -2)  # not through the toolkit
    run_jobs()
    enqueue("sleep", 1)  # left queued
    port = free_port()
    server = start_python(
        "cli.py", "metrics", "--port", str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(20) == 0
    assert 'rqkit_queue_jobs{queue="default",state="queued"} 1.0' in text
    assert 'rqkit_queue_jobs{queue="default",state="failed"} 2.0' in text
    # A job enqueued without the toolkit goes by its function's path, as in `jobs list` and `failed list`.
    assert 'rqkit_job_runs_total{job="jobs.demo.sleep",outcome="failed",queue="default"} 1.0' in text
    assert 'rqkit_job_runs_total{job="sleep",outcome="succeeded",queue="default"} 2.0' in text
    assert 'rqkit_job_runs_total{job="sleep",outcome="failed",queue="default"} 1.0' in text
    assert 'rqkit_job_duration_seconds_count{job="sleep"} 3.0' in text
    assert 'rqkit_job_duration_seconds_bucket{job="sleep",le="0.01"} 2.0' in text  # 0 s and the failure
    assert "rqkit_scheduler_instances 0.0" in text and 'rqkit_workers{state="idle"} 0.0' in text


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run("metrics", "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "metrics address 127.0.0.1:" in result.output and "is not free" in result.output


def test_off_loopback_it_will_not_start_without_credentials() -> None:
    result = run("metrics", "--host", "0.0.0.0")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == (
        "Error: metrics --host 0.0.0.0 is not loopback: "
        "set RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD for basic auth\n"
    )


@contextmanager
def metrics_server(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python cli.py metrics ARGS` on a free port, until it answers; the URL to reach it on loopback."""
    port = free_port()
    command = ["cli.py", "metrics", "--port", str(port), *args]
    server = start_python(*command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return bool(httpx.get(url, timeout=2).status_code)
        except httpx.TransportError:
            return server.poll() is not None

    try:
        wait_until(answers, what="the metrics server")
        assert server.poll() is None
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(20) == 0


CREDENTIALS = {"RQKIT_DASHBOARD_USERNAME": "ops", "RQKIT_DASHBOARD_PASSWORD": "s3cret-metrics"}


def test_off_loopback_it_asks_for_the_dashboard_credentials(connection: Redis) -> None:
    with metrics_server("--host", "0.0.0.0", env=CREDENTIALS) as url:
        refused = httpx.get(url)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Basic realm="rqkit"'
        assert "rqkit_" not in refused.text
        for wrong in (("ops", "wrong"), ("", "s3cret-metrics"), ("ops", "s3cret-metricsX"), ("ops", "")):
            assert httpx.get(url, auth=wrong).status_code == 401, wrong
        garbled = httpx.get(url, headers={"Authorization": "Basic !!!not-base64"})
        assert garbled.status_code == 401
        bearer = httpx.get(url, headers={"Authorization": "Bearer b3BzOnMzY3JldC1tZXRyaWNz"})
        assert bearer.status_code == 401  # the right credentials, but not as basic auth
        shown = httpx.get(url, auth=("ops", "s3cret-metrics"))
        assert shown.status_code == 200 and "rqkit_queue_jobs" in shown.text
        # Any Host will do off loopback: the credentials are what guard it there.
        other = httpx.get(url, auth=("ops", "s3cret-metrics"), headers={"Host": "metrics.example:9182"})
        assert other.status_code == 200


def test_on_loopback_it_stays_open_to_loopback_names_only(connection: Redis) -> None:
    with metrics_server(env=CREDENTIALS) as url:  # the credentials set do not apply on loopback
        assert "rqkit_queue_jobs" in httpx.get(url).text
        port = url.split(":")[2].split("/")[0]
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        # A web page whose name now points at 127.0.0.1 (DNS rebinding) reads nothing.
        rebound = httpx.get(url, headers={"Host": f"rebound.example:{port}"})
        assert rebound.status_code == 421 and "rqkit_" not in rebound.text
