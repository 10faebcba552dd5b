"""What idle workers cost Redis (issue 23): N workers waiting on `up`'s queues, with nothing to do.

For the toolkit's ForkingWorker (as `up` runs it), its InProcessWorker with the same options and RQ's
stock Worker (its own defaults, on the same queues): a fleet of worker processes on one private
redis-server (alone on the first CPU), grown in steps (50, 100, 200), started in batches; at each step,
once all are registered and have settled, watched for a fixed window: Redis's CPU (INFO cpu, user + sys)
per second, its commands per second by name (INFO commandstats), its clients and memory, and the
fleet's memory on the host (PSS, a work-horse's shared pages counted once). That is what the heartbeats
and the blocking waits cost while no job comes. A fleet stops growing if the host's available memory
falls under 2 GiB. Every process is stopped at the end (SIGTERM to its group, then SIGKILL, then a sweep
for anything that carries the run's mark in its environment), whatever happened.

Usage: .venv/bin/python -m bench.idle_workers [--workers 50,100,200] [--window 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis

from bench.history_cost import Snapshot
from bench.peers import last_line, machine, private_redis
from config import get_settings
from launcher.children import kill_tree
from launcher.stack import WORKER_ARGS

BATCH = 20  # workers started at a time
SETTLE = 10.0  # seconds after the last one registered, before the window
RESERVE = 2 * 2**30  # bytes of available memory below which a fleet stops growing
MARK = "RQKIT_IDLE_BENCH"  # in every worker's environment (and its work-horses'), set to the run's token


@dataclasses.dataclass
class Watched:
    """Over a window: Redis CPU ms a second, commands a second (all, and by name), clients, memory MB."""

    cpu_ms: float
    commands: float
    by_name: dict[str, float]
    clients: int
    memory_mb: float


@dataclasses.dataclass
class Row:
    label: str
    workers: int
    watched: Watched
    host_mb: float


def systems(url: str) -> list[tuple[str, list[str]]]:
    py, serializer = sys.executable, get_settings().serializer
    toolkit = [py, "-m", "rq.cli", *WORKER_ARGS, "-S", serializer]
    in_process = [part.replace("ForkingWorker", "InProcessWorker") for part in toolkit]
    return [
        ("toolkit ForkingWorker (as up runs it)", toolkit),
        ("toolkit InProcessWorker (same options)", in_process),
        ("RQ Worker (rq worker, its defaults)", [py, "-m", "rq.cli", "worker", "-u", url]),
    ]


def marked(token: str) -> list[int]:
    """The living processes whose environment carries this run's mark."""
    needle = f"{MARK}={token}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return found


def pss_mb(pids: list[int]) -> float:
    """The processes' proportional set size, summed, in MB (shared pages split between their sharers)."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total / 1024


def available() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    return next(
        int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")
    )


class Fleet:
    """Workers of one command on `up`'s queues, each in a process group of its own, marked in their
    environment; all stopped when the `with` block ends."""

    def __init__(self, command: list[str], connection: Redis, log: Path) -> None:
        self.command, self.connection, self.log_path = command, connection, log
        self.token = secrets.token_hex(8)
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Fleet:
        self.log = self.log_path.open("ab")
        return self

    def __exit__(self, *_: object) -> None:
        try:
            stop(self.processes, self.token)
        finally:
            self.log.close()

    def grow(self, count: int) -> int:
        """Start workers in batches until there are `count` (fewer if memory runs short); how many there
        are once all are registered."""
        env = {**os.environ, MARK: self.token}
        queues = list(get_settings().queues)
        while len(self.processes) < count and available() > RESERVE:
            for _ in range(min(BATCH, count - len(self.processes))):
                name = f"idle-{len(self.processes)}-{self.token}"
                self.processes.append(
                    subprocess.Popen(
                        [*self.command, "-n", name, *queues],
                        stdout=self.log,
                        stderr=self.log,
                        env=env,
                        start_new_session=True,
                    )
                )
            wait_for(self.registered, 180, "workers registered", self.log_path)
        return len(self.processes)

    def registered(self) -> bool:
        return int(self.connection.scard("rq:workers")) >= len(self.processes)

    def host_mb(self) -> float:
        return pss_mb(marked(self.token))


def stop(processes: list[subprocess.Popen[bytes]], token: str) -> None:
    """SIGTERM every worker's group, wait 30 s, SIGKILL the rest with their trees, then anything left
    carrying the run's mark (a work-horse whose worker is gone)."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait(10)
    for _ in range(50):
        left = marked(token)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise SystemExit(f"processes left behind after SIGKILL: {left}")


def wait_for(done: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"gave up waiting for {what}; the workers' log ends: {last_line(log.read_text())}"
            )
        time.sleep(0.2)


def watch(connection: Redis, window: float) -> Watched:
    before = Snapshot.take(connection)
    time.sleep(window)
    after = Snapshot.take(connection)
    calls = {name: (after.calls[name] - before.calls[name]) / window for name in after.calls}
    calls.pop("info", None)  # this script's own
    info = connection.info()
    return Watched(
        (after.redis_cpu - before.redis_cpu) / window * 1000,
        sum(calls.values()),
        dict(sorted(calls.items(), key=lambda item: -item[1])[:4]),
        int(info["connected_clients"]),
        info["used_memory"] / 2**20,
    )


def measure(url: str, steps: list[int], window: float, work: Path) -> list[Row]:
    connection = Redis.from_url(url)
    rows = []
    for label, command in systems(url):
        with Fleet(command, connection, work / "workers.log") as fleet:
            for step in steps:
                print(f"{label}: growing to {step}", file=sys.stderr)
                count = fleet.grow(step)
                time.sleep(SETTLE)
                rows.append(Row(label, count, watch(connection, window), fleet.host_mb()))
                if count < step:
                    print(f"  stopped at {count}: under {RESERVE >> 30} GiB available", file=sys.stderr)
                    break
        connection.flushall()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="50,100,200", help="fleet sizes, in increasing order")
    parser.add_argument("--window", type=float, default=60.0, help="seconds watched at each size")
    options = parser.parse_args()
    steps = sorted(int(step) for step in options.workers.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every `finally` runs
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as (server, pinned):
        connection = Redis.from_url(server.url)
        base = watch(connection, 10)
        rows = measure(server.url, steps, options.window, Path(tmp))
        print(f"\n{machine(connection, {})}; {pinned}")
    print_table(base, rows, options.window)


def print_table(base: Watched, rows: list[Row], window: float) -> None:
    print(f"idle workers on up's queues; each size watched {window:g} s after {SETTLE:g} s to settle")
    print(
        f"Redis alone: {base.cpu_ms:.2f} ms CPU a second, {base.clients} clients, {base.memory_mb:.1f} MB\n"
    )
    heads = f"{'N':>4} {'Redis CPU':>12} {'core':>6} {'cmds/s':>7} {'clients':>7} {'MB':>6}"
    per = f"{'us/s':>6} {'cmds/s':>6} {'KB':>5} {'host MB':>7}"
    print(f"{'':40} {'':45} {'per worker (over Redis alone)':>27}")
    print(f"{'idle workers':40} {heads}  {per}  busiest commands/s")
    for row in rows:
        got, n = row.watched, row.workers
        cells = (
            f"{n:4d} {got.cpu_ms:7.2f} ms/s {got.cpu_ms / 10:5.2f}% {got.commands:7.1f} {got.clients:7d}"
            f" {got.memory_mb:6.1f}"
        )
        each = (
            f"{(got.cpu_ms - base.cpu_ms) / n * 1000:6.1f} {got.commands / n:6.3f}"
            f" {(got.memory_mb - base.memory_mb) / n * 1024:5.1f} {row.host_mb / n:7.1f}"
        )
        top = ", ".join(f"{name} {rate:.1f}" for name, rate in got.by_name.items())
        print(f"{row.label:40} {cells}  {each}  {top}")


if __name__ == "__main__":
    main()
