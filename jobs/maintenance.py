"""Maintenance: expire sessions and sweep caches in short batches, safe on big data and run nightly.

Session stores (settings `session_stores`, one table each):
- `kind = "sql"`: `url` (default: the content database), `preset` = django | rails | flask, or
  `table`, `key_column` and either `expiry_column` or `updated_column` with `max_age` (seconds).
- `kind = "redis"`: `prefix` of the session keys (which carry no TTL), and either `index` (a sorted
  set of session ids scored by expiry, epoch seconds) or `expiry_field` (a hash field, epoch seconds).
Cache targets (settings `cache_targets`):
- `kind = "disk"`: `path` (default: the thumbnails root), `max_age_days`, `max_size_mb`.
- `kind = "redis"`: `pattern` (SCAN MATCH), `no_ttl` (select keys without a TTL), `max_idle_seconds`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from redis import Redis
from rq import get_current_job
from sqlalchemy import Engine, MetaData, Table, delete, func, select
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from config import ConfigError, Settings, get_settings, redis_client
from config.connection import RESERVED_PREFIXES
from jobs import content
from jobs.content import database_engine
from jobs.errors import JobInputError
from jobs.locks import exclusive
from jobs.media import TEMP_PREFIX
from jobs.runtime import retry_only_transient

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "django": {"table": "django_session", "key_column": "session_key", "expiry_column": "expire_date"},
    "rails": {"table": "sessions", "key_column": "id", "updated_column": "updated_at", "max_age": 14 * 86400},
    "flask": {"table": "sessions", "key_column": "id", "expiry_column": "expiry"},
}
RESERVED = tuple(prefix.encode() for prefix in RESERVED_PREFIXES)  # never swept
JOB_TIMEOUT = 3 * 3600
LOCK_SECONDS = JOB_TIMEOUT + 600  # outlasts the job, so two runs never overlap

# Deletes a session only if it is still expired when its turn comes (the app may have renewed it).
EXPIRE_BY_INDEX = """
local deleted = 0
for i, id in ipairs(ARGV) do
  if i > 2 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= tonumber(ARGV[2]) then
      redis.call('UNLINK', ARGV[1] .. id)
      redis.call('ZREM', KEYS[1], id)
      deleted = deleted + 1
    end
  end
end
return deleted
"""
EXPIRE_BY_FIELD = """
local deleted = 0
for i, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'hash' then
    local expiry = tonumber(redis.call('HGET', key, ARGV[1]))
    if expiry and expiry < tonumber(ARGV[2]) then
      redis.call('UNLINK', key)
      deleted = deleted + 1
    end
  end
end
return deleted
"""


@dataclass
class Report:
    """What a run did (or, dry, would do): counts, batches, time and the longest single step."""

    target: str
    dry_run: bool
    examined: int = 0
    deleted: int = 0  # in a dry run, what would be: reported as would_delete
    batches: int = 0
    bytes_freed: int = 0  # in a dry run, what would be: reported as would_free_bytes
    folders_removed: int = 0
    seconds: float = 0.0
    longest_step_ms: float = 0.0

    def timed(self, step: Callable[[], Any]) -> Any:
        """Run one transaction or command batch, keeping the longest."""
        start = time.perf_counter()
        try:
            return step()
        finally:
            self.longest_step_ms = max(self.longest_step_ms, (time.perf_counter() - start) * 1000)

    def as_dict(self) -> dict[str, Any]:
        report = {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}
        if self.dry_run:  # it deleted nothing: what it would delete goes under names that say so
            report |= {"deleted": 0, "would_delete": self.deleted}
            report |= {"bytes_freed": 0, "would_free_bytes": self.bytes_freed}
        return report


def entry(kind: str, name: object, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A configured store or target by name, refused with the known names if there is none."""
    if not isinstance(name, str) or name not in table:
        raise JobInputError(
            f"{kind} {name!r} is not configured (known: {', '.join(sorted(table)) or 'none'})"
        )
    return table[name]


def check_expire(store: object = "default", dry_run: object = False) -> None:
    entry("session store", store, get_settings().session_stores)
    check_sweep(None, dry_run)  # the same dry_run check, without a cache target


def check_sweep(target: object = None, dry_run: object = False) -> None:
    if target is not None:
        entry("cache target", target, get_settings().cache_targets)
    if not isinstance(dry_run, bool):
        raise JobInputError(f"dry_run must be true or false, got {dry_run!r}")


@retry_only_transient
def expire_sessions(store: str = "default", dry_run: bool = False) -> dict[str, Any]:
    """Job: delete the expired sessions of one store, in batches."""
    settings = get_settings()
    config = entry("session store", store, settings.session_stores)

    def work(report: Report) -> None:
        if config.get("kind") == "redis":
            expire_redis_sessions(config, redis_client(settings), settings.maintenance_batch_size, report)
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

    def work(report: Report) -> None:
        if config.get("kind") == "redis":
            sweep_redis(config, redis_client(settings), settings.maintenance_batch_size, report)
        else:
            root = Path(config.get("path") or settings.thumbnails_root)
            sweep_disk(root, config, report, datetime.now(UTC).timestamp())

    return locked_run("sweep-cache", name, dry_run, work, settings)


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


def sql_rule(config: dict[str, Any]) -> dict[str, Any]:
    """The preset's table and columns, overridden by what the store sets itself."""
    preset = config.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"session store: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    own = {k: v for k, v in config.items() if k not in ("kind", "preset", "url")}
    rule = PRESETS.get(preset or "", {}) | own
    if "table" not in rule or "key_column" not in rule:
        raise ConfigError("session store: give a preset, or table and key_column")
    if "expiry_column" not in rule and not ("updated_column" in rule and "max_age" in rule):
        raise ConfigError("session store: give expiry_column, or updated_column and max_age")
    return rule


def expire_sql_sessions(
    config: dict[str, Any], settings: Settings, report: Report, now: datetime | None = None
) -> None:
    """Delete expired rows by primary key, a batch per short transaction; a dry run only counts."""
    rule = sql_rule(config)
    url = config.get("url") or settings.sqlalchemy_url
    engine = content.content_engine(url) if url == settings.sqlalchemy_url else database_engine(url)
    table = reflect(engine, rule["table"])
    moment = (now or datetime.now(UTC)).replace(tzinfo=None)  # session columns hold naive UTC times
    if "expiry_column" in rule:
        expired = column(table, rule["expiry_column"]) < moment
    else:
        expired = column(table, rule["updated_column"]) < moment - timedelta(seconds=float(rule["max_age"]))
    key = column(table, rule["key_column"])
    batch = settings.maintenance_batch_size
    with engine.connect() as conn:
        if report.dry_run:  # what a run would delete
            report.examined = report.deleted = report.timed(
                lambda: conn.execute(select(func.count()).where(expired)).scalar_one()
            )
            return
    while True:
        with engine.begin() as conn:
            found, deleted = report.timed(lambda: delete_batch(conn, table, key, expired, batch))
        report.batches += 1
        report.examined += found
        report.deleted += deleted
        if found < batch:
            return


def delete_batch(conn: Any, table: Table, key: Any, expired: Any, batch: int) -> tuple[int, int]:
    """Rows found and rows deleted: the delete repeats the rule, so a session renewed meanwhile stays."""
    keys = list(conn.execute(select(key).where(expired).limit(batch)).scalars())  # no ORDER BY: index scan
    if not keys:
        return 0, 0
    return len(keys), conn.execute(delete(table).where(key.in_(keys)).where(expired)).rowcount


def reflect(engine: Engine, name: str) -> Table:
    try:
        return Table(name, MetaData(), autoload_with=engine)
    except NoSuchTableError:
        raise JobInputError(f"session store: no table {name!r} in {engine.url.render_as_string()}") from None
    except SQLAlchemyError as exc:
        raise JobInputError(f"session store: cannot read {name!r}: {exc}") from None


def column(table: Table, name: str) -> Any:
    if name not in table.c:
        raise JobInputError(f"session store: table {table.name!r} has no column {name!r}")
    return table.c[name]


def expire_redis_sessions(config: dict[str, Any], connection: Redis, batch: int, report: Report) -> None:
    """Sessions under `prefix` without a TTL: found through an expiry index, or by an expiry field."""
    prefix, now = str(config.get("prefix") or ""), time.time()
    if not prefix or prefix.encode().startswith(RESERVED):
        raise ConfigError(f"session store: a redis store needs a prefix of its own, got {prefix!r}")
    if config.get("index"):
        expire_by_index(connection, str(config["index"]), prefix, now, batch, report)
    elif config.get("expiry_field"):
        expire_by_field(connection, str(config["expiry_field"]), prefix, now, batch, report)
    else:
        raise ConfigError("session store: a redis store needs an index or an expiry_field")


def expire_by_index(
    connection: Redis, index: str, prefix: str, now: float, batch: int, report: Report
) -> None:
    start = 0
    while True:
        ids = report.timed(partial(connection.zrangebyscore, index, "-inf", now, start=start, num=batch))
        if not ids:
            return
        report.examined += len(ids)
        report.batches += 1
        if report.dry_run:
            start += len(ids)
            report.deleted += len(ids)
            continue
        report.deleted += report.timed(partial(connection.eval, EXPIRE_BY_INDEX, 1, index, prefix, now, *ids))


def expire_by_field(
    connection: Redis, field: str, prefix: str, now: float, batch: int, report: Report
) -> None:
    """Hashes whose expiry field is past; other types and unreadable fields are left alone."""
    for keys in scan_batches(connection, f"{prefix}*", batch, report):
        if report.dry_run:
            with connection.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, field)
                values = report.timed(partial(pipe.execute, raise_on_error=False))
            report.deleted += sum(1 for value in values if is_past(value, now))
        else:
            report.deleted += report.timed(
                partial(connection.eval, EXPIRE_BY_FIELD, len(keys), *keys, field, now)
            )


def is_past(value: Any, now: float) -> bool:
    try:
        return value is not None and not isinstance(value, Exception) and float(value) < now
    except ValueError:
        return False


def sweep_redis(config: dict[str, Any], connection: Redis, batch: int, report: Report) -> None:
    """Keys matching `pattern` with no TTL (`no_ttl`) or idle longer than `max_idle_seconds`: UNLINK."""
    pattern = str(config.get("pattern") or "")
    if not pattern or pattern.encode().startswith(RESERVED):
        raise ConfigError(f"cache target: pattern {pattern!r} would reach the queues' own keys")
    no_ttl, max_idle = bool(config.get("no_ttl")), config.get("max_idle_seconds")
    for found in scan_batches(connection, pattern, batch, report):
        keys = [key for key in found if not key.startswith(RESERVED)]  # whatever the pattern matched
        if not keys:
            continue
        with connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
                pipe.object("idletime", key)
            answers = report.timed(pipe.execute)
        chosen = [
            key
            for key, ttl, idle in zip(keys, answers[0::2], answers[1::2], strict=True)
            if (no_ttl and ttl == -1)
            or (max_idle is not None and idle is not None and idle > float(max_idle))
        ]
        delete_keys(connection, chosen, report)


def scan_batches(connection: Redis, pattern: str, batch: int, report: Report) -> Iterator[list[bytes]]:
    """SCAN (never KEYS) in steps of about `batch` keys."""
    cursor = 0
    while True:
        cursor, keys = report.timed(partial(connection.scan, cursor, match=pattern, count=batch))
        report.batches += 1
        if keys:
            report.examined += len(keys)
            yield keys
        if cursor == 0:
            return


def delete_keys(connection: Redis, keys: list[bytes], report: Report) -> None:
    """UNLINK (freed in the background, never blocking Redis); a dry run only counts."""
    if keys and not report.dry_run:
        report.timed(lambda: connection.unlink(*keys))
    report.deleted += len(keys)


def sweep_disk(root: Path, config: dict[str, Any], report: Report, now: float) -> None:
    """Files older than max_age_days go; then, while over max_size_mb, the least recently used.
    Symlinks are neither followed nor deleted; files being written (.rqkit-tmp-*) are left alone."""
    root = root.resolve()
    if not root.is_dir():
        return
    max_age = float(config.get("max_age_days", 0)) * 86400
    files = []
    for folder, _, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(folder) / name
            if name.startswith(TEMP_PREFIX) or path.is_symlink():
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # gone meanwhile (a thumbnail job replaced it)
                continue
            report.examined += 1
            if max_age and now - info.st_mtime > max_age:
                remove(path, info.st_size, report)
            else:
                files.append((max(info.st_atime, info.st_mtime), info.st_size, path))
    limit = float(config.get("max_size_mb", 0)) * 2**20
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):  # least recently used first
        if not limit or total <= limit:
            break
        remove(path, size, report)
        total -= size
    if not report.dry_run:
        report.folders_removed = remove_empty_folders(root)


def remove(path: Path, size: int, report: Report) -> None:
    if not report.dry_run:
        path.unlink(missing_ok=True)
    report.deleted += 1
    report.bytes_freed += size


def remove_empty_folders(root: Path) -> int:
    removed = 0
    for folder, _, _ in os.walk(root, topdown=False, followlinks=False):
        path = Path(folder)
        try:
            if path != root and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
                removed += 1
        except OSError:  # filled or removed meanwhile: a thumbnail job is writing there
            continue
    return removed
