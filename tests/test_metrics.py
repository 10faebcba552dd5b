"""The Prometheus endpoint, as a real process, after real job runs."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from typing import Any

from redis import Redis
from rq import Queue

from jobs import enqueue
from launcher.redis_server import free_port
from tests.support import run, start_python


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
