"""Prometheus metrics: queue depths, workers, rq-scheduler instances, and each job's runs and durations.

Job entry points record every run in three Redis hashes (so any number of workers add to them);
the exporter reads those and the queues at each scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from rq.utils import as_text

from config.rq_classes import STATES
from jobs.runtime import BUCKETS, LIMITS, RUNS, SECONDS
from ops.views import overview


def serve(
    connection: Redis, host: str, port: int, until: threading.Event, announce: Callable[[str], None]
) -> None:
    """Serve the metrics at http://host:port/metrics until `until` is set."""
    registry = CollectorRegistry()
    registry.register(ToolkitCollector(connection))
    server, thread = start_http_server(port, host, registry=registry)
    announce(f"metrics on http://{host}:{port}/metrics (Ctrl-C stops)")
    until.wait()
    server.shutdown()
    thread.join()


def read(connection: Redis, key: str) -> dict[str, float]:
    return {as_text(name): float(value) for name, value in connection.hgetall(key).items()}


class ToolkitCollector(Collector):
    """Everything read from Redis at scrape time."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection

    def collect(self) -> Iterator[Any]:
        view = overview(self.connection)
        depth = GaugeMetricFamily("rqkit_queue_jobs", "Jobs per queue and state", labels=["queue", "state"])
        for queue in view["queues"]:
            for state in STATES:
                depth.add_metric([queue["name"], state], queue[state])
        yield depth
        workers = GaugeMetricFamily("rqkit_workers", "Registered workers per state", labels=["state"])
        for state in {worker["state"] for worker in view["workers"]} | {"idle", "busy"}:
            workers.add_metric([state], sum(worker["state"] == state for worker in view["workers"]))
        yield workers
        instances = len(list(self.connection.scan_iter("rq:scheduler_instance:*", count=100)))
        yield GaugeMetricFamily(
            "rqkit_scheduler_instances", "rqscheduler processes registered", value=instances
        )
        yield GaugeMetricFamily(
            "rqkit_scheduled_entries", "Jobs waiting in rq-scheduler", value=view["rq_scheduler_jobs"]
        )
        yield from self.job_metrics()

    def job_metrics(self) -> Iterator[Any]:
        runs = CounterMetricFamily(
            "rqkit_job_runs", "Job runs by job, queue and outcome", labels=["job", "queue", "outcome"]
        )
        for key, count in read(self.connection, RUNS).items():
            runs.add_metric(key.split("\t"), count)
        yield runs
        seconds, buckets = read(self.connection, SECONDS), read(self.connection, BUCKETS)
        durations = HistogramMetricFamily("rqkit_job_duration_seconds", "Job run time", labels=["job"])
        for name in sorted({key.split("\t")[0] for key in seconds}):
            cumulative = [(str(limit), buckets.get(f"{name}\t{limit}", 0.0)) for limit in LIMITS]
            cumulative.append(("+Inf", seconds.get(f"{name}\tcount", 0.0)))
            durations.add_metric([name], cumulative, sum_value=seconds.get(f"{name}\tsum", 0.0))
        yield durations
