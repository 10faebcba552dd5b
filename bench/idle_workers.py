"""What idle workers cost Redis (issue 23): N workers waiting on `up`'s queues, with nothing to do.

For the toolkit's ForkingWorker (as `up` runs it), its InProcessWorker with the same options and RQ's
stock Worker: N worker processes on one private redis-server (alone on the first CPU), started in
batches, all registered, left to settle, then watched for a fixed window: Redis's CPU (INFO cpu, user +
sys) per second, its commands per second by name (INFO commandstats), its clients and memory. The rest
is what the heartbeats and the blocking waits cost while no job comes. Every process is stopped at the
end (SIGTERM to its group, then SIGKILL), whatever happened.

Usage: .venv/bin/python -m bench.idle_workers [--workers 200] [--window 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis

from bench.history_cost import Snapshot
from bench.peers import machine, private_redis
from config import get_settings
from launcher.children import kill_tree
from launcher.stack import WORKER_ARGS

BATCH = 20  # workers started at a time
SETTLE = 10.0  # seconds after the last one registered, before the window


def systems(url: str) -> list[tuple[str, list[str]]]:
    py, serializer = sys.executable, get_settings().serializer
    toolkit = [py, "-m", "rq.cli", *WORKER_ARGS, "-S", serializer]
    in_process = [part.replace("ForkingWorker", "InProcessWorker") for part in toolkit]
    return [
        ("toolkit ForkingWorker (as up runs it)", toolkit),
        ("toolkit InProcessWorker", in_process),
        ("RQ Worker (rq worker, its defaults)", [py, "-m", "rq.cli", "worker", "-u", url]),
    ]


@contextmanager
def fleet(command: list[str], count: int, connection: Redis, logs: Path) -> Iterator[None]:
    """`count` workers on `up`'s queues, each in a process group of its own, all registered; stopped
    at the end."""
    queues = list(get_settings().queues)
    processes: list[subprocess.Popen[bytes]] = []
    log = (logs / "workers.log").open("ab")
    try:
        for index in range(count):
            name = f"idle-{index}-{time.monotonic_ns()}"
            processes.append(
                subprocess.Popen(
                    [*command, "-n", name, *queues], stdout=log, stderr=log, start_new_session=True
                )
            )
            if len(processes) % BATCH == 0 or len(processes) == count:
                wait_for(lambda: connection.scard("rq:workers") >= len(processes), 120, "workers registered")
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait()
        log.close()
        connection.delete(*connection.keys("rq:worker*") or ["-"])  # the killed ones' entries too


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.2)


def watch(connection: Redis, window: float) -> tuple[float, float, dict[str, float], int, float]:
    """Over `window` s: Redis CPU ms/s, commands/s, commands/s by name (busiest 4), clients, memory MB."""
    before = Snapshot.take(connection)
    time.sleep(window)
    after = Snapshot.take(connection)
    calls = {name: (after.calls[name] - before.calls[name]) / window for name in after.calls}
    calls.pop("info", None)  # this script's own
    busiest = dict(sorted(calls.items(), key=lambda item: -item[1])[:4])
    info = connection.info()
    cpu_ms = (after.redis_cpu - before.redis_cpu) / window * 1000
    return cpu_ms, sum(calls.values()), busiest, int(info["connected_clients"]), info["used_memory"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200, help="idle workers per system")
    parser.add_argument("--window", type=float, default=60.0, help="seconds watched")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as (server, pinned):
        connection = Redis.from_url(server.url)
        base = watch(connection, min(options.window, 10))
        for label, command in systems(server.url):
            print(f"starting {options.workers} x {label}", file=sys.stderr)
            with fleet(command, options.workers, connection, Path(tmp)):
                time.sleep(SETTLE)
                rows.append((label, watch(connection, options.window)))
        print(f"\n{machine(connection, {})}; {pinned}")
    print(f"{options.workers} idle workers each, on up's queues; watched {options.window:g} s")
    print(f"Redis alone: {base[0]:.2f} ms CPU a second, {base[3]} clients, {base[4]:.1f} MB\n")
    heads = f"{'Redis CPU':>12} {'of a core':>9} {'cmds/s':>8} {'clients':>8} {'MB':>6}"
    print(f"{'idle workers':40} {heads}  busiest commands/s")
    for label, (cpu_ms, total, busiest, clients, memory) in rows:
        top = ", ".join(f"{name} {rate:.1f}" for name, rate in busiest.items())
        cells = f"{cpu_ms:9.2f} ms/s {cpu_ms / 10:8.2f}% {total:8.1f} {clients:8d} {memory:6.1f}"
        print(f"{label:40} {cells}  {top}")


if __name__ == "__main__":
    main()
