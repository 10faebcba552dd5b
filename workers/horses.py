"""What passes between a forking worker, its fork server and its work-horses: a horse as the worker holds
it, what the server needs to fork one, what a horse reports back, and how messages are framed on the
pipes between them (workers/forking.py)."""

from __future__ import annotations

import os
import select
from collections import Counter
from contextlib import suppress
from datetime import datetime
from typing import Any, NamedTuple

from workers.claims import Claimed
from workers.fork_server import Forked, Order, close_all, ended, may_raise_priority
from workers.kept_connections import Returned

STARTED = b"S"  # what a work-horse says as it starts its job, before it reports the outcome
HEADER = 8  # a report's length, before it: a horse that runs several jobs doesn't end each with its exit


class Horse(NamedTuple):
    """A forked work-horse waiting for its job: its pid, and the pipes to hand the job over, to read the
    outcome back, and to learn its exit status."""

    pid: int
    pidfd: int  # to signal it by: once its fork server has reaped it, its pid may be another process's
    jobs: int  # -1: closed, it exits after its job
    reports: int
    exit: int  # readable once it has exited (workers/fork_server.py)
    kept: int  # the id of the set of kept connections lent to it (workers/kept_connections.py)
    runs: int = 0  # jobs it ran so far

    @classmethod
    def forked(cls, forked: Forked, jobs: int, reports: int) -> Horse:
        """The horse the fork server forked, with this process's ends of its pipes."""
        return cls(forked.pid, forked.pidfd, jobs, reports, forked.exit, forked.note)

    def raise_priority(self) -> None:
        """A spare that waits at the lowest priority (workers/fork_server.py) runs its job at this
        process's: raised before the job is sent (if still waiting for its CPU, it gets it at once); not
        once its server reaped it (its pid may be another process's)."""
        if may_raise_priority() and not ended(self.exit):
            with suppress(OSError):  # (it died: the job's send finds out)
                os.setpriority(os.PRIO_PROCESS, self.pid, os.getpriority(os.PRIO_PROCESS, 0))

    def read_report(self, report: bytearray) -> bool:
        """Read its report into `report` until it is whole (True), or until it exits (False: what it wrote
        taken, no more; a process its job started may hold the pipe open)."""
        poller = select.poll()
        poller.register(self.reports, select.POLLIN)
        poller.register(self.exit, select.POLLIN)
        while self.reports in {fd for fd, _ in poller.poll()}:
            if not (chunk := os.read(self.reports, 65536)):
                return False
            report += chunk
            if reported(report):
                return True
        os.set_blocking(self.reports, False)
        with suppress(BlockingIOError):
            while chunk := os.read(self.reports, 65536):
                report += chunk
        return False

    def close(self) -> None:
        close_all([fd for fd in (self.pidfd, self.jobs, self.reports, self.exit) if fd != -1])


class Pending(NamedTuple):
    """A spare asked of the fork server, its reply not read yet: the order, and this process's ends of
    the horse's pipes."""

    order: Order
    jobs: int
    reports: int


class HorseRequest(NamedTuple):
    """What the fork server needs for a horse beyond its copy of the worker as it started."""

    spare: bool  # forked ahead of its job: it rehearses the last job's start, and says when its job starts
    rehearsal: Claimed | None
    returned: Returned  # the kept connections of horses that ended, to lend again or close
    drop_all: bool  # close every kept connection first (Redis went away, or failed over)
    modules: tuple[str, ...]  # job modules to have imported, for every later horse


class Report(NamedTuple):
    """What a horse sends back once it has run the job handed to it (and those it claimed after it)."""

    ran: int  # jobs
    spent: bool  # to be replaced: it grew past horse_growth_mb, or a job timed out in it
    success: tuple[datetime | None, list[Any], str] | None  # the last job's plain one: end, result, function
    claimed: Claimed | None  # that job, if the horse claimed it (None: the one handed to it)
    counts: Counter[tuple[int, str]]  # runs it recorded and did not send (config/history.py's Tally)
    handed: dict[bool, float] | None = None  # its last: kept connections it gave back: health checks due


def reported(report: bytearray) -> bool:
    """Whether a horse's report is whole: its length, then that many bytes."""
    return len(report) >= HEADER and len(report) - HEADER == int.from_bytes(report[:HEADER], "big")


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def read_exactly(fd: int, size: int) -> bytes:
    """`size` bytes from a pipe, or fewer if it ends first."""
    chunks, left = [], size
    while left and (chunk := os.read(fd, min(left, 65536))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def small(claimed: Claimed | None) -> bool:
    """Whether a claimed job's hash is small enough to send the fork server for a rehearsal (one message
    on its socket holds some 200 kB: an email of 1 MB would not go)."""
    return claimed is not None and sum(map(len, claimed.fields)) < 65536
