"""Processes that die with their parent: a worker's forks, and every process the launcher starts."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
# Looked up once, here: a lookup in each child (a ctypes library object, its function class) took a
# work-horse 0.3 ms of CPU and 95 page faults, a tenth of what a fork costs.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child: get `sig` when the parent dies, even by kill -9 (Linux only)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, sig)


def forks_die_with_this_process() -> None:
    """Every process forked from now on (a worker's scheduler, its work-horses) is killed when this one
    dies. Without it, kill -9 of a worker leaves its scheduler running with the worker's blocked BLPOP
    connection still open: Redis hands the next job of those queues to that socket, which nobody reads,
    and the job is lost."""
    os.register_at_fork(before=note_parent, after_in_child=die_with_forking_parent)


_forking = 0  # in a process about to fork: its pid


def note_parent() -> None:
    global _forking
    _forking = os.getpid()


def die_with_forking_parent() -> None:
    """In a fork: SIGKILL when its parent dies, and at once if it died already (before the request: a
    fork server killed as it forked a horse, which would have lived on, and run a job the worker could
    no longer see end)."""
    die_with_parent(signal.SIGKILL)
    if os.getppid() != _forking:
        os.kill(os.getpid(), signal.SIGKILL)
