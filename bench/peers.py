"""Peers benchmark: RQ, this toolkit's worker, Celery, Dramatiq, Huey and arq against bare redis-py.

One private redis-server (free loopback port, temp dir, alone on the first CPU) for everything; the
workers and clients on the other CPUs. Prints three tables:
- no-op jobs per second through one worker process each (N jobs enqueued first, then one worker
  drains them), against the bare redis-py ceiling (BRPOP, json.loads, call), with the worker's RSS;
- enqueue rates from one process, against pipelined LPUSH;
- enqueue-to-start latency (p50, p99) on an idle worker.
The no-op task is the same everywhere: one INCR of a Redis counter; the first and the last job stamp
the time, so a rate leaves out each worker's start-up. Celery, Dramatiq, Huey and arq are not project
dependencies: each goes into a throw-away venv of its own (~/.cache/rqkit-bench/peers-venv/NAME), never
into the project; one that can't be installed or run gets "n/a (reason)" rows.

Usage: .venv/bin/python bench/peers.py [--jobs 2000] [--samples 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
import rq
from redis import Redis
from rq import Queue

from config import get_settings
from config.settings import PROJECT_ROOT
from jobs import submit_many
from launcher.children import descendants, kill_tree
from launcher.redis_server import RedisServer, free_port
from launcher.stack import WORKER_ARGS
from workers.lifetime import die_with_parent

PEERS_HOME = Path.home() / ".cache" / "rqkit-bench" / "peers-venv"  # one venv per peer in there
# One venv each: arq wants redis-py < 6, Celery's Redis transport >= 6.4.
PEERS = {
    "celery": ("celery[redis]",),
    "dramatiq": ("dramatiq[redis]",),
    "huey": ("huey", "redis"),
    "arq": ("arq",),
}
QUEUE = "default"
BATCH = 500
GAP = 0.02  # seconds between a latency sample's job being done and the next enqueue
WORKER_NAME = "bench"
BATCH_HORSE = 100  # jobs per work-horse in the toolkit's batch row (the horse_jobs setting)

# The no-op task's body, shared by every system (each worker imports it from the temp folder).
BENCHTASK = '''
"""bench/peers.py's no-op task: one INCR; the first and the last job (of n) stamp the time."""
import os
import time

import redis

_client = None


def client():
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"], socket_timeout=None)
    return _client


def noop(n):
    if n:  # n == 0: the driver's warm-up message, not counted
        count = client().incr("bench:done")
        if count == 1 or count == n:
            client().set(f"bench:at:{count}", repr(time.time()))


def stamp(enqueued):
    started = time.time()  # the task's first line: a client made in a fresh process comes after it
    client().rpush("bench:latency", repr(started - enqueued))
'''

# The bare ceiling: a loop of BRPOP, json.loads and a call of the named function.
BARE_WORKER = """
import json
import benchtask
client = benchtask.client()
while True:
    popped = client.brpop("bench:lpush", timeout=1)
    if popped:
        message = json.loads(popped[1])
        getattr(benchtask, message["func"])(*message["args"])
"""

# One module per system, each with make_sender(): a function (task name, *args) that enqueues one task.
SENDERS = {
    "bare": """
import json
import uuid
import benchtask

def make_sender():
    client = benchtask.client()
    def send(name, *args):
        client.lpush("bench:lpush", json.dumps({"id": uuid.uuid4().hex, "func": name, "args": args}))
    return send
""",
    "rq": """
import time
from rq import Queue
import benchtask

def make_sender():
    queue = Queue("default", connection=benchtask.client())
    return lambda name, *args: queue.enqueue(f"benchtask.{name}", *args)

def settle():  # a forking worker is idle again only after its work-horse is done
    while benchtask.client().hget("rq:worker:bench", "state") != b"idle":
        time.sleep(0.001)
""",
    "celery": """
import os
import benchtask
from celery import Celery

app = Celery("peer_celery", broker=os.environ["BENCH_REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True

@app.task
def noop(n):
    benchtask.noop(n)

@app.task
def stamp(enqueued):
    benchtask.stamp(enqueued)

def make_sender():
    tasks = {"noop": noop, "stamp": stamp}
    return lambda name, *args: tasks[name].delay(*args)
""",
    "dramatiq": """
import os
import benchtask
import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS_URL"]))

@dramatiq.actor
def noop(n):
    benchtask.noop(n)

@dramatiq.actor
def stamp(enqueued):
    benchtask.stamp(enqueued)

def make_sender():
    actors = {"noop": noop, "stamp": stamp}
    return lambda name, *args: actors[name].send(*args)
""",
    "huey": """
import os
import benchtask
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])

@huey.task()
def noop(n):
    benchtask.noop(n)

@huey.task()
def stamp(enqueued):
    benchtask.stamp(enqueued)

def make_sender():
    tasks = {"noop": noop, "stamp": stamp}
    return lambda name, *args: tasks[name](*args)
""",
    "arq": """
import asyncio
import os
import time
from arq import create_pool
from arq.connections import RedisSettings

SETTINGS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
JITTER = 0.5  # its worker polls every 0.5 s: enqueue at random phases of that, not in step with it

async def noop(ctx, n):
    if n:
        count = await ctx["redis"].incr("bench:done")
        if count == 1 or count == n:
            await ctx["redis"].set(f"bench:at:{count}", repr(time.time()))

async def stamp(ctx, enqueued):
    await ctx["redis"].rpush("bench:latency", repr(time.time() - enqueued))

class WorkerSettings:
    functions = [noop, stamp]
    redis_settings = SETTINGS

def make_sender():
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(create_pool(SETTINGS))
    return lambda name, *args: loop.run_until_complete(pool.enqueue_job(name, *args))
""",
}

# Runs with each system's python: `driver.py MODULE enqueue N` or `driver.py MODULE latency SAMPLES`.
DRIVER = """
import importlib
import json
import random
import sys
import time
import benchtask

module = importlib.import_module(sys.argv[1])
mode, count, gap = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
send = module.make_sender()
client = benchtask.client()
if mode == "enqueue":
    send("noop", 0)  # connects (and declares queues) before the clock starts
    start = time.perf_counter()
    for _ in range(count):
        send("noop", count)
    print(json.dumps(time.perf_counter() - start))
else:
    send("stamp", time.time())  # the first job waits for the worker to be up
    if client.blpop("bench:latency", timeout=60) is None:
        sys.exit("the worker started no job within 60 s")
    seconds = []
    for _ in range(count):
        getattr(module, "settle", lambda: None)()
        time.sleep(gap + random.uniform(0, getattr(module, "JITTER", 0)))
        send("stamp", time.time())
        popped = client.blpop("bench:latency", timeout=10)
        if popped is None:
            sys.exit("a job did not start within 10 s")
        seconds.append(float(popped[1]))
    print(json.dumps(seconds))
"""

VERSIONS = """
import importlib.metadata, json, sys
print(json.dumps({name: importlib.metadata.version(name) for name in (sys.argv[1], "redis")}))
"""


class Unavailable(Exception):
    """A system that cannot be measured; its rows say why."""


@dataclass
class System:
    """One way to run the no-op jobs: its worker's command lines and the module that enqueues for it."""

    key: str  # names its log files
    label: str
    sends: str  # how its enqueue row is labelled (peers only)
    python: str  # the interpreter of its driver and its worker: the project's, or the peers' venv
    module: str  # the sender module (SENDERS) the driver imports
    drain: list[str]  # the worker for the throughput run
    idle: list[str]  # the worker for the latency run
    burst: bool = False  # the drain worker exits by itself once the queue is empty
    fork: bool = False  # a work-horse per job: a quarter of the jobs
    rss_child: bool = False  # report the forked worker's RSS (dramatiq's master only supervises)
    polls: bool = False  # the worker polls every 0.5 s: random gaps, a quarter of the samples
    broken: str = ""  # why it can't run, if it can't
    tree: Path | None = None  # another checkout of the project for its worker to run (history_cost.py)


Drained = tuple[int, float, float, float]  # jobs, jobs/s, seconds to the first job, RSS MB


@dataclass
class Results:
    drained: dict[str, Drained | str] = field(default_factory=dict)  # the median round's
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)  # slowest and fastest jobs/s
    enqueued: list[tuple[str, float | str]] = field(default_factory=list)
    latency: dict[str, list[float] | str] = field(default_factory=dict)


class Bench:
    """The private Redis, the temp folder with the task modules, and how to run things there."""

    def __init__(self, work: Path, url: str) -> None:
        self.work, self.url = work, url
        self.connection = Redis.from_url(url)
        self.enqueue_seconds: dict[str, float] = {}
        for name, text in {"benchtask": BENCHTASK, "bare_worker": BARE_WORKER, "driver": DRIVER}.items():
            (work / f"{name}.py").write_text(text)
        for name, text in SENDERS.items():
            (work / f"peer_{name}.py").write_text(text)
        (work / "logs").mkdir()
        self.env = dict(
            os.environ,
            BENCH_REDIS_URL=url,
            REDIS_URL=url,
            RQ_REDIS_URL=url,
            PYTHONPATH=str(work),
            PYTHONUNBUFFERED="1",
            RQKIT_JOB_FUNCTIONS="benchtask.*",  # the benchmark's own jobs (workers/allowed.py)
        )

    def spawn(self, system: System, command: list[str], log: str) -> subprocess.Popen[bytes]:
        """Start a worker in a session of its own (the project's from the repo root, for `config`, or
        from the system's own tree, first on its path)."""
        cwd = system.tree or (PROJECT_ROOT if system.python == sys.executable else self.work)
        env = dict(self.env, PYTHONPATH=f"{system.tree}{os.pathsep}{self.work}") if system.tree else self.env
        with open(self.work / "logs" / log, "wb") as out:
            return subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def drive(self, system: System, mode: str, count: int, gap: float = 0.0) -> object:
        """Run driver.py with the system's python (enqueue N no-ops, or take latency samples)."""
        command = [system.python, "driver.py", f"peer_{system.module}", mode, str(count), str(gap)]
        timeout = 60 + count * (0.05 if mode == "enqueue" else 1.0)
        done = subprocess.run(
            command, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode:
            raise Unavailable(last_line(done.stderr) or f"driver exited with {done.returncode}")
        return json.loads(done.stdout)

    def log_tail(self, log: str) -> str:
        return last_line((self.work / "logs" / log).read_text(errors="replace"))


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:100] if lines else ""


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group; SIGKILL whatever is left of its tree after 10 s."""
    family = descendants(process.pid)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait()
    time.sleep(0.2)
    for pid in family:  # an RQ work-horse has a process group of its own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next(
        (int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0
    )


def watched(process: subprocess.Popen[bytes], system: System) -> int | None:
    """The pid whose RSS to report: the worker's, or its forked child's (None until there is one)."""
    if not system.rss_child:
        return process.pid
    return max(descendants(process.pid), key=rss_mb, default=None)


def counted(connection: Redis) -> int:
    return int(connection.get("bench:done") or 0)


def drain(bench: Bench, system: System, n: int) -> Drained:
    """Enqueue n no-op jobs (their seconds go to bench.enqueue_seconds), then one worker works them off:
    jobs, jobs/s, seconds from the worker's start to its first job, RSS in MB (last reading while it ran)."""
    bench.connection.flushdb()
    bench.enqueue_seconds[system.key] = float(bench.drive(system, "enqueue", n))  # type: ignore[arg-type]
    started = time.time()
    process = bench.spawn(system, system.drain, f"{system.key}-drain.log")
    rss, pid = 0.0, None
    try:
        deadline = time.monotonic() + 60 + n * 0.05
        while True:
            exited = process.poll() is not None
            if counted(bench.connection) >= n:
                break
            if exited:
                raise Unavailable(f"worker exited: {bench.log_tail(f'{system.key}-drain.log')}")
            if time.monotonic() > deadline:
                raise Unavailable(f"timeout, {counted(bench.connection)} of {n} done")
            pid = pid or watched(process, system)
            rss = (pid and rss_mb(pid)) or rss
            time.sleep(0.05)
        rss = (pid and rss_mb(pid)) or rss
        if system.burst:
            process.wait(30)
    finally:
        stop(process)
    first, last = (float(bench.connection.get(f"bench:at:{i}") or 0) for i in (1, n))
    return n, (n - 1) / (last - first), first - started, rss


def latency(bench: Bench, system: System, samples: int) -> list[float]:
    """Seconds from enqueue to the job's start, one job at a time on an otherwise idle worker."""
    bench.connection.flushdb()
    process = bench.spawn(system, system.idle, f"{system.key}-idle.log")
    try:
        return bench.drive(system, "latency", samples, GAP)  # type: ignore[return-value]
    finally:
        stop(process)


def attempt(action: Callable[[], object]) -> object:
    """The action's result, or 'n/a (reason)': one system's failure never stops the run."""
    try:
        return action()
    except Unavailable as exc:
        return f"n/a ({exc})"
    except Exception as exc:  # noqa: BLE001 - a peer may fail in any way; its rows say how
        return f"n/a ({type(exc).__name__}: {str(exc)[:100]})"


def can_download(work: Path) -> bool:
    """Whether pip reaches a package registry (one small wheel, no dependencies)."""
    probe = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work / "pip"), "huey"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def peer_venv(name: str, work: Path) -> str:
    """The python of the peer's throw-away venv, made and filled if needed; Unavailable if it can't be."""
    venv = PEERS_HOME / name
    python = venv / "bin" / "python"
    if python.exists() and importable(python, name):
        return str(python)
    if not can_download(work):
        raise Unavailable("pip download fails: no package registry")
    print(f"installing {' '.join(PEERS[name])} into {venv}", flush=True)
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True
    )
    if made.returncode:
        raise Unavailable(f"python -m venv: {last_line(made.stderr)}")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEERS[name]]
    installed = subprocess.run(pip, capture_output=True, text=True)
    if installed.returncode or not importable(python, name):
        raise Unavailable(f"pip install: {last_line(installed.stderr) or 'not importable'}")
    return str(python)


def importable(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def versions(python: str, name: str) -> dict[str, str]:
    """The peer's version and the redis-py version in its venv."""
    done = subprocess.run([python, "-c", VERSIONS, name], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def rq_systems(work: Path) -> list[System]:
    """The bare ceiling, RQ's two workers and the toolkit's, all with the project's python."""
    py = sys.executable
    plain = [py, "-m", "rq.cli", "worker", "-n", WORKER_NAME]
    simple = [*plain, "-w", "rq.worker.SimpleWorker"]
    toolkit = [py, "-m", "rq.cli", *WORKER_ARGS, "-S", get_settings().serializer, "-n", WORKER_NAME]
    in_process = [part.replace("ForkingWorker", "InProcessWorker") for part in toolkit]
    batch = ["env", f"RQKIT_HORSE_JOBS={BATCH_HORSE}", *(p.replace("Forking", "Batch") for p in toolkit)]
    bare = [py, str(work / "bare_worker.py")]
    version = rq.__version__
    rq_rows = [
        ("rq-simple", f"RQ {version} SimpleWorker", simple, False),
        ("rq-fork", f"RQ {version} Worker (fork per job)", plain, True),
        ("toolkit", "toolkit ForkingWorker (as up runs it)", toolkit, True),
        ("toolkit-batch", f"toolkit BatchWorker, a horse per {BATCH_HORSE} jobs", batch, False),
        ("toolkit-inproc", "toolkit InProcessWorker", in_process, False),
    ]
    return [System("bare", "bare redis-py: BRPOP, json.loads, call", "", py, "bare", bare, bare)] + [
        System(key, label, "", py, "rq", [*worker, "--burst", QUEUE], [*worker, QUEUE], burst=True, fork=fork)
        for key, label, worker, fork in rq_rows
    ]


PEER_WORKERS = {  # name: (title, worker mode, how a task is sent, the worker: {bin} is its venv's bin)
    "celery": (
        "Celery",
        "--pool solo",
        "delay()",
        "{bin}/celery -A peer_celery worker --pool solo --concurrency 1",
    ),
    "dramatiq": (
        "Dramatiq",
        "1 process, 1 thread",
        "send()",
        "{bin}/dramatiq peer_dramatiq --processes 1 --threads 1",
    ),
    "huey": ("Huey", "RedisHuey, 1 thread", "task()", "{bin}/huey_consumer peer_huey.huey --workers 1"),
    "arq": ("arq", "defaults: max_jobs 10, poll 0.5 s", "enqueue_job()", "{bin}/arq peer_arq.WorkerSettings"),
}


def peer_systems(work: Path) -> tuple[list[System], dict[str, dict[str, str]]]:
    """Celery, Dramatiq, Huey and arq from their venvs (a row saying why, for one that can't run), and
    the versions found there."""
    found, found_versions = [], {}
    for name, (title, mode, send, command) in PEER_WORKERS.items():
        python, broken = "", ""
        try:
            python = peer_venv(name, work)
        except Unavailable as exc:
            broken = str(exc)
        found_versions[name] = versions(python, name) if python else {}
        titled = f"{title} {found_versions[name].get(name, '')}".rstrip()
        worker = command.format(bin=Path(python).parent).split()
        found.append(
            System(
                name,
                f"{titled} ({mode})",
                f"{titled} {send}, one by one",
                python,
                name,
                worker,
                worker,
                rss_child=name == "dramatiq",
                polls=name == "arq",
                broken=broken,
            )
        )
    return found, found_versions


def message(n: int) -> str:
    return json.dumps({"id": uuid.uuid4().hex, "func": "noop", "args": [n]})


def lpush_pipelined(connection: Redis, n: int) -> None:
    for start in range(0, n, BATCH):
        with connection.pipeline(transaction=False) as pipe:
            for _ in range(min(BATCH, n - start)):
                pipe.lpush("bench:lpush", message(n))
            pipe.execute()


def rq_enqueue_many(queue: Queue, n: int) -> None:
    for start in range(0, n, BATCH):
        datas = [Queue.prepare_data("benchtask.noop", (n,)) for _ in range(min(BATCH, n - start))]
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()


def toolkit_submit_many(n: int) -> None:
    submitted = submit_many("sleep", [(0,)] * n)
    assert not submitted.refused, submitted.refused[:1]


def enqueue_rates(connection: Redis, n: int) -> list[tuple[str, float | str]]:
    """Enqueues per second from this process, the median of 3 runs of n each (at least 20,000 for the
    bulk ways, which are for large batches)."""
    queue = Queue(QUEUE, connection=connection)
    bulk = max(n, 20_000)
    ways: list[tuple[str, int, Callable[[], object]]] = [
        (f"LPUSH, pipelined (batches of {BATCH})", bulk, lambda: lpush_pipelined(connection, bulk)),
        ("LPUSH, one by one", n, lambda: [connection.lpush("bench:lpush", message(n)) for _ in range(n)]),
        ("RQ Queue.enqueue, one by one", n, lambda: [queue.enqueue("benchtask.noop", n) for _ in range(n)]),
        (f"RQ enqueue_many + prepare_data (batches of {BATCH})", bulk, lambda: rq_enqueue_many(queue, bulk)),
        ('toolkit submit_many("sleep", [(0,)] * N)', bulk, lambda: toolkit_submit_many(bulk)),
    ]
    rates: list[tuple[str, float | str]] = []
    for name, count, action in ways:
        rate = attempt(lambda: median_rate(connection, count, action))  # noqa: B023 - called at once
        rates.append((name, rate if isinstance(rate, float) else str(rate)))
    return rates


def median_rate(connection: Redis, n: int, action: Callable[[], object]) -> float:
    """n / the median seconds of 3 runs of `action`, each on an empty database."""
    seconds = []
    for _ in range(3):
        connection.flushdb()
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return n / statistics.median(seconds)


def measure(bench: Bench, everything: list[System], n: int, samples: int, rounds: int) -> Results:
    """Enqueue rates, then each system's throughput in `rounds` rounds that take the systems in turn
    (this machine's speed drifts by a third within minutes: one round each would compare moments,
    not systems), then each one's latency."""
    results = Results()
    results.enqueued = enqueue_rates(bench.connection, n)
    runs: dict[str, list[Drained] | str] = {
        system.key: f"n/a ({system.broken})" if system.broken else [] for system in everything
    }
    for round_ in range(1, rounds + 1):
        for system in everything:
            done = runs[system.key]
            if isinstance(done, str):
                continue
            print(f"measuring {system.label}, round {round_} of {rounds}", flush=True)
            jobs = n // 4 if system.fork else n
            got = attempt(lambda: drain(bench, system, jobs))  # noqa: B023 - called at once
            runs[system.key] = done + [got] if isinstance(got, tuple) else str(got)  # type: ignore[list-item]
    for system in everything:
        done = runs[system.key]
        if isinstance(done, str):
            results.drained[system.key] = results.latency[system.key] = done
        else:
            ordered = sorted(done, key=lambda drained: drained[1])
            results.drained[system.key] = ordered[len(ordered) // 2]
            results.spread[system.key] = (ordered[0][1], ordered[-1][1])
            count = max(20, samples // 4) if system.polls else samples
            got = attempt(lambda: latency(bench, system, count))  # noqa: B023 - called at once
            results.latency[system.key] = got if isinstance(got, list) else str(got)
        if system.sends:  # a peer: its own enqueue, timed by the driver while filling the queue
            drained = results.drained[system.key]
            rate = drained if isinstance(drained, str) else drained[0] / bench.enqueue_seconds[system.key]
            results.enqueued.append((system.sends, rate))
    return results


def machine(connection: Redis, peers: dict[str, dict[str, str]]) -> str:
    """Cores, CPU model and every version that matters, on one line."""
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    server = connection.info("server")["redis_version"]
    found = [
        f"{name} {got[name]} (redis-py {got['redis']})" if got else f"{name} n/a"
        for name, got in peers.items()
    ]
    return (
        f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, redis-server {server}, "
        f"rq {rq.__version__} (redis-py {redis.__version__})" + "".join(f", {peer}" for peer in found)
    )


def line(label: str, *cells: str, widths: tuple[int, ...] = (9,) * 5 + (18,)) -> None:
    print(f"{label:<50}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=False)))


def print_tables(everything: list[System], results: Results) -> None:
    ceiling = results.drained.get("bare")
    base = ceiling[1] if isinstance(ceiling, tuple) else 0.0
    print()
    line("no-op jobs, one worker process", "jobs", "jobs/s", "vs bare", "start s", "RSS MB", "range")
    for system in everything:
        row = results.drained[system.key]
        if isinstance(row, str):
            print(f"{system.label:<50}  {row}")
            continue
        jobs, rate, startup, rss = row
        ratio = f"{rate / base:.3f}" if base else "?"
        low, high = results.spread[system.key]
        spread = f"{low:,.0f} to {high:,.0f}"
        line(system.label, str(jobs), f"{rate:,.0f}", ratio, f"{startup:.2f}", f"{rss:.0f}", spread)
    fastest = results.enqueued[0][1]
    print()
    line("enqueue, from one process", "jobs/s", "us/job", "vs pipelined LPUSH", widths=(9, 9, 20))
    for name, speed in results.enqueued:
        if isinstance(speed, str) or isinstance(fastest, str):
            print(f"{name:<50}  {speed}")
            continue
        line(name, f"{speed:,.0f}", f"{1e6 / speed:.1f}", f"{speed / fastest:.3f}", widths=(9, 9, 20))
    print()
    line("enqueue to start, idle worker", "samples", "p50 ms", "p99 ms", "max ms")
    for system in everything:
        got = results.latency[system.key]
        if isinstance(got, str):
            print(f"{system.label:<50}  {got}")
            continue
        cuts = statistics.quantiles(got, n=100, method="inclusive")
        line(system.label, str(len(got)), *(f"{ms * 1e3:.2f}" for ms in (cuts[49], cuts[98], max(got))))


def pin(server: RedisServer) -> str:
    """redis-server on the first CPU, this process and all it starts on the others: every round trip then
    crosses cores (left to the kernel, a run's placement made a loopback round trip 35 or 75 us)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or server.process is None:
        return "not pinned (one CPU)"
    os.sched_setaffinity(server.process.pid, {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))
    return f"redis-server pinned to CPU {cpus[0]}, workers and clients to CPU {','.join(map(str, cpus[1:]))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run (a quarter for forking workers)")
    parser.add_argument("--samples", type=int, default=200, help="latency samples (a quarter for arq)")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds; the median is shown")
    parser.add_argument("--only", help="systems to run, by key (like rq-fork,toolkit); all if not given")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peers, peer_versions = peer_systems(work)
        with private_redis(work) as (server, pinned):
            bench = Bench(work, server.url)
            everything = rq_systems(work) + peers
            if options.only:
                everything = [system for system in everything if system.key in options.only.split(",")]
            results = measure(bench, everything, options.jobs, options.samples, options.rounds)
            print(f"\n{machine(bench.connection, peer_versions)}; {pinned}")
    print_tables(everything, results)


@contextmanager
def private_redis(work: Path) -> Iterator[tuple[RedisServer, str]]:
    """A private redis-server under `work`, alone on the first CPU (and how it was pinned), with the
    toolkit's settings pointed at it (no settings file, pickle); stopped at the end."""
    server = RedisServer(free_port(), work / "redis").start()
    pinned = pin(server)
    (work / "none.toml").write_text("")
    os.environ.update(
        REDIS_URL=server.url,
        RQKIT_VAR_DIR=str(work),
        RQKIT_CONFIG=str(work / "none.toml"),
        RQKIT_SERIALIZER="pickle",
    )
    get_settings.cache_clear()
    try:
        yield server, pinned
    finally:
        server.stop()


if __name__ == "__main__":
    main()
