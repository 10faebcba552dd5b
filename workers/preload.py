"""What a worker loads before it forks, so that every work-horse starts with it in memory.

A work-horse is a fork of its worker: modules the worker imported once are there in each horse for
free, while a module first imported in a horse is imported again in the next one. So the worker
imports the modules of every job it may run (and Pillow, SQLAlchemy, httpx, Jinja2 with them), and
each module may build what it would otherwise build per job in a `warm_up(settings)` function.
`rq worker -c config.rq` runs this; a bare `rq worker` works without it, only slower per job.
"""

from __future__ import annotations

import importlib

from config.settings import Settings

MODULES = (
    "jobs.api",
    "jobs.demo",
    "jobs.email",
    "jobs.images",
    "jobs.maintenance",
    "jobs.scheduled",
    "jobs.stats",
    "jobs.tags",
    "scheduler.periodic",  # the schedule's trigger, which runs on the workers
)


def preload(settings: Settings) -> None:
    """Import every module in MODULES, and warm up those that can."""
    for name in MODULES:
        warm_up = getattr(importlib.import_module(name), "warm_up", None)
        if warm_up is not None:
            warm_up(settings)
