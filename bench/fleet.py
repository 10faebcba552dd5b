"""Fleet benchmark: `python cli.py up` with one worker per core against one worker, on one host.

`up` is started as a user starts it (`python cli.py up --workers K --no-scheduler --no-dashboard`: its
ForkingWorkers on every queue, and the mail sink) against a private redis-server (peers.py's, here left
to the kernel on every CPU, as a user's would be: the fleet's workers need all of them). Once its workers
are registered idle and its processes have settled, each workload is enqueued in one go with
`jobs.submit_many` and drained: N no-op jobs (the toolkit's `sleep 0`), then thumbs.py's corpus through
the real `thumbnail` job (3 sizes each). The rate counts from the first job's start to the last one's end
(RQ's started_at and ended_at in the job hashes). Rounds start a fleet of 1 and one of K in turn (the
order alternating), so that the machine's drift falls on both; the median round is shown, with each
round's ratio. CPU per job splits what the machine spent between the enqueue and the last job seen done:
the workers with their work-horses and `up` (from /proc), Redis (INFO cpu), this script, and the rest
of the machine (/proc/stat), the load of whoever else runs here.

Usage: .venv/bin/python -m bench.fleet [--jobs 1000] [--images 100] [--rounds 5] [--workers K]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from rq.job import Job
from rq.utils import utcparse

from bench.history_cost import Snapshot
from bench.peers import last_line, machine, private_redis, stop
from bench.thumbs import CACHE, SIZES, local, make_corpus, relative
from config import get_settings
from config.rq_classes import Queue
from config.settings import PROJECT_ROOT
from jobs import submit_many
from jobs.images import Places
from launcher.children import descendants
from launcher.redis_server import free_port
from workers.lifetime import die_with_parent

TICK = os.sysconf("SC_CLK_TCK")
POLL = 0.05  # seconds between two looks at the registries
SETTLED = 0.05  # `up`'s processes count as settled below this share of a core over half a second
READY_SECONDS = 90  # for `up`'s workers to register idle and its processes to settle
TARGET = 1.8


@dataclass(frozen=True)
class Workload:
    """A kind of job the fleet drains: the registry's job, its calls, and what a job is counted as."""

    key: str
    label: str
    job: str
    calls: list[tuple[Any, ...]]
    kwargs: dict[str, Any]
    unit: str
    seconds_per_job: float  # at most, for the drain's deadline


@dataclass(frozen=True)
class Cpu:
    """CPU seconds so far: Redis (with its command count), the workers with their work-horses, `up`
    itself with its other children, this script, and the whole machine's busy time."""

    redis: float
    commands: int
    workers: float
    up: float
    bench: float
    machine: float

    @classmethod
    def take(cls, connection: Redis, up_pid: int) -> Cpu:
        snapshot = Snapshot.take(connection)
        up, workers = process_cpu(up_pid, children=False), 0.0
        for pid in descendants(up_pid):
            if b"rq.cli" in read_proc(pid, "cmdline"):
                workers += process_cpu(pid, children=True)
            else:
                up += process_cpu(pid, children=True)
        own = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            snapshot.redis_cpu,
            sum(snapshot.calls.values()),
            workers,
            up,
            own.ru_utime + own.ru_stime,
            machine_busy(),
        )

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(*(getattr(self, name) - getattr(other, name) for name in self.__dataclass_fields__))


@dataclass(frozen=True)
class Drain:
    """One drain: jobs, jobs/s from the first start to the last end, the seconds from the enqueue to the
    last job seen done, the CPU spent meanwhile, and the 1-minute load average after it."""

    jobs: int
    rate: float
    window: float
    cpu: Cpu
    load: float


def read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def process_cpu(pid: int, children: bool) -> float:
    """The process's user + system CPU seconds, with those of its children it has reaped (a work-horse's
    time goes to its worker as the worker waits for it)."""
    fields = read_proc(pid, "stat").rpartition(b")")[2].split()
    if not fields:
        return 0.0
    ticks = fields[11:15] if children else fields[11:13]  # utime stime cutime cstime
    return sum(int(tick) for tick in ticks) / TICK


def machine_busy() -> float:
    """CPU seconds the machine has spent on anything but idle and I/O wait, over all CPUs."""
    with open("/proc/stat") as stat:
        ticks = [int(tick) for tick in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def idle_workers(connection: Redis) -> int:
    """How many registered workers are idle."""
    names = connection.smembers("rq:workers")
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(name, "state")
        return sum(state == b"idle" for state in pipe.execute())


def wait_ready(connection: Redis, process: subprocess.Popen[bytes], workers: int, log: Path) -> None:
    """Until `up`'s workers are registered idle and its processes have settled (start-up done)."""
    deadline = time.monotonic() + READY_SECONDS
    while idle_workers(connection) < workers:
        if process.poll() is not None:
            raise RuntimeError(f"up exited with {process.returncode}: {last_line(log.read_text())}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"up's {workers} workers were not idle within {READY_SECONDS} s")
        time.sleep(0.1)
    before = Cpu.take(connection, process.pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = Cpu.take(connection, process.pid)
        if (now.workers + now.up) - (before.workers + before.up) < SETTLED * 0.5:
            return
        before = now
    raise RuntimeError(f"up's processes did not settle within {READY_SECONDS} s")


@contextmanager
def fleet(connection: Redis, work: Path, workers: int, round_: int) -> Iterator[subprocess.Popen[bytes]]:
    """`python cli.py up` with `workers` workers, ready; stopped at the end (SIGTERM to its group, then
    SIGKILL to what is left of its tree)."""
    connection.flushdb()
    command = [sys.executable, "cli.py", "up", "--workers", str(workers), "--no-scheduler", "--no-dashboard"]
    log = work / "logs" / f"up-{workers}-round-{round_}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        wait_ready(connection, process, workers, log)
        yield process
    finally:
        stop(process)


def drain(connection: Redis, up_pid: int, workload: Workload) -> Drain:
    """Enqueue the workload in one go, wait until every job is done (bounded), and time it."""
    before, started = Cpu.take(connection, up_pid), time.monotonic()
    submitted = submit_many(workload.job, workload.calls, workload.kwargs, connection=connection)
    assert not submitted.refused, submitted.refused[:1]
    queue = Queue(submitted.jobs[0].origin, connection=connection)
    registries = (queue.finished_job_registry.key, queue.failed_job_registry.key)
    n = len(submitted.jobs.ids)
    deadline = started + 60 + n * workload.seconds_per_job
    while sum(connection.zcard(key) for key in registries) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workload.label}: not done within {deadline - started:.0f} s")
        time.sleep(POLL)
    window, spent = time.monotonic() - started, Cpu.take(connection, up_pid) - before
    return Drain(n, n / span(connection, submitted.jobs.ids), window, spent, os.getloadavg()[0])


def span(connection: Redis, ids: list[str]) -> float:
    """Seconds from the first job's start to the last one's end; every job must have finished."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), "status", "started_at", "ended_at")
        rows = pipe.execute()
    failed = [row[0] for row in rows if row[0] != b"finished"]
    assert not failed, f"{len(failed)} jobs not finished: {failed[:3]}"
    first = min(utcparse(row[1].decode()) for row in rows)
    last = max(utcparse(row[2].decode()) for row in rows)
    return (last - first).total_seconds()


Runs = dict[tuple[str, int], list[Drain]]


def measure(
    connection: Redis, work: Path, workloads: list[Workload], sizes: tuple[int, int], rounds: int
) -> Runs:
    """Each round starts a fleet of each size in turn (the order alternating) and drains each workload."""
    runs: Runs = {(workload.key, size): [] for workload in workloads for size in sizes}
    places = Places.from_settings(get_settings())
    for round_ in range(1, rounds + 1):
        for size in sizes if round_ % 2 else sizes[::-1]:
            with fleet(connection, work, size, round_) as up:
                for workload in workloads:
                    shutil.rmtree(local(places.thumbs_root), ignore_errors=True)
                    got = drain(connection, up.pid, workload)
                    runs[(workload.key, size)].append(got)
                    print(
                        f"round {round_} of {rounds}, {size} worker(s), {workload.label}: "
                        f"{got.rate:,.1f} {workload.unit}/s (load {got.load:.2f})",
                        flush=True,
                    )
    return runs


def median_drain(drains: list[Drain]) -> Drain:
    return sorted(drains, key=lambda drain: drain.rate)[len(drains) // 2]


def print_rates(workloads: list[Workload], sizes: tuple[int, int], runs: Runs) -> None:
    print(f"\n{'workload':<34}{'workers':>8}{'jobs':>6}{'per s':>8}{'range':>18}{'vs 1':>7}   by round")
    for workload in workloads:
        ones = runs[(workload.key, sizes[0])]
        for size in sizes:
            drains = runs[(workload.key, size)]
            rates = sorted(drain.rate for drain in drains)
            middle = statistics.median(rates)
            versus, paired = "", ""
            if size != sizes[0]:
                versus = f"{middle / statistics.median(d.rate for d in ones):.2f}x"
                paired = " ".join(
                    f"{mine.rate / one.rate:.2f}" for mine, one in zip(drains, ones, strict=True)
                )
            print(
                f"{workload.label:<34}{size:>8}{drains[0].jobs:>6}{middle:>8,.1f}"
                f"{f'{rates[0]:,.1f} to {rates[-1]:,.1f}':>18}{versus:>7}   {paired}"
            )


def print_cpu(workloads: list[Workload], sizes: tuple[int, int], runs: Runs) -> None:
    """The median round's CPU per job: in the workers (with their work-horses), Redis, `up` (and its mail
    sink), this script (the enqueue, the polling), the rest of the machine, and all; then how many cores
    the machine kept busy over the drain, and Redis's commands per job."""
    columns = ("in workers", "Redis", "up", "bench", "others", "all", "cores busy", "cmds/job")
    print(f"\n{'CPU ms per job, median round':<34}{'workers':>8}" + "".join(f"{c:>11}" for c in columns))
    for workload in workloads:
        for size in sizes:
            got = median_drain(runs[(workload.key, size)])
            cpu = got.cpu
            others = cpu.machine - cpu.workers - cpu.redis - cpu.up - cpu.bench
            spent = (cpu.workers, cpu.redis, cpu.up, cpu.bench, others, cpu.machine)
            cells = [f"{seconds * 1e3 / got.jobs:.2f}" for seconds in spent]
            cells += [f"{cpu.machine / got.window:.2f}", f"{cpu.commands / got.jobs:.1f}"]
            print(f"{workload.label:<34}{size:>8}" + "".join(f"{cell:>11}" for cell in cells))


def workloads_for(jobs: int, images: int) -> list[Workload]:
    """N `sleep 0` jobs, and one `thumbnail` job per source of thumbs.py's corpus (cached)."""
    places = Places.from_settings(get_settings())
    paths = make_corpus(CACHE / "corpus", images)
    return [
        Workload("noop", "no-op (toolkit `sleep 0`)", "sleep", [(0,)] * jobs, {}, "jobs", 0.2),
        Workload(
            "thumbs",
            f"thumbnails, {len(SIZES)} sizes (images)",
            "thumbnail",
            [(relative(path, places),) for path in paths],
            {"sizes": list(SIZES), "format": "jpeg"},
            "images",
            5.0,
        ),
    ]


def unpin(server_pid: int) -> str:
    """Undo peers.private_redis's pinning: Redis, this script and `up` on every CPU, left to the kernel."""
    cpus = set(range(os.cpu_count() or 1))
    os.sched_setaffinity(server_pid, cpus)
    os.sched_setaffinity(0, cpus)
    return f"redis-server, up and this script on CPUs {','.join(map(str, sorted(cpus)))}, not pinned"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000, help="no-op jobs per drain")
    parser.add_argument("--images", type=int, default=100, help="thumbnail sources (thumbs.py's corpus)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is shown")
    cores = os.cpu_count() or 1
    parser.add_argument("--workers", type=int, default=cores, help="the fleet's size (default: a core each)")
    options = parser.parse_args()
    sizes = (1, options.workers)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="rqkit-fleet-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        with private_redis(work) as (server, _):
            assert server.process is not None
            placed = unpin(server.process.pid)
            os.environ.update(
                RQKIT_MEDIA_ROOT=str(CACHE),
                RQKIT_THUMBNAILS_DIR=str(work / "thumbs"),
                RQKIT_SMTP_SINK_PORT=str(free_port()),
            )
            get_settings.cache_clear()
            connection = Redis.from_url(server.url)
            workloads = workloads_for(options.jobs, options.images)
            runs = measure(connection, work, workloads, sizes, options.rounds)
            print(f"\n{machine(connection, {}).rstrip(', ')}; {placed}")
    print(
        f"python cli.py up --workers K --no-scheduler --no-dashboard, K = {sizes[0]} and {sizes[1]}; "
        f"{options.rounds} rounds; 1-min load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; per s: jobs/s, images/s for thumbnails"
    )
    print_rates(workloads, sizes, runs)
    print_cpu(workloads, sizes, runs)


if __name__ == "__main__":
    main()
