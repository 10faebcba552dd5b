"""What the job history costs the toolkit's workers: no-op jobs/s of two checkouts' workers, side by side.

peers.py's no-op drain (N jobs enqueued first, one worker process works them off, jobs/s from the first
job to the last), run for the toolkit's `InProcessWorker` and `ForkingWorker` from two trees of the
project, `--before` (one without the history: `git worktree add /tmp/hist-before 516cc99^`) and
`--after` (this checkout by default), with RQ's `SimpleWorker` from each tree as a control that the
history doesn't touch. One private redis-server, pinned as peers.py pins it; each worker runs with its
tree as its working directory and first on its path. Rounds take the workers in turn, before and after
next to each other, which goes first alternating, so both sides see the same load. Per drain, from the
worker's start to its stop, per job: Redis's commands (INFO commandstats) and its microseconds in
scripts (their `usec`); per 1,000 jobs: Redis's CPU ms (INFO cpu, user + sys) and the worker's (its
whole life, start-up included, work-horses and all: this process's children's rusage). `counted` is the
runs the history's minute buckets hold after the drain (the warm-up job too): it shows which tree has it.

Usage: .venv/bin/python -m bench.history_cost --before /tmp/hist-before [--after PATH] [--jobs 2000]
       [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from statistics import median

from redis import Redis

from bench.peers import Bench, System, drain, machine, private_redis, rq_systems
from config.settings import PROJECT_ROOT

WORKERS = ("rq-simple", "toolkit-inproc", "toolkit")  # peers.py's keys: the control first
SIDES = ("before", "after")
HISTORY_MINUTES = "rqkit:history:60:*"


@dataclasses.dataclass
class Snapshot:
    """Redis's command counts, its scripts' microseconds, its CPU seconds, and the CPU seconds of this
    process's children that have ended (a worker, once stopped, with its work-horses and scheduler)."""

    calls: Counter[str]
    script_us: float
    redis_cpu: float
    children_cpu: float

    @classmethod
    def take(cls, connection: Redis) -> Snapshot:
        stats = {name.removeprefix("cmdstat_"): got for name, got in connection.info("commandstats").items()}
        cpu = connection.info("cpu")
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            Counter({name: int(got["calls"]) for name, got in stats.items()}),
            sum(float(stats.get(name, {}).get("usec", 0)) for name in ("eval", "evalsha")),
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            children.ru_utime + children.ru_stime,
        )


@dataclasses.dataclass
class Round:
    """One drain: jobs/s; per job, Redis's commands by name and its microseconds in scripts; per 1,000 jobs,
    Redis's CPU ms and the worker's (its whole life: start-up, the same on both sides, included); the runs
    the history counted; the load average at the end."""

    rate: float
    calls: dict[str, float]
    script_us: float
    redis_ms: float
    worker_ms: float
    counted: int
    load: float


class MeteredBench(Bench):
    """peers.py's Bench, noting Redis's counters as each worker starts (its queue filled)."""

    started: Snapshot

    def spawn(self, system: System, command: list[str], log: str) -> subprocess.Popen[bytes]:
        self.started = Snapshot.take(self.connection)
        return super().spawn(system, command, log)


def metered_drain(bench: MeteredBench, system: System, n: int) -> Round:
    """peers.drain, with what Redis and the worker did from the worker's start to its stop, per job."""
    _, rate, _, _ = drain(bench, system, n)
    ended, started = Snapshot.take(bench.connection), bench.started
    counted = sum(
        int(runs)
        for key in bench.connection.scan_iter(HISTORY_MINUTES)
        for runs in bench.connection.hvals(key)
    )
    return Round(
        rate,
        {name: count / n for name, count in (ended.calls - started.calls).items()},
        (ended.script_us - started.script_us) / n,
        (ended.redis_cpu - started.redis_cpu) * 1e6 / n,
        (ended.children_cpu - started.children_cpu) * 1e6 / n,
        counted,
        os.getloadavg()[0],
    )


def tree_systems(work: Path, trees: dict[str, Path]) -> list[tuple[System, System]]:
    """The workers of WORKERS, each as (before, after): peers.py's command lines, run from each tree."""
    found = {system.key: system for system in rq_systems(work)}

    def from_tree(key: str, side: str) -> System:
        return dataclasses.replace(found[key], key=f"{key}-{side}", tree=trees[side])

    return [(from_tree(key, "before"), from_tree(key, "after")) for key in WORKERS]


def measure(
    bench: MeteredBench, pairs: list[tuple[System, System]], n: int, rounds: int
) -> dict[str, list[Round]]:
    """Each worker's rounds; in a round, every pair drains next to each other, alternating which first."""
    runs: dict[str, list[Round]] = {system.key: [] for pair in pairs for system in pair}
    for round_ in range(rounds):
        for pair in pairs:
            for system in pair if round_ % 2 == 0 else pair[::-1]:
                print(f"round {round_ + 1} of {rounds}: {system.label}, {system.key}", flush=True)
                got = metered_drain(bench, system, n // 4 if system.fork else n)
                print(
                    f"  {got.rate:,.0f} jobs/s, {sum(got.calls.values()):.2f} commands/job, scripts"
                    f" {got.script_us:.1f} us/job, CPU ms/1k jobs Redis {got.redis_ms:.1f} worker"
                    f" {got.worker_ms:.1f}, counted {got.counted}, load {got.load:.2f}",
                    flush=True,
                )
                runs[system.key].append(got)
    return runs


def calls_per_job(rounds: list[Round]) -> dict[str, float]:
    """Each command's calls per job, the median over the rounds."""
    names = {name for got in rounds for name in got.calls}
    return {name: median([got.calls.get(name, 0.0) for got in rounds]) for name in names}


def print_table(pairs: list[tuple[System, System]], runs: dict[str, list[Round]], jobs: int) -> None:
    print(
        f"\n{'no-op jobs, one worker process':<38}{'tree':<7}{'jobs':>5}{'jobs/s':>7}{'range':>15}"
        f"{'cmds/job':>9}{'script us':>10}{'Redis ms/1k':>12}{'worker ms/1k':>13}{'counted':>8}"
    )
    for pair in pairs:
        for system, side in zip(pair, SIDES, strict=True):
            got = runs[system.key]
            rates = sorted(round_.rate for round_ in got)
            n = jobs // 4 if system.fork else jobs
            print(
                f"{system.label:<38}{side:<7}{n:>5}{median(rates):>7,.0f}"
                f"{f'{rates[0]:,.0f} to {rates[-1]:,.0f}':>15}{sum(calls_per_job(got).values()):>9.2f}"
                f"{median([r.script_us for r in got]):>10.1f}{median([r.redis_ms for r in got]):>12.1f}"
                f"{median([r.worker_ms for r in got]):>13.1f}{median([r.counted for r in got]):>8,.0f}"
            )
        print_change(*(runs[system.key] for system in pair))


def print_change(before: list[Round], after: list[Round]) -> None:
    """After against before: the medians' ratio, the rounds' own ratios, the commands per job that moved."""
    ratio = median([got.rate for got in after]) / median([got.rate for got in before])
    paired = sorted(a.rate / b.rate for b, a in zip(before, after, strict=True))
    print(
        f"  after/before {ratio:.3f}; round by round {median(paired):.3f}"
        f" ({paired[0]:.3f} to {paired[-1]:.3f})"
    )
    was, now = calls_per_job(before), calls_per_job(after)
    moved = {name: now.get(name, 0.0) - was.get(name, 0.0) for name in {*was, *now}}
    shown = [f"{name} {delta:+.2f}" for name, delta in sorted(moved.items()) if abs(delta) >= 0.05]
    print(f"  commands per job that moved: {', '.join(shown) or 'none'}")


def described(tree: Path) -> str:
    """The tree's commit, and whether its workers or config differ from it."""
    git = ["git", "-C", str(tree)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "workers", "config"], capture_output=True, text=True
    )
    return f"{tree} at {commit.strip()}" + (" (workers/ or config/ edited)" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="a checkout without the history")
    parser.add_argument("--after", type=Path, default=PROJECT_ROOT, help="a checkout with it (this one)")
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs per drain (a quarter for forking workers)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is shown")
    options = parser.parse_args()
    trees = {"before": options.before.resolve(), "after": options.after.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with private_redis(work) as (server, pinned):
            bench = MeteredBench(work, server.url)
            pairs = tree_systems(work, trees)
            runs = measure(bench, pairs, options.jobs, options.rounds)
            print(f"\n{machine(bench.connection, {}).rstrip(', ')}; {pinned}")
    for side, tree in trees.items():
        print(f"{side}: {described(tree)}")
    loads = [got.load for rounds in runs.values() for got in rounds]
    print(
        f"{options.rounds} rounds; 1-min load average after each drain: {min(loads):.2f} to {max(loads):.2f}"
    )
    print_table(pairs, runs, options.jobs)


if __name__ == "__main__":
    main()
