"""Maintenance jobs: expire sessions and sweep caches in short batches, safe on big data and run nightly.

The entry points live here (RQ stores `jobs.maintenance.expire_sessions` and `.sweep_cache`); the
settings rules in `rules.py`, and the work by kind in `sql_sessions.py`, `redis_keys.py`, `disk.py` and
`bucket.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rq import get_current_job

from config import Settings, get_settings, redis_client
from config.storage import Location, S3Location, parse_s3
from jobs.errors import JobInputError
from jobs.locks import exclusive
from jobs.maintenance.bucket import bucket_tree, sweep_bucket
from jobs.maintenance.disk import sweep_disk
from jobs.maintenance.redis_keys import expire_by_field, expire_by_index, sweep_redis
from jobs.maintenance.report import Report
from jobs.maintenance.rules import entry
from jobs.maintenance.sql_sessions import expire_sql_sessions
from jobs.objects import ObjectTree
from jobs.runtime import retry_only_transient

__all__ = [
    "JOB_TIMEOUT",
    "Report",
    "check_expire",
    "check_sweep",
    "expire_sessions",
    "sweep_bucket",
    "sweep_cache",
    "sweep_disk",
]

logger = logging.getLogger(__name__)

JOB_TIMEOUT = 3 * 3600
LOCK_SECONDS = JOB_TIMEOUT + 600  # outlasts the job, so two runs never overlap


def check_expire(store: object = "default", dry_run: object = False) -> None:
    entry("session store", store, get_settings().session_stores)
    check_dry_run(dry_run)


def check_sweep(target: object = None, dry_run: object = False) -> None:
    settings = get_settings()
    for name in sorted(settings.cache_targets) if target is None else [target]:
        cache_place(str(name), entry("cache target", name, settings.cache_targets), settings)
    check_dry_run(dry_run)


def check_dry_run(dry_run: object) -> None:
    if not isinstance(dry_run, bool):
        raise JobInputError(f"dry_run must be true or false, got {dry_run!r}")


@retry_only_transient
def expire_sessions(store: str = "default", dry_run: bool = False) -> dict[str, Any]:
    """Job: delete the expired sessions of one store, in batches."""
    settings = get_settings()
    config = entry("session store", store, settings.session_stores)

    def work(report: Report) -> None:
        if config.get("kind") == "redis":
            expire = expire_by_index if config.get("index") else expire_by_field
            expire(config, redis_client(settings), settings.maintenance_batch_size, report)
        else:
            expire_sql_sessions(config, settings, report)

    return locked_run("expire-sessions", store, dry_run, work, settings)


@retry_only_transient
def sweep_cache(target: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Job: sweep one cache target, or all of them."""
    settings = get_settings()
    names = [target] if target else sorted(settings.cache_targets)
    return {"targets": [sweep_one(name, settings, dry_run) for name in names]}


def sweep_one(name: str, settings: Settings, dry_run: bool) -> dict[str, Any]:
    config = entry("cache target", name, settings.cache_targets)
    place = cache_place(name, config, settings)

    def work(report: Report) -> None:
        if isinstance(place, ObjectTree):
            sweep_bucket(place, config, report)
        elif place is not None:
            sweep_disk(place, config, report, datetime.now(UTC).timestamp())
        else:
            sweep_redis(config, redis_client(settings), settings.maintenance_batch_size, report)

    return locked_run("sweep-cache", name, dry_run, work, settings)


def cache_place(name: str, config: dict[str, Any], settings: Settings) -> Path | ObjectTree | None:
    """Where a disk or bucket target lies (a disk target without a path: the thumbnails root, folder or
    bucket prefix); None for a redis target."""
    if config.get("kind") == "redis":
        return None
    if config.get("kind") == "s3":
        root: Location = parse_s3(config["url"], "url")
    else:
        root = Path(config["path"]) if config.get("path") else settings.thumbnails_root
    return bucket_tree(root, name, settings) if isinstance(root, S3Location) else root


def locked_run(
    job: str, name: str, dry_run: bool, work: Callable[[Report], None], settings: Settings
) -> dict[str, Any]:
    """Run `work` under the lock of this job and target, timed; "already running" if another holds it."""
    owner = getattr(get_current_job(), "id", None)  # a rerun of the same job takes over its lock
    with exclusive(redis_client(settings), f"rqkit:lock:{job}:{name}", LOCK_SECONDS, owner) as acquired:
        if not acquired:
            return {"target": name, "status": "already running"}
        report = Report(name, dry_run)
        start = time.perf_counter()
        work(report)
        report.seconds = time.perf_counter() - start
    verb = "would delete" if dry_run else "deleted"
    logger.info("%s %s: %s %d of %d", job, name, verb, report.deleted, report.examined)
    return {**report.as_dict(), "status": "dry run" if dry_run else "done"}
