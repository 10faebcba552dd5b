"""Prometheus metrics: queue depths, workers, rq-scheduler instances, and each job's runs and durations.

Job entry points record every run in three Redis hashes (so any number of workers add to them);
the exporter reads those and the queues at each scrape, after adding the runs that this host kept on
disk while Redis was away (jobs/metrics_spool.py).

The server asks for basic auth (the dashboard's credentials) when `credentials` are given, as
`python cli.py metrics` does off loopback; on loopback it answers only requests addressed to a
loopback name (no DNS rebinding). A Redis that does not answer is a 503 naming it, its password hidden.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import ConnectionError, TimeoutError
from rq.utils import as_text

from config import RedisUnavailable, get_settings
from config.rq_classes import STATES
from jobs.metrics_spool import send
from jobs.runtime import BUCKETS, LIMITS, RUNS, SECONDS, metrics_spool
from ops.views import overview

LOOPBACK_NAMES = ("127.0.0.1", "[::1]", "localhost")


def serve(
    connection: Redis,
    host: str,
    port: int,
    until: threading.Event,
    announce: Callable[[str], None],
    *,
    loopback: bool,
    credentials: tuple[str, str] | None,
    redis_url: str,
) -> None:
    """Serve the metrics at http://host:port/metrics until `until` is set."""
    registry = CollectorRegistry()
    registry.register(ToolkitCollector(connection, metrics_spool(get_settings().var_dir)))
    app = guarded(make_wsgi_app(registry), port if loopback else None, credentials, redis_url)
    server_class = type("Server", (ThreadingServer,), {"address_family": family_of(host)})
    server: WSGIServer = make_server(host, port, app, server_class, QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    login = ", basic auth" if credentials else ""
    announce(f"metrics on http://{shown}:{port}/metrics{login} (Ctrl-C stops)")
    until.wait()
    server.shutdown()
    server.server_close()
    thread.join()


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def guarded(
    app: WSGIApplication, loopback_port: int | None, credentials: tuple[str, str] | None, redis_url: str
) -> WSGIApplication:
    """`app` behind the Host check (on loopback), basic auth (with `credentials`), and a 503 naming
    the Redis that did not answer."""

    def guard(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        if loopback_port is not None and host not in loopback_names(loopback_port):
            refused = f"Refused: Host {host!r} is not this server's loopback address.\n"
            return answer(start_response, "421 Misdirected Request", refused)
        if credentials and not authorized(environ.get("HTTP_AUTHORIZATION", ""), *credentials):
            realm = [("WWW-Authenticate", 'Basic realm="rqkit"')]
            return answer(start_response, "401 Unauthorized", "Log in to read the metrics.\n", realm)
        try:
            return app(environ, start_response)
        except (RedisUnavailable, ConnectionError, TimeoutError):
            down = f"{RedisUnavailable(redis_url)}\n"
            return answer(start_response, "503 Service Unavailable", down, [("Retry-After", "5")])

    return guard


def loopback_names(port: int) -> set[str]:
    return {f"{host}:{port}" for host in LOOPBACK_NAMES} | (set(LOOPBACK_NAMES) if port == 80 else set())


def authorized(header: str, username: str, password: str) -> bool:
    """Whether an Authorization header carries these basic-auth credentials (compared in constant time)."""
    scheme, _, encoded = header.partition(" ")
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        given = ""
    given_user, _, given_password = given.partition(":")
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    return scheme.lower() == "basic" and user_ok & password_ok


def answer(
    start_response: StartResponse, status: str, body: str, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    data = body.encode()
    plain = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    start_response(status, plain + (headers or []))
    return [data]


def read(connection: Redis, key: str) -> dict[str, float]:
    return {as_text(name): float(value) for name, value in connection.hgetall(key).items()}


class ToolkitCollector(Collector):
    """Everything read from Redis at scrape time (job runs kept in `spool` added first)."""

    def __init__(self, connection: Redis, spool: Path | None = None) -> None:
        self.connection, self.spool = connection, spool

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
        if self.spool is not None:
            send(self.connection, {}, self.spool)
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
