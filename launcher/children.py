"""The launcher's children and everything below them: started to die with the launcher, restarted with
back-off when they die, found from /proc, killed as a tree."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from config.settings import PROJECT_ROOT

PR_SET_PDEATHSIG = 1
FIRST_DELAY, LONGEST_DELAY = 1.0, 30.0  # s before a restart: 1, 2, 4 ... 30
STEADY_AFTER = 60.0  # s: a child that ran this long before it died starts over at FIRST_DELAY


@dataclass
class Restarts:
    """When something that died starts again: FIRST_DELAY after a death, twice as long after each next
    death in a row, at most LONGEST_DELAY; a run of STEADY_AFTER s or more ends the row."""

    started_at: float = 0.0
    deaths: int = 0  # in a row
    due: float | None = None  # when to start again; None while it runs

    def started(self, now: float) -> None:
        self.started_at, self.due = now, None

    def died(self, now: float) -> float:
        """Count a death seen at `now`; the delay before the next start."""
        self.deaths = 1 if now - self.started_at >= STEADY_AFTER else self.deaths + 1
        delay = min(FIRST_DELAY * 2 ** (self.deaths - 1), LONGEST_DELAY)
        self.due = now + delay
        return delay

    def is_due(self, now: float) -> bool:
        return self.due is not None and now >= self.due


@dataclass
class Child:
    """One supervised process; `command` makes its command line for each start (a worker's name
    changes), and its output is copied line by line with a name prefix."""

    name: str
    command: Callable[[int], list[str]]  # from the number of this start: 1, 2, ...
    worker: bool = False  # an RQ worker: its started jobs are released when it dies
    cpu: int | None = None  # the one CPU it (and every process it forks) runs on; None: any
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    restarts: Restarts = field(default_factory=Restarts)

    def start(self, env: dict[str, str]) -> None:
        self.starts += 1
        self.process = spawn(self.command(self.starts), env)
        if self.cpu is not None:  # before it forks (its Python is still starting)
            with suppress(OSError):  # (the CPU taken from this process's set since)
                os.sched_setaffinity(self.process.pid, {self.cpu})
        self.restarts.started(time.monotonic())

    def exit_code(self) -> int | None:
        """Its exit code once it has exited and the death is not counted yet, else None."""
        if self.process is None or self.restarts.due is not None:
            return None
        return self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a child from the repo root in a session of its own (Ctrl-C reaches the launcher only, which
    decides what each child gets), its output piped, killed if the launcher dies."""
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=parent_death_signal(),
    )


@cache
def parent_death_signal() -> Callable[[], None]:
    """A function that makes the calling child get SIGTERM when the launcher's main thread ends, even by
    kill -9. libc's prctl is looked up here, in the launcher: a restart forks while other threads run,
    and a lookup in the child could wait for the dynamic loader's lock held by one of them."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (children, their work-horses...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it (a worker's work-horse is in a group of its own)."""
    for victim in [*descendants(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
