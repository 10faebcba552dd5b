"""Failover with real processes: 1 master, 2 replicas, 3 sentinels; two workers, the scheduler and a
producer running. For kill -9 of the master, a manual SENTINEL FAILOVER and a master stalled (SIGSTOP)
then resumed: every acknowledged enqueue runs (the idempotent api-call at least once, the once-only
email at most once per key, else failed with its reason), a due time fires at most once, and the stack
is back within down-after + a few seconds. With durable_replicas = 2 an enqueue that may not survive
is an error to the producer, who tries it again."""

from __future__ import annotations

import email
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from redis import Redis
from rq.job import Job
from werkzeug import Request, Response

from config import ToolkitError, get_settings
from jobs import submit
from tests.sentinels import DOWN_AFTER_MS, SentinelGroup
from tests.smtp_servers import Server, smtp_server
from tests.support import python, start_python, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENQUEUES = 240  # by the producer, one every PACE seconds: some 12 s of traffic around the failure
PACE = 0.05
WORKER = ("-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.ForkingWorker", "--with-scheduler")
FAST_CHECKS = ("--worker-ttl", "20", "--job-monitoring-interval", "2", "--maintenance-interval", "5")


@dataclass
class Producer:
    """Enqueues api-calls and emails (each numbered) through the toolkit's API; an enqueue that raises is
    not acknowledged, and the producer tries the same number again, as a web app would."""

    url: str
    acknowledged: dict[int, str] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    last_ack: float = 0.0
    crashed: BaseException | None = None

    def run(self) -> None:
        try:
            self.produce()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.crashed = exc

    def produce(self) -> None:
        number = 0
        deadline = time.monotonic() + 120
        while number < ENQUEUES and time.monotonic() < deadline:
            try:
                self.acknowledged[number] = self.enqueue(number)
                self.last_ack = time.monotonic()
                number += 1
            except ToolkitError as exc:  # NotDurable, RedisUnavailable: not acknowledged
                self.refused[str(exc).split(" ")[0]] += 1
            time.sleep(PACE)

    def enqueue(self, number: int) -> str:
        if number % 2:
            args = (["to@example.com"], f"mail {number}")
            return submit("email", args, {"text": "hi", "idempotency_key": f"k-{number}"}).job.id
        return submit("api-call", ("GET", f"{self.url}hit?n={number}")).job.id


@pytest.fixture
def stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, request: pytest.FixtureRequest
) -> Iterator[Callable[[], tuple[SentinelGroup, Server, Counter[int], Counter[int]]]]:
    """The servers, two workers, the scheduler (an entry every second, calling /tick), the SMTP server,
    and the HTTP server counting calls by number; durable_replicas is the test's parameter."""
    group = SentinelGroup(tmp_path / "servers").start()
    hits: Counter[int] = Counter()
    ticks: Counter[int] = Counter()  # calls of the schedule's entry, by the second they came in

    def hit(request: Request) -> Response:
        hits[int(request.args["n"])] += 1
        return Response("ok")

    def tick(request: Request) -> Response:
        ticks[int(time.time())] += 1
        return Response("ok")

    httpserver.expect_request("/hit").respond_with_handler(hit)
    httpserver.expect_request("/tick").respond_with_handler(tick)
    config = tmp_path / "settings.toml"
    tick_url = httpserver.url_for("/tick")
    config.write_text(f'[schedule.tick]\njob = "api-call"\nargs = ["GET", "{tick_url}"]\nevery = 1\n')
    with smtp_server("none") as smtp:
        env = {
            **group.env,
            "RQKIT_CONFIG": str(config),
            "RQKIT_DURABLE_REPLICAS": str(request.param),
            "RQKIT_REDIS_TIMEOUT": "2",  # a producer stuck on a stalled master gives up, and asks again
            "RQKIT_SMTP_HOST": "127.0.0.1",
            "RQKIT_SMTP_PORT": str(smtp.port),
            "RQKIT_SMTP_SECURITY": "none",
            "RQKIT_EMAIL_RETRY_INTERVALS": "1,1,2,2,4",
            "RQKIT_API_BACKOFF_SECONDS": "0.5",
            "RQKIT_API_BACKOFF_MAX": "2",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            synced = python("cli.py", "schedule", "sync")
            assert synced.returncode == 0, synced.stderr
            for index in range(2):
                log = (tmp_path / f"worker-{index}.log").open("w")
                processes.append(start_python(*WORKER, *FAST_CHECKS, "api", "email", stdout=log, stderr=log))
            scheduler_log = (tmp_path / "scheduler.log").open("w")
            processes.append(
                start_python("-m", "scheduler", "-i", "0.5", stdout=scheduler_log, stderr=scheduler_log)
            )
            yield lambda: (group, smtp, hits, ticks)
        finally:
            for process in processes:  # nothing is checked past the test: no warm stop to wait for
                process.kill()
                process.wait()
            group.stop()


def run_failure(
    stack: Callable[[], tuple[SentinelGroup, Server, Counter[int], Counter[int]]],
    httpserver: HTTPServer,
    fail: Callable[[SentinelGroup], int],
    bound: float = DOWN_AFTER_MS / 1000 + 5,
) -> None:
    """Fail the master while the producer runs; the stack must take enqueues again within `bound` s."""
    group, smtp, hits, ticks = stack()
    producer = Producer(httpserver.url_for("/"))
    thread = threading.Thread(target=producer.run, daemon=True)
    thread.start()
    wait_until(
        lambda: len(producer.acknowledged) >= 40 and hits, timeout=60, what="traffic before the failure"
    )
    failed_at, failed_wall = time.monotonic(), time.time()
    old_port = fail(group)
    group.wait_for_new_master(old_port, timeout=60)
    acked_before = len(producer.acknowledged)
    wait_until(
        lambda: len(producer.acknowledged) > acked_before or producer.crashed,
        timeout=60,
        what="an enqueue after it",
    )
    assert producer.crashed is None, producer.crashed
    back_after = producer.last_ack - failed_at
    thread.join(150)
    assert producer.crashed is None and not thread.is_alive() and len(producer.acknowledged) == ENQUEUES
    master = Redis(port=group.master_port())
    check_outcomes(master, producer, hits, smtp)
    assert back_after < bound, back_after
    print(f"\nback {back_after:.1f} s after the failure; refused enqueues: {dict(producer.refused)}")
    assert max(ticks.values(), default=0) <= 2  # a due time a second, at most once (two may share one)
    wait_until(lambda: max(ticks) > failed_wall + bound, timeout=60, what="the schedule firing after it")


def check_outcomes(master: Redis, producer: Producer, hits: Counter[int], smtp: Server) -> None:
    """Every acknowledged job ends finished or failed with a reason; api-calls ran at least once, each
    email went out at most once, and exactly once unless its job failed."""

    unsettled: list[tuple[int, str | None]] = []

    def settled() -> bool:
        jobs = Job.fetch_many(list(producer.acknowledged.values()), connection=master)
        unsettled[:] = [
            (number, job and job.get_status())
            for number, job in zip(producer.acknowledged, jobs, strict=True)
            if job is None or job.get_status() not in ("finished", "failed")
        ]
        return not unsettled

    try:
        wait_until(settled, timeout=90, what="every acknowledged job finished or failed")
    except AssertionError:
        queued = {name: master.lrange(f"rq:queue:{name}", 0, -1) for name in ("api", "email")}
        workers = [(key, master.hget(key, "state")) for key in master.smembers("rq:workers")]
        raise AssertionError(
            f"not settled (number, status): {unsettled}; queues {queued}; {workers}"
        ) from None
    sent = Counter(
        int(re.fullmatch(r"mail (\d+)", email.message_from_bytes(data)["Subject"])[1])  # type: ignore[index]
        for _, data in smtp.handler.received
    )
    assert max(sent.values(), default=0) == 1, [n for n, count in sent.items() if count > 1]
    for number, job_id in producer.acknowledged.items():
        job = Job.fetch(job_id, connection=master)
        if number % 2 == 0:
            assert hits[number] >= 1, (number, job.get_status(), job.latest_result())
        elif job.get_status() == "finished":
            assert sent[number] == 1, number
        else:
            assert job.latest_result() is not None or job.exc_info, number  # a failure with its reason


@pytest.mark.parametrize("stack", [1], indirect=True)
def test_kill_9_of_the_master(stack: Callable[..., tuple], httpserver: HTTPServer) -> None:
    """The killed server comes back (as systemd would start it) and the sentinels make it a replica:
    until then only one replica is left, and durable_replicas = 2 refuses every enqueue."""

    def kill(group: SentinelGroup) -> int:
        port = group.kill_master()
        threading.Thread(target=restart_later, args=(group, port), daemon=True).start()
        return port

    run_failure(stack, httpserver, kill)


def restart_later(group: SentinelGroup, port: int) -> None:
    group.wait_for_new_master(port)
    group.restart(group.server_on(port))


@pytest.mark.parametrize("stack", [2], indirect=True)
def test_a_manual_failover(stack: Callable[..., tuple], httpserver: HTTPServer) -> None:
    def failover(group: SentinelGroup) -> int:
        port = group.master_port()
        group.sentinel().execute_command("SENTINEL", "FAILOVER", "mymaster")
        return port

    # durable_replicas = 2: the promoted replica and the other one; the old master, until the sentinels
    # make it a replica (their next look at it, up to 10 s on), feeds the other one: those writes are
    # refused, not lost. Enqueues resume once the old master follows the new one.
    run_failure(stack, httpserver, failover, bound=20)


@pytest.mark.parametrize("stack", [1], indirect=True)
def test_a_master_stalled_then_resumed(stack: Callable[..., tuple], httpserver: HTTPServer) -> None:
    def stall(group: SentinelGroup) -> int:
        port = group.master_port()
        threading.Thread(target=group.stall_master, args=(DOWN_AFTER_MS / 1000 + 4,), daemon=True).start()
        return port

    run_failure(stack, httpserver, stall)
