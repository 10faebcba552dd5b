"""A fleet: three hosts made of network namespaces (tests/netns.py), each with its own hostname and
workers, sharing one Redis, and the SMTP sink and HTTP API that the jobs reach on the bridge's
address (never a loopback one). 10,000 mixed jobs drain once each; `workers` and the dashboard show
every host; two schedulers on two hosts fire each due time once; a host cut off mid-job has its jobs
found abandoned and rerun or failed, loses nothing and sends nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from redis import Redis
from rq.job import Job

from config import get_settings, rq_classes
from jobs import content, submit, submit_many
from jobs.email import digest
from jobs.orphans import Timing, recover_orphans
from launcher.mail_sink import SaveToFolder
from launcher.redis_server import RedisServer, free_port
from launcher.stack import WORKER_ARGS
from tests import compat_jobs
from tests.netns import Fleet, Host, unavailable
from tests.support import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

DRAIN_QUEUES = ("email", "api", "maintenance", "default", "tick")
QUEUES = ("images", *DRAIN_QUEUES, "cutoff")  # cutoff: the cut-off host's long jobs, and their reruns
HOLD = "HOLD"  # the first message with this subject, or GET of /hold/..., gets its reply at teardown
HOLD_LIMIT = 300.0  # s: the longest a held reply waits
TICK_EVERY = 2  # s: the periodic entry's interval
ABANDONED_WITHIN = 60  # s after the cut: heartbeat 5 + 15 s, then a registry sweep every 10 s
# ... then the email's first retry (30 s), which waits for RQ's scheduler lock of its queue that the
# cut-off host held (61 s after its last refresh) and the next maintenance pass (10 s)
RETRY_FAILED_WITHIN = 200


class Sink(SaveToFolder):
    """The toolkit's SMTP sink (each message a file), noting which address sent each Message-ID."""

    def __init__(self, folder: Path, release: threading.Event) -> None:
        super().__init__(folder)
        self.release = release
        self.received: list[tuple[str, str]] = []  # (Message-ID, sender's address)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        headers = BytesHeaderParser().parsebytes(envelope.original_content)
        first = not self.senders(str(headers["Message-ID"]))
        self.received.append((str(headers["Message-ID"]), session.peer[0]))
        if first and str(headers["Subject"]).startswith(HOLD):  # received and kept: only the reply waits
            deadline = time.monotonic() + HOLD_LIMIT
            while not self.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        return reply

    def senders(self, message_id: str) -> list[str]:
        return [peer for received, peer in list(self.received) if received == message_id]


class Calls(BaseHTTPRequestHandler):
    """Any GET: a small JSON answer; the first GET of a /hold/ path waits for the release first."""

    server: Api

    def do_GET(self) -> None:
        first = self.server.note(self.path, self.client_address[0])
        if first and self.path.startswith("/hold/"):
            self.server.release.wait(HOLD_LIMIT)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: hundreds of requests a run."""


class Api(ThreadingHTTPServer):
    """The 3rd-party API of the api-call jobs; it notes each request's path and sender."""

    daemon_threads = True

    def __init__(self, address: str, release: threading.Event) -> None:
        super().__init__((address, 0), Calls)
        self.release = release
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_address[1]}"

    def note(self, path: str, peer: str) -> bool:
        """Record a request; whether it is the first of its path."""
        with self.lock:
            self.calls.append((path, peer))
            return sum(1 for called, _ in self.calls if called == path) == 1

    def senders(self, path: str) -> list[str]:
        with self.lock:
            return [peer for called, peer in self.calls if called == path]


@dataclass
class Servers:
    sink: Sink
    smtp_port: int
    api: Api


@contextmanager
def servers(address: str, mail: Path) -> Iterator[Servers]:
    """The SMTP sink and the HTTP API on `address`; held replies are let go as they stop."""
    release = threading.Event()
    sink, api, port = Sink(mail, release), Api(address, release), free_port()
    controller = Controller(sink, hostname=address, port=port)
    controller.start()
    threading.Thread(target=api.serve_forever, name="fleet-api", daemon=True).start()
    try:
        yield Servers(sink, port, api)
    finally:
        release.set()
        api.shutdown()
        api.server_close()
        controller.stop()


@dataclass
class Run:
    """The module's fleet and what its tests share."""

    fleet: Fleet
    redis: Redis
    env: dict[str, str]  # for every process on the hosts
    logs: Path
    servers: Servers
    seen: dict[str, str] = field(default_factory=dict)  # worker name -> hostname, of every worker seen
    holders: list[Any] = field(default_factory=list)  # host1's workers on `cutoff` (ForkingWorkers)

    @property
    def sink(self) -> Sink:
        return self.servers.sink

    @property
    def api(self) -> Api:
        return self.servers.api

    def start_worker(self, host: Host, worker_class: str, *queues: str) -> Any:
        """`rq worker` as `up` starts it (launcher/stack.py's WORKER_ARGS), of `worker_class`, on `host`."""
        args = list(WORKER_ARGS)
        args[args.index("-w") + 1] = worker_class
        return self.start(host, "-m", "rq.cli", *args, *queues)

    def start(self, host: Host, *args: str) -> Any:
        """`python ARGS` on `host`, its output in the host's log."""
        return host.start(sys.executable, *args, env=self.env, log=self.logs / f"{host.name}.log")

    def python(self, host: Host, *args: str) -> Any:
        """Run `python ARGS` on `host` to completion."""
        return host.run(sys.executable, *args, env=self.env)

    def workers(self) -> list[Any]:
        return list(rq_classes.Worker.all(connection=self.redis))

    def hostnames(self) -> dict[str, str]:
        """Each registered worker's host, by worker name."""
        return {worker.name: worker.hostname for worker in self.workers()}

    def host_of(self, worker_name: str | None) -> str:
        """The host of a worker that registered, even if it has gone since (its registration lapsed)."""
        self.seen.update(self.hostnames())
        return self.seen.get(worker_name or "", "?")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Three hosts with an InProcessWorker each on the drain queues, and on host1 two ForkingWorkers
    on `cutoff`; Redis, the sink and the API listen on the bridge's own address."""
    logs = tmp_path_factory.mktemp("fleet")
    with ExitStack() as stack:
        fleet = Fleet(3)
        stack.callback(fleet.close)
        server = RedisServer(free_port(), logs / "redis", host=fleet.gateway).start()
        stack.callback(server.stop)
        shared = stack.enter_context(servers(fleet.gateway, logs / "mail"))
        env = settings_env(server.url, fleet.gateway, shared, logs)
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in env.items():
            patch.setenv(name, value)  # this process enqueues and checks with the same settings
        get_settings.cache_clear()
        redis = Redis.from_url(server.url)
        stack.callback(redis.close)
        run = Run(fleet, redis, dict(os.environ), logs, shared)
        stack.callback(fleet.stop)  # first of all: every process on the hosts
        for host in fleet.hosts:
            run.start_worker(host, "workers.InProcessWorker", *DRAIN_QUEUES)
        run.holders = [run.start_worker(fleet.hosts[0], "workers.ForkingWorker", "cutoff") for _ in range(2)]
        wait_until(lambda: len(run.workers()) == 5, 60, "the fleet's 5 workers", every=0.5)
        yield run


def settings_env(redis_url: str, gateway: str, shared: Servers, logs: Path) -> dict[str, str]:
    """The settings of every part of the fleet, and of this process, which enqueues and checks."""
    tick = {"fleet-tick": {"job": "sleep", "args": [0], "every": TICK_EVERY, "queue": "tick"}}
    return {
        "REDIS_URL": redis_url,
        "RQ_REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{logs / 'content.db'}",
        "RQKIT_VAR_DIR": str(logs / "var"),
        "RQKIT_QUEUES": ",".join(QUEUES),
        "RQKIT_SMTP_HOST": gateway,
        "RQKIT_SMTP_PORT": str(shared.smtp_port),
        "RQKIT_SMTP_SECURITY": "none",
        # The API guard lets a job reach a private address only if that address itself is allowed.
        "RQKIT_API_ALLOWED_HOSTS": gateway,
        "RQKIT_DASHBOARD_USERNAME": "fleet",
        "RQKIT_DASHBOARD_PASSWORD": secrets.token_hex(12),
        "RQKIT_SCHEDULE": json.dumps(tick),
    }


def message_id(key: str) -> str:
    """The Message-ID the email job gives the message of idempotency key `key` (default sender)."""
    return f"<{digest(key)}@example.com>"


def statuses(redis: Redis, ids: list[str]) -> Counter[str]:
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        return Counter((status or b"missing").decode() for status in pipe.execute())


def field_of(redis: Redis, ids: list[str], name: str) -> list[str]:
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", name)
        return [(value or b"").decode() for value in pipe.execute()]


def result_counts(redis: Redis, ids: list[str]) -> Counter[int]:
    """How many results each job has: 1 for a job that ran once."""
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.xlen(f"rq:results:{job_id}")
        return Counter(pipe.execute())


def done(redis: Redis, queues: tuple[str, ...]) -> int:
    """Jobs finished or failed on `queues`."""
    with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zcard(f"rq:finished:{queue}")
            pipe.zcard(f"rq:failed:{queue}")
        return sum(pipe.execute())


def enqueue_mix(run: Run) -> dict[str, list[str]]:
    """10,000 jobs, bulk where the registry allows it: their ids by kind."""
    content.seed(content.content_engine(get_settings().sqlalchemy_url), 20, 5)  # for the word counts
    emails = [
        (f"user{i}@example.com", f"fleet {i}", "hello", None, None, None, None, f"fleet-{i}")
        for i in range(700)
    ]
    noop = rq_classes.Queue("default", connection=run.redis)
    return {
        "sleep": submit_many("sleep", [(0,)] * 6498).jobs.ids,
        "no-op": [job.id for job in noop.enqueue_many([noop.prepare_data(compat_jobs.nothing)] * 1500)],
        "email": submit_many("email", emails).jobs.ids,
        "api-call": submit_many(
            "api-call", [("GET", f"{run.api.url}/call/{i}") for i in range(700)]
        ).jobs.ids,
        "prune-tags": submit_many("prune-tags", [()] * 600).jobs.ids,
        "word-count": [submit("word-count", (model,)).job.id for model in ("comment", "article")],
    }


def test_three_hosts_drain_10000_mixed_jobs_each_exactly_once(fleet: Run) -> None:
    started = time.monotonic()
    kinds = enqueue_mix(fleet)
    ids = [job_id for group in kinds.values() for job_id in group]
    assert len(ids) == len(set(ids)) == 10_000
    wait_until(lambda: done(fleet.redis, DRAIN_QUEUES) >= 10_000, 200, "10,000 jobs to end", every=0.5)
    drained = time.monotonic() - started

    assert statuses(fleet.redis, ids) == {"finished": 10_000}
    assert result_counts(fleet.redis, ids) == {1: 10_000}  # none ran twice
    sent = Counter(message for message, _ in fleet.sink.received)
    twice = {message: fleet.sink.senders(message) for message, count in sent.items() if count > 1}
    assert [sent[message_id(f"fleet-{i}")] for i in range(700)] == [1] * 700, f"sent more than once: {twice}"
    called = Counter(path for path, _ in fleet.api.calls)
    assert [called[f"/call/{i}"] for i in range(700)] == [1] * 700
    addresses = {host.address for host in fleet.fleet.hosts}
    assert {peer for _, peer in fleet.sink.received + fleet.api.calls} <= addresses  # through the veths
    by_host = Counter(fleet.host_of(name) for name in field_of(fleet.redis, ids, "worker_name"))
    assert set(by_host) == {host.name for host in fleet.fleet.hosts}, by_host
    print(f"10,000 jobs drained by 3 hosts in {drained:.1f} s ({10_000 / drained:.0f}/s); by host: {by_host}")


def test_workers_run_on_one_host_lists_every_hosts_workers_by_name_and_hostname(fleet: Run) -> None:
    shown = fleet.python(fleet.fleet.hosts[1], "cli.py", "workers", "--json")
    assert shown.returncode == 0, shown.stderr
    views = json.loads(shown.stdout)
    registered = {(worker.name, worker.hostname, worker.pid) for worker in fleet.workers()}
    assert {(view["name"], view["hostname"], view["pid"]) for view in views} == registered
    assert Counter(view["hostname"] for view in views) == {"host1": 3, "host2": 1, "host3": 1}
    for host in fleet.fleet.hosts:  # the pids are those of the processes started on that host
        assert {view["pid"] for view in views if view["hostname"] == host.name} <= host.pids()


@pytest.fixture(scope="module")
def dashboard(fleet: Run) -> str:
    """`python cli.py dashboard` on host3's address (off loopback: basic auth); its base URL."""
    host, port = fleet.fleet.hosts[2], free_port()
    process = fleet.start(host, "cli.py", "dashboard", "--host", host.address, "--port", str(port))
    url = f"http://{host.address}:{port}"

    def answers() -> bool:
        try:
            return httpx.get(url + "/", timeout=2).status_code == 401
        except httpx.TransportError:
            return process.poll() is not None  # it died: the test says so

    wait_until(answers, 30, "the dashboard on host3")
    assert process.poll() is None
    return url


def shown_workers(fleet: Run, dashboard: str) -> list[dict[str, Any]]:
    """The rows of the dashboard's workers page (it draws them from workers.json), with credentials."""
    auth = ("fleet", fleet.env["RQKIT_DASHBOARD_PASSWORD"])
    assert httpx.get(dashboard + "/0/view/workers", auth=auth, timeout=10).status_code == 200
    data = httpx.get(dashboard + "/0/data/workers.json", auth=auth, timeout=10)
    assert data.status_code == 200
    workers: list[dict[str, Any]] = data.json()["workers"]
    return workers


def test_the_dashboard_on_a_host_lists_every_hosts_workers_behind_basic_auth(
    fleet: Run, dashboard: str
) -> None:
    for path in ("/0/view/workers", "/0/data/workers.json"):
        assert httpx.get(dashboard + path, timeout=10).status_code == 401
        assert httpx.get(dashboard + path, auth=("fleet", "wrong"), timeout=10).status_code == 401
    assert {worker["name"] for worker in shown_workers(fleet, dashboard)} == set(fleet.hostnames())


def test_the_dashboard_shows_each_workers_hostname(fleet: Run, dashboard: str) -> None:
    listed = {worker["name"]: worker.get("hostname") for worker in shown_workers(fleet, dashboard)}
    assert listed == fleet.hostnames()


def fired(redis: Redis) -> list[int]:
    """The due times (epoch seconds) that the entry's triggers claimed."""
    keys = redis.scan_iter("rqkit:schedule:fired:fleet-tick:*")
    return sorted(int(key.decode().rsplit(":", 1)[1]) for key in keys)


def test_schedulers_on_two_hosts_fire_each_due_time_once(fleet: Run) -> None:
    host2, host3 = fleet.fleet.hosts[1:]
    synced = fleet.python(host2, "cli.py", "schedule", "sync")
    assert synced.returncode == 0, synced.stderr
    schedulers = [fleet.start(host, "-m", "scheduler", "-i", "1") for host in (host2, host3)]
    wait_until(lambda: len(fired(fleet.redis)) >= 15, 60, "15 due times of the entry", every=0.5)
    for scheduler in schedulers:
        assert scheduler.poll() is None  # both ran all along
        scheduler.terminate()
        scheduler.wait(20)
    tick = rq_classes.Queue("tick", connection=fleet.redis)
    wait_until(lambda: tick.count == 0 and tick.started_job_registry.count == 0, 30, "the last runs")

    dues = fired(fleet.redis)
    finished = rq_classes.Job.fetch_many(tick.finished_job_registry.get_job_ids(), connection=fleet.redis)
    jobs = [job for job in finished if job is not None]
    runs = [job for job in jobs if job.func_name == "jobs.demo.sleep"]
    fires = [job.return_value() or {} for job in jobs if job.func_name == "scheduler.periodic.fire"]
    triggers = Counter(fire.get("status") for fire in fires)
    assert len(runs) == len(dues) == triggers["enqueued"]  # a run per due time, each due time once
    steps = [later - earlier for earlier, later in zip(dues, dues[1:], strict=False)]
    assert all(step > 0 and step % TICK_EVERY == 0 for step in steps)  # on the entry's grid
    missed = sum(step // TICK_EVERY - 1 for step in steps)
    print(
        f"schedulers on 2 hosts, every {TICK_EVERY}s: {len(dues)} due times fired once each, "
        f"{len(runs)} runs, {missed} due times passed over, trigger outcomes {dict(triggers)}"
    )


@dataclass
class CutOff:
    """host1 cut off while it ran a held API call and a held email; what was enqueued after the cut."""

    host: Host
    at: float  # time.monotonic() of the cut
    call: Job
    email: Job
    after: list[str]  # jobs enqueued just after the cut, to the queues host1's worker was waiting on
    seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (job id, status): s after the cut
    stop: threading.Event = field(default_factory=threading.Event)

    def watch(self, redis: Redis) -> None:
        """Note when each held job first shows each status, whichever test looks at it, and when."""
        while not self.stop.wait(0.2):
            with redis.pipeline(transaction=False) as pipe:
                for job in (self.call, self.email):
                    pipe.hget(job.key, "status")
                for job, status in zip((self.call, self.email), pipe.execute(), strict=True):
                    self.seen.setdefault(
                        (job.id, (status or b"missing").decode()), time.monotonic() - self.at
                    )

    def when(self, job: Job, reached: Callable[[str], bool], within: float, what: str) -> tuple[float, str]:
        """Seconds from the cut until `job` first showed a status that `reached`, and that status."""

        def first() -> tuple[float, str] | None:
            times = [(at, status) for (job_id, status), at in list(self.seen.items()) if job_id == job.id]
            return min(((at, status) for at, status in times if reached(status)), default=None)

        found: tuple[float, str] = wait_until(first, within, what)
        return found


HELD_KEY = "fleet-cut-off"  # the held email's idempotency key


@pytest.fixture(scope="module")
def cut_off(fleet: Run) -> Iterator[CutOff]:
    """host1 runs an idempotent job (a GET) and a once-only one (an email) whose replies are held, a
    worker on their queue starts on each other host, then host1's link goes down: mid-job."""
    victim, others = fleet.fleet.hosts[0], fleet.fleet.hosts[1:]
    call = submit("api-call", ("GET", f"{fleet.api.url}/hold/cut-off"), queue="cutoff").job
    mail = {
        "to": "ops@example.com",
        "subject": f"{HOLD} cut off",
        "text": "once",
        "idempotency_key": HELD_KEY,
    }
    email = submit("email", (), mail, queue="cutoff").job
    held = lambda: fleet.api.senders("/hold/cut-off") and fleet.sink.senders(message_id(HELD_KEY))  # noqa: E731
    wait_until(held, 60, "host1 to send the held request and message")
    assert fleet.api.senders("/hold/cut-off") == fleet.sink.senders(message_id(HELD_KEY)) == [victim.address]
    for host in others:
        fleet.start_worker(host, "workers.ForkingWorker", "cutoff")
    wait_until(lambda: len(fleet.workers()) == 7, 60, "a worker on cutoff on host2 and host3", every=0.5)
    for job in (call, email):
        job.refresh()
        assert job.get_status() == "started" and fleet.host_of(job.worker_name) == victim.name
    victim.cut_off()
    at = time.monotonic()
    after = submit_many("sleep", [(0,)] * 200).jobs.ids + submit_many("prune-tags", [()] * 20).jobs.ids
    cut = CutOff(victim, at, call, email, after)
    watcher = threading.Thread(target=cut.watch, args=(fleet.redis,), name="fleet-watch", daemon=True)
    watcher.start()
    yield cut
    cut.stop.set()
    watcher.join(10)


def test_no_job_enqueued_after_a_host_is_cut_off_is_lost(fleet: Run, cut_off: CutOff) -> None:
    """host1's drain worker was waiting in BLPOP when its link went down: the job Redis handed to that
    dead connection is put back on its queue by the orphan recovery (release-due's, every minute; here
    with short waits), and runs once."""
    quick = Timing(grace=5, confirm=5, late_reply=15, slack=1)

    def ended() -> bool:
        recover_orphans(fleet.redis, quick)
        return statuses(fleet.redis, cut_off.after) == {"finished": len(cut_off.after)}

    try:
        wait_until(ended, 150, "the jobs enqueued after the cut", every=2)
    except AssertionError:
        raise AssertionError(
            f"150 s after host1 was cut off, the {len(cut_off.after)} jobs enqueued then are "
            f"{dict(statuses(fleet.redis, cut_off.after))}"
        ) from None


def test_a_cut_off_hosts_idempotent_job_is_found_abandoned_and_run_again(fleet: Run, cut_off: CutOff) -> None:
    call = cut_off.call
    found, status = cut_off.when(
        call, lambda status: status != "started", ABANDONED_WITHIN, "the call abandoned"
    )
    assert status in ("queued", "scheduled")  # to be run again
    rerun, _ = cut_off.when(call, lambda status: status in ("finished", "failed"), 120, "the call's rerun")
    call.refresh()
    assert call.get_status() == "finished"
    senders = fleet.api.senders("/hold/cut-off")  # host1's request, then the rerun's from another host
    assert senders[0] == cut_off.host.address and len(senders) == 2
    assert senders[1] in {host.address for host in fleet.fleet.hosts[1:]}
    assert fleet.host_of(call.worker_name) in ("host2", "host3")
    print(
        f"host1 cut off mid-job: its API call found abandoned after {found:.1f} s ({status}), run again "
        f"to the end by {fleet.host_of(call.worker_name)} {rerun:.1f} s after the cut"
    )


def test_a_cut_off_hosts_email_is_found_abandoned_and_not_sent_again_at_once(
    fleet: Run, cut_off: CutOff
) -> None:
    """host1 had sent the message when it was cut off, but never heard the reply."""
    found, status = cut_off.when(
        cut_off.email, lambda s: s != "started", ABANDONED_WITHIN, "the email abandoned"
    )
    print(f"host1 cut off mid-job: its email found abandoned after {found:.1f} s ({status})")
    assert fleet.sink.senders(message_id(HELD_KEY)) == [cut_off.host.address]


def test_a_cut_off_hosts_email_fails_with_a_reason_instead_of_being_sent_again(
    fleet: Run, cut_off: CutOff
) -> None:
    """Once-only: the message may have gone out. RQ's cleanup retries the abandoned job (it has retries,
    for SMTP errors); the retry finds the attempt record host1 wrote before DATA, and fails saying why."""
    cut_off.when(cut_off.email, lambda s: s == "failed", RETRY_FAILED_WITHIN, "the email's retry failed")
    result = cut_off.email.latest_result()
    reason = (result.exc_string or "") if result else ""
    assert "an earlier attempt was cut off after it began sending" in reason, reason
    assert fleet.sink.senders(message_id(HELD_KEY)) == [cut_off.host.address]


def test_a_cut_off_hosts_workers_wait_for_redis_mid_job_rather_than_exit(fleet: Run, cut_off: CutOff) -> None:
    """docs/reliability.md: a worker whose Redis is away while a job runs waits for it (config/outage.py)."""
    time.sleep(max(0.0, cut_off.at + ABANDONED_WITHIN - time.monotonic()))  # what is watched is time itself
    exited = [worker.poll() for worker in fleet.holders if worker.poll() is not None]
    assert not exited, f"{len(exited)} of host1's 2 workers that were mid-job exited (codes {exited})"
