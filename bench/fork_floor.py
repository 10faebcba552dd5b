"""The floor under a fork-per-job worker (issue 23): what a fresh process per job costs before any worker
logic, measured the way peers.py runs its no-op drain (redis-server alone on the first CPU, everything
else on the second).

Rows, each the median of N runs:
- fork, exit and reap of a process: a bare interpreter, and one that has imported what a toolkit worker
  preloads (workers/preload.py), with its anonymous memory (what the fork's page tables copy);
- the peers no-op task's own Redis client in a fresh fork of that worker image: making it, and its first
  INCR (connect, handshake, command), with the page faults each takes; then its second INCR, and the
  same INCR in a warm process.
A worker that forks per job pays the fork row and, for this task, the client rows on every job, whatever
it does itself: the sum is the floor to set against RQ's `Worker` per job in peers.py.

Usage: .venv/bin/python -m bench.fork_floor [--runs 300]
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redis.utils

import workers.forking  # noqa: F401 (the worker's own modules, as `rq worker -w` imports them)
from bench.peers import machine, pin
from config.settings import get_settings
from launcher.redis_server import RedisServer, free_port
from workers.preload import preload


def anonymous_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024


def in_child(measure: Callable[[], list[float]]) -> list[float]:
    """Fork; the child measures and sends its figures back; the parent reaps it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, pickle.dumps(measure()))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        figures = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    return figures


def stamp() -> tuple[float, int]:
    return time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def task_client(url: str) -> list[float]:
    """In a fresh fork: the task's client made, its first INCR, its second (ms, faults, ms, faults, ms)."""
    start = stamp()
    client = redis.Redis.from_url(url, socket_timeout=None)
    made = stamp()
    client.incr("floor")
    first = stamp()
    client.incr("floor")
    second = stamp()
    return [
        (made[0] - start[0]) * 1e3,
        made[1] - start[1],
        (first[0] - made[0]) * 1e3,
        first[1] - made[1],
        (second[0] - first[0]) * 1e3,
    ]


def fork_exit_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bare_fork_exit_ms(runs: int) -> float:
    """fork_exit_ms in a bare interpreter of this Python (a child that imports nothing else)."""
    code = f"import os, statistics, time\n{inspect.getsource(fork_exit_ms)}\nprint(fork_exit_ms({runs}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(free_port(), Path(tmp)).start()
        try:
            pinned = pin(server)
            bare = bare_fork_exit_ms(runs)
            preload(get_settings())
            # as ForkingWorker does: redis-py's version read once, not in each horse's first connection
            redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)
            redis.utils.get_lib_version()
            gc.collect()
            warm = redis.Redis.from_url(server.url, socket_timeout=None)
            warm.ping()
            image = fork_exit_ms(runs)
            clients = [in_child(functools.partial(task_client, server.url)) for _ in range(runs)]
            warm_incr = []
            for _ in range(runs):
                start = time.perf_counter()
                warm.incr("floor")
                warm_incr.append((time.perf_counter() - start) * 1e3)
            print(f"\n{machine(warm, {})}; {pinned}; {runs} runs, medians\n")
        finally:
            server.stop()
    made, made_faults, first, first_faults, second = (
        statistics.median(row[i] for row in clients) for i in range(5)
    )
    print(f"{'':58}{'ms':>8}{'faults':>8}")
    print(f"{'fork + exit + reap, bare interpreter':58}{bare:8.2f}")
    print(f"{f'fork + exit + reap, worker image ({anonymous_mb():.0f} MB anonymous)':58}{image:8.2f}")
    print(f"{'task client made, fresh fork':58}{made:8.2f}{made_faults:8.0f}")
    print(f"{'its first INCR (connect, handshake, INCR), fresh fork':58}{first:8.2f}{first_faults:8.0f}")
    print(f"{'its second INCR':58}{second:8.2f}")
    print(f"{'INCR in a warm process':58}{statistics.median(warm_incr):8.2f}")
    print(f"\nfloor per job (fork row + client rows): {image + made + first:.2f} ms")


if __name__ == "__main__":
    main()
