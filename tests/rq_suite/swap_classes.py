"""pytest plugin for RQ's own suite (`-p swap_classes`, loaded by suite.py before any of RQ's test modules).
With RQKIT_RQ_SUITE_CLASSES=toolkit, the toolkit's ForkingWorker and InProcessWorker stand in for RQ's
Worker and SimpleWorker under every name RQ's tests take them by; with =rq (the reference), RQ's stay."""

from __future__ import annotations

import os
from pathlib import Path

import rq
import rq.worker
import rq.worker_pool

REPO = Path(__file__).resolve().parents[2]
# Where RQ's tests import Worker and SimpleWorker from (rq.worker_pool: WorkerPool, which they test).
MODULES = (rq, rq.worker, rq.worker_pool)
# Functions with worker_class=Worker as a default, bound when RQ loaded: WorkerPool() in RQ's tests.
BOUND_DEFAULTS = (rq.worker_pool.WorkerPool.__init__, rq.worker_pool.run_worker)


def put_in_place(old: type, new: type) -> None:
    """`new` wherever MODULES and BOUND_DEFAULTS hold `old`."""
    for module in MODULES:
        for name in [name for name, value in vars(module).items() if value is old]:
            setattr(module, name, new)
    for function in BOUND_DEFAULTS:
        function.__defaults__ = tuple(new if value is old else value for value in function.__defaults__ or ())


def named(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


if os.environ.get("RQKIT_RQ_SUITE_CLASSES") == "toolkit":
    import workers

    if not Path(workers.__file__ or "").resolve().is_relative_to(REPO):
        raise ImportError(f"workers comes from {workers.__file__}, not {REPO}: pip install -e {REPO}")
    put_in_place(rq.Worker, workers.ForkingWorker)
    put_in_place(rq.SimpleWorker, workers.InProcessWorker)


def pytest_report_header() -> str:
    """Which classes this run tests, and which RQ."""
    classes = f"rq.Worker = {named(rq.worker.Worker)}, rq.SimpleWorker = {named(rq.worker.SimpleWorker)}"
    return f"rq-suite: {classes}; RQ {rq.__version__} from {os.path.dirname(rq.__file__ or '')}"
