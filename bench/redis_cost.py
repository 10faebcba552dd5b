"""What a no-op job costs Redis itself, for every system of peers.py: commands and Redis CPU per job.

peers.py's no-op drain (N jobs enqueued first by the system's own client, then one worker process works
them off) for the bare redis-py loop, RQ's two workers, the toolkit's two, Celery, Dramatiq, Huey and arq
(their venvs as peers.py makes them), in rounds that take the systems in turn; the median round of each.
Redis's counters (history_cost.py's Snapshot: INFO commandstats, INFO cpu user + sys) are read before the
enqueue, as the worker starts and once it has stopped, so a job's cost splits into its enqueue and its
work. `core jobs/s` is what one Redis core could carry at the whole cost (1e6 / Redis us per job);
`work vs RQ` is the work's Redis CPU against RQ's SimpleWorker's and RQ's Worker's. Redis's CPU is all it
did meanwhile: its own idle ticks and this script's polling of the done counter (one GET per 50 ms) are
in it, a larger share for a slow worker; the idle rate, measured first, is printed.

Usage: .venv/bin/python -m bench.redis_cost [--jobs 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from statistics import median

from bench.history_cost import MeteredBench, Snapshot, metered_drain
from bench.peers import System, attempt, machine, peer_systems, private_redis, rq_systems

IDLE_SECONDS = 5.0
RQ_KEYS = ("rq-simple", "rq-fork")  # the work's Redis CPU is shown against these


@dataclasses.dataclass
class Cost:
    """One drain: jobs/s; Redis commands per job and Redis CPU ms per 1,000 jobs, enqueue and work."""

    rate: float
    enqueue_calls: float
    work_calls: float
    enqueue_ms: float
    work_ms: float


class CostBench(MeteredBench):
    """history_cost.py's MeteredBench, also noting Redis's counters as the driver starts enqueuing."""

    enqueuing: Snapshot

    def drive(self, system: System, mode: str, count: int, gap: float = 0.0) -> object:
        self.enqueuing = Snapshot.take(self.connection)
        return super().drive(system, mode, count, gap)


def metered(bench: CostBench, system: System, n: int) -> Cost:
    """One drain of n jobs, with what Redis did for their enqueue and for their work."""
    worked = metered_drain(bench, system, n)
    enqueuing, started = bench.enqueuing, bench.started
    return Cost(
        worked.rate,
        sum((started.calls - enqueuing.calls).values()) / n,
        sum(worked.calls.values()),
        (started.redis_cpu - enqueuing.redis_cpu) * 1e6 / n,
        worked.redis_ms,
    )


def idle_ms(bench: CostBench) -> float:
    """Redis's CPU ms per second with nothing to do (no worker, no client but this one)."""
    before = Snapshot.take(bench.connection)
    time.sleep(IDLE_SECONDS)
    return (Snapshot.take(bench.connection).redis_cpu - before.redis_cpu) * 1e3 / IDLE_SECONDS


def measure(bench: CostBench, systems: list[System], n: int, rounds: int) -> dict[str, list[Cost] | str]:
    """Each system's drains, the systems in turn each round; 'n/a (reason)' for one that can't run."""
    runs: dict[str, list[Cost] | str] = {
        system.key: f"n/a ({system.broken})" if system.broken else [] for system in systems
    }
    for round_ in range(1, rounds + 1):
        for system in systems:
            done = runs[system.key]
            if isinstance(done, str):
                continue
            print(f"round {round_} of {rounds}: {system.label}", flush=True)
            got = attempt(lambda: metered(bench, system, n // 4 if system.fork else n))  # noqa: B023
            runs[system.key] = done + [got] if isinstance(got, Cost) else str(got)
            if isinstance(got, Cost):
                print(
                    f"  {got.rate:,.0f} jobs/s; commands/job {got.enqueue_calls:.2f} + {got.work_calls:.2f};"
                    f" Redis CPU ms/1k {got.enqueue_ms:.1f} + {got.work_ms:.1f}",
                    flush=True,
                )
    return runs


def print_table(systems: list[System], runs: dict[str, list[Cost] | str], jobs: int) -> None:
    work_of = {
        key: median([cost.work_ms for cost in got])
        for key, got in runs.items()
        if key in RQ_KEYS and not isinstance(got, str)
    }
    print(
        f"\n{'no-op jobs, one worker process':<46}{'jobs':>5}{'jobs/s':>7}{'cmds/job':>15}"
        f"{'Redis ms/1k':>17}{'total':>7}{'core jobs/s':>12}{'work vs RQ':>16}"
    )
    print(f"{'':<58}{'enqueue + work':>15}{'enqueue + work':>17}{'':>19}{'simple  fork':>16}")
    for system in systems:
        got = runs[system.key]
        if isinstance(got, str):
            print(f"{system.label:<46}  {got}")
            continue
        total = median([cost.enqueue_ms + cost.work_ms for cost in got])
        work = median([cost.work_ms for cost in got])
        versus = "  ".join(f"{work / work_of[key]:>6.2f}" if key in work_of else "     ?" for key in RQ_KEYS)
        print(
            f"{system.label:<46}{jobs // 4 if system.fork else jobs:>5}{median([c.rate for c in got]):>7,.0f}"
            f"{median([c.enqueue_calls for c in got]):>7.2f} + {median([c.work_calls for c in got]):>5.2f}"
            f"{median([c.enqueue_ms for c in got]):>8.1f} + {work:>6.1f}{total:>7.1f}{1e6 / total:>12,.0f}"
            f"{versus:>16}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs per drain (a quarter for forking workers)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peers, peer_versions = peer_systems(work)
        with private_redis(work) as (server, pinned):
            bench = CostBench(work, server.url)
            idle = idle_ms(bench)
            systems = rq_systems(work) + peers
            runs = measure(bench, systems, options.jobs, options.rounds)
            print(f"\n{machine(bench.connection, peer_versions)}; {pinned}")
    print(
        f"{options.rounds} rounds; Redis idle: {idle:.2f} ms CPU/s;"
        f" 1-min load average now {os.getloadavg()[0]:.2f}"
    )
    print_table(systems, runs, options.jobs)


if __name__ == "__main__":
    main()
