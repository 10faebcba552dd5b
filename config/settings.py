"""The toolkit's settings: defaults in code < optional TOML file < environment variables."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from email.utils import parseaddr
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config.errors import ConfigError
from config.sentinel import check_redis_url
from config.storage import Location, S3Location, check_endpoint, is_s3, parse_s3
from config.tables import to_tables
from config.urls import has_credentials
from config.worker_modes import check_worker_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config" / "settings.toml"
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # for every entry point that logs


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable; each field reads from TOML key `name` or env var `RQKIT_NAME`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = ""  # empty: a SQLite file under var_dir
    var_dir: Path = PROJECT_ROOT / "var"
    queues: tuple[str, ...] = ("images", "email", "api", "maintenance", "default")
    workers: int = 2
    pin_workers: bool = True  # up's workers each on its own CPU, when there is one per CPU (docs)
    worker_modes: tuple[str, ...] = ()  # queue=mode for up's workers: fork, batch, in-process (README)
    horse_jobs: int = 100  # a BatchWorker's horse's jobs; MB it may grow since its first (then a fresh one)
    horse_growth_mb: int = 256
    scheduler_interval: float = 5.0
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 9181
    dashboard_read_only: bool = False  # refuse requeue, delete, empty and compact
    dashboard_proxies: int = 0  # proxies in front of it that set X-Forwarded-* (werkzeug's ProxyFix)
    serializer: str = "pickle"  # how RQ stores job arguments, results and meta: pickle or json
    job_functions: tuple[str, ...] = ()  # the operator's own, beside the registry's (workers/allowed.py)
    redis_connect_timeout: float = 2.0
    redis_timeout: float = 10.0  # for a reply: a stalled Redis is an error to a producer, not a hang
    # Replicas every enqueue (and every once-only claim) must reach before it counts as done, checked
    # with Redis's WAIT: 0 is off (config/durable.py, docs/fleet.md).
    durable_replicas: int = 0
    durable_timeout: float = 1.0  # seconds to wait for them; then the caller gets an error
    log_level: str = "INFO"
    # where job paths may point, and where thumbnails go: folders, or s3://bucket/prefix (config/storage.py)
    media_root: Path | S3Location = dataclasses.field(default_factory=Path.cwd)
    thumbnails_dir: Path | S3Location | None = None  # default: var_dir/thumbnails
    s3_endpoint_url: str = ""  # an S3-compatible store's address; empty: AWS's own
    s3_region: str = ""  # empty: boto3's (AWS_DEFAULT_REGION), else us-east-1
    s3_timeout: float = 30.0  # seconds to connect, and for each read of a reply
    s3_max_attempts: int = 3  # tries of one request (boto3's standard retries); then the job's own
    thumbnail_sizes: tuple[int, ...] = (128, 256, 1024)
    thumbnail_format: str = "auto"  # jpeg, png, webp, or auto: png for sources with alpha, else jpeg
    thumbnail_quality: int = 85
    thumbnail_max_pixels: int = 100_000_000
    thumbnail_timeout: int = 120
    thumbnail_memory_mb: int = 1024
    smtp_host: str = ""  # empty: the local sink that `up` runs (127.0.0.1:smtp_sink_port, plain)
    smtp_port: int = 0  # 0: 587 for starttls, 465 for ssl, 25 for none
    smtp_security: str = "starttls"  # starttls, ssl or none
    smtp_timeout: float = 30.0
    smtp_ca_file: Path | None = None  # a CA bundle for servers with a private CA
    smtp_sink_port: int = 8025
    email_sender: str = "rqkit <noreply@example.com>"
    email_retry_intervals: tuple[int, ...] = (30, 120, 600, 3600)
    email_sent_days: int = 30  # how long an idempotency key remembers a sent message
    email_max_attachment_mb: int = 20
    api_allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    api_connect_timeout: float = 5.0
    api_read_timeout: float = 30.0
    api_max_retries: int = 5
    api_backoff_seconds: float = (
        2.0  # attempt n waits about this * 2**n (with jitter), capped at api_backoff_max
    )
    api_backoff_max: float = 3600.0
    api_max_body_kb: int = 256
    api_store_ttl: int = 3600
    api_rate_limits: tuple[str, ...] = ()  # "host=10/s" or "host=600/m", shared by every worker
    maintenance_batch_size: int = 500  # rows per SQL transaction: bench/sessions_sql.py
    job_memory_mb: int = 2048  # every job's cap over its work-horse's size at start
    # Tables in the TOML file, JSON in the environment; see jobs/maintenance.py for the fields.
    session_stores: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"default": {"kind": "sql", "preset": "django"}}
    )
    cache_targets: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"thumbnails": {"kind": "disk", "max_age_days": 90, "max_size_mb": 2048}}
    )
    schedule: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {
            "expire-sessions": {"job": "expire-sessions", "cron": "0 * * * *", "description": "hourly"},
            "sweep-caches": {"job": "sweep-cache", "cron": "30 3 * * *", "description": "nightly"},
            "prune-tags": {"job": "prune-tags", "cron": "15 * * * *", "description": "hourly"},
            # RQ's scheduled registries, where a bare `rq worker` has no scheduler (jobs/scheduled.py),
            # and the jobs a worker's blocking pop took and never received (jobs/orphans.py)
            "release-due": {"job": "release-due", "every": 60, "description": "every minute"},
            "word-count-comment": {"job": "word-count", "args": ["comment"], "every": 600},
            "word-count-article": {"job": "word-count", "args": ["article"], "every": 600},
        }
    )
    schedule_timezone: str = "UTC"  # cron entries are read in this zone, whatever the host's TZ
    # Secrets: environment only, never read from the TOML file.
    dashboard_username: str = ""
    dashboard_password: str = dataclasses.field(default="", repr=False)
    smtp_username: str = ""
    smtp_password: str = dataclasses.field(default="", repr=False)
    # for a redis+sentinel URL: the master's (a redis:// URL carries its own), and the sentinels' own
    redis_password: str = dataclasses.field(default="", repr=False)
    sentinel_password: str = dataclasses.field(default="", repr=False)

    @property
    def thumbnails_root(self) -> Location:
        """Where thumbnails go: thumbnails_dir, else var_dir/thumbnails."""
        return self.thumbnails_dir or self.var_dir / "thumbnails"

    @property
    def smtp_server(self) -> tuple[str, int, str]:
        """Host, port and security to send mail with: the configured server, else the local sink."""
        if not self.smtp_host:
            return "127.0.0.1", self.smtp_sink_port, "none"
        return self.smtp_host, self.smtp_port or SMTP_PORTS[self.smtp_security], self.smtp_security

    @property
    def api_rates(self) -> dict[str, float]:
        """Requests per second allowed per host, from api_rate_limits."""
        rates = {}
        for entry in self.api_rate_limits:
            match = RATE_LIMIT.match(entry)
            assert match, entry  # validated at load
            rates[match["host"].lower()] = float(match["count"]) / (60 if match["unit"] == "m" else 1)
        return rates

    @property
    def mail_dir(self) -> Path:
        """Where the local SMTP sink stores what it receives."""
        return self.var_dir / "mail"

    @property
    def sqlalchemy_url(self) -> str:
        """The content database's URL: the configured one, else SQLite under var_dir."""
        return self.database_url or f"sqlite:///{self.var_dir / 'content.db'}"


BOOLEANS = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(("0", "false", "no", "off"), False)
SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
# A function (`module.function`), every function of one module (`module.*`), or any function (`*`).
JOB_FUNCTION = re.compile(r"^(\*|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.([A-Za-z_]\w*|\*))$")
RATE_LIMIT = re.compile(r"^(?P<host>[^=\s]+)=(?P<count>0*[1-9]\d*(?:\.\d+)?|0*\.\d*[1-9]\d*)/(?P<unit>[sm])$")
# Conventional names first; RQ_REDIS_URL is what the stock `rq` commands read.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "redis_url": ("REDIS_URL", "RQ_REDIS_URL"),
    "database_url": ("DATABASE_URL",),
}
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
SECRETS = frozenset(name for name in FIELDS if name.endswith(("_username", "_password")))
# Tables of named entries: the file's add to the defaults or replace one by name; the environment's
# JSON replaces the whole setting. `enabled = false` switches an entry off: a schedule entry stays,
# shown as disabled and never synced; a store or target is dropped.
TABLES = ("schedule", "session_stores", "cache_targets")
SWITCHED_TABLES = ("session_stores", "cache_targets")


def env_names(field: str) -> tuple[str, ...]:
    """The environment variables that set `field`, in order of precedence."""
    return ENV_NAMES.get(field, (f"RQKIT_{field.upper()}",))


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Build settings from defaults, the TOML file and `env`; raise ConfigError naming a bad one."""
    values: dict[str, Any] = {}
    for key, raw in read_config_file(env).items():
        value = convert(key, raw, f"{key} in the config file")
        values[key] = over_defaults(key, value) if key in TABLES else value
    for name in FIELDS:
        for var in env_names(name):
            if var in env:
                values[name] = convert(name, env[var], var)  # the environment replaces a table whole
                break
    for name in SWITCHED_TABLES:
        if name in values:
            values[name] = switched_on(values[name])
    settings = Settings(**values)
    validate(settings)
    return settings


def over_defaults(name: str, tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The file's tables over the default ones: a new name adds an entry, a default's name replaces that
    entry whole, and a table of nothing but `enabled` switches the default of its name on or off."""
    factory = FIELDS[name].default_factory
    assert callable(factory), name
    merged: dict[str, dict[str, Any]] = factory()
    for key, table in tables.items():
        merged[key] = {**merged.get(key, {}), **table} if set(table) == {"enabled"} else table
    return merged


def switched_on(tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The entries not switched off, without the switch (the maintenance jobs know no `enabled`)."""
    return {
        name: {key: value for key, value in table.items() if key != "enabled"}
        for name, table in tables.items()
        if table.get("enabled", True)
    }


def config_file(env: Mapping[str, str] = os.environ) -> Path:
    """The settings file in use: the one RQKIT_CONFIG names, else config/settings.toml."""
    return Path(env["RQKIT_CONFIG"]) if env.get("RQKIT_CONFIG") else DEFAULT_CONFIG_FILE


def read_config_file(env: Mapping[str, str]) -> dict[str, Any]:
    """The TOML file named by RQKIT_CONFIG, else config/settings.toml if it exists."""
    path = config_file(env)
    if not path.exists():
        if env.get("RQKIT_CONFIG"):
            raise ConfigError(f"RQKIT_CONFIG: no such file: {path}")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    for key in data:
        if key in SECRETS:
            raise ConfigError(
                f"{key} in {path}: secrets come from the environment only ({env_names(key)[0]})"
            )
        if key not in FIELDS:
            raise ConfigError(f"{key} in {path}: unknown setting (known: {', '.join(sorted(FIELDS))})")
    urls = {"redis_url": data.get("redis_url"), "database_url": data.get("database_url")}
    stores = data.get("session_stores")
    stores = stores if isinstance(stores, dict) else {}
    urls |= {f"session_stores.{n}.url": s.get("url") for n, s in stores.items() if isinstance(s, dict)}
    for name, url in urls.items():
        if isinstance(url, str) and has_credentials(url):
            raise ConfigError(
                f"{name} in {path}: a URL with a password (or another credential) belongs in the "
                "environment, not this file"
            )
    return data


def convert(name: str, raw: Any, source: str) -> Any:
    """Convert a TOML or environment value to the field's type."""
    kind = str(FIELDS[name].type)
    try:
        if kind == "dict[str, dict[str, Any]]":
            return to_tables(raw, source)
        if kind in ("tuple[str, ...]", "tuple[int, ...]"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            names = tuple(str(item).strip() for item in items if str(item).strip())
            return names if kind == "tuple[str, ...]" else tuple(int(name) for name in names)
        if kind == "bool":
            return raw if isinstance(raw, bool) else BOOLEANS[str(raw).strip().lower()]
        if kind == "int" and not isinstance(raw, bool):
            return int(raw)
        if kind == "float" and not isinstance(raw, bool):
            return float(raw)
        if kind in ("Path | S3Location", "Path | S3Location | None") and is_s3(str(raw)):
            return parse_s3(str(raw), source)
        if kind in ("Path", "Path | None", "Path | S3Location", "Path | S3Location | None"):
            return Path(str(raw)).expanduser().resolve()
        if kind == "str" and isinstance(raw, str):
            return raw
    except (TypeError, ValueError, KeyError):
        pass
    expected = {
        "tuple[str, ...]": "a list of names",
        "tuple[int, ...]": "a list of numbers",
        "Path | None": "a path",
        "Path | S3Location": "a path or s3://bucket/prefix",
        "Path | S3Location | None": "a path or s3://bucket/prefix",
        "bool": "true or false",
        "dict[str, dict[str, Any]]": "tables of name = {field = value} (JSON in the environment)",
    }
    raise ConfigError(f"{source}: expected {expected.get(kind, kind)}, got {raw!r}")


def validate(settings: Settings) -> None:
    """Check values that have the right type but make no sense."""
    check_redis_url(settings.redis_url, bool(settings.redis_password or settings.sentinel_password))
    if settings.database_url and "://" not in settings.database_url:
        raise ConfigError("DATABASE_URL: not a database URL (dialect://user@host/name)")
    if isinstance(settings.media_root, Path) and not settings.media_root.is_dir():
        raise ConfigError(f"RQKIT_MEDIA_ROOT: not a directory: {settings.media_root}")
    check_endpoint(settings.s3_endpoint_url)
    if not settings.queues:
        raise ConfigError("RQKIT_QUEUES: at least one queue is needed")
    for queue in settings.queues:
        if not QUEUE_NAME.match(queue):
            raise ConfigError(f"RQKIT_QUEUES: bad queue name {queue!r} (letters, digits, - and _ only)")
    check_worker_settings(settings)
    checks = [
        ("workers", settings.workers >= 1, "at least 1"),
        ("dashboard_proxies", 0 <= settings.dashboard_proxies <= 5, "a count of proxies from 0 to 5"),
        (
            "job_functions",
            all(JOB_FUNCTION.match(path) for path in settings.job_functions),
            "dotted paths like myapp.jobs.send_report or myapp.jobs.* (or * for any function)",
        ),
        ("scheduler_interval", settings.scheduler_interval > 0, "positive"),
        ("dashboard_port", 1 <= settings.dashboard_port <= 65535, "a port number"),
        ("serializer", settings.serializer in ("pickle", "json"), "pickle or json"),
        ("redis_connect_timeout", settings.redis_connect_timeout > 0, "positive"),
        ("redis_timeout", settings.redis_timeout > 0, "positive"),
        ("s3_timeout", settings.s3_timeout > 0, "positive"),
        ("s3_max_attempts", 1 <= settings.s3_max_attempts <= 20, "from 1 to 20"),
        (
            "durable_replicas",
            0 <= settings.durable_replicas <= 100,
            "a count of replicas from 0 (off) to 100",
        ),
        ("durable_timeout", 0 < settings.durable_timeout <= 60, "seconds, more than 0 and at most 60"),
        ("log_level", settings.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "a log level"),
        (
            "thumbnail_sizes",
            bool(settings.thumbnail_sizes) and all(1 <= s <= 8192 for s in settings.thumbnail_sizes),
            "sizes from 1 to 8192",
        ),
        (
            "thumbnail_format",
            settings.thumbnail_format in ("auto", "jpeg", "png", "webp"),
            "auto, jpeg, png or webp",
        ),
        ("thumbnail_quality", 1 <= settings.thumbnail_quality <= 100, "from 1 to 100"),
        ("thumbnail_max_pixels", settings.thumbnail_max_pixels > 0, "positive"),
        ("thumbnail_timeout", settings.thumbnail_timeout > 0, "positive"),
        ("thumbnail_memory_mb", settings.thumbnail_memory_mb > 0, "positive"),
        ("smtp_port", 0 <= settings.smtp_port <= 65535, "a port number"),
        ("smtp_security", settings.smtp_security in SMTP_PORTS, "starttls, ssl or none"),
        ("smtp_timeout", settings.smtp_timeout > 0, "positive"),
        (
            "smtp_ca_file",
            settings.smtp_ca_file is None or settings.smtp_ca_file.is_file(),
            "an existing file",
        ),
        ("smtp_sink_port", 1 <= settings.smtp_sink_port <= 65535, "a port number"),
        ("email_sender", "@" in parseaddr(settings.email_sender)[1], "an address like Name <me@example.com>"),
        (
            "email_retry_intervals",
            all(i >= 0 for i in settings.email_retry_intervals),
            "seconds, none negative",
        ),
        ("email_sent_days", settings.email_sent_days > 0, "positive"),
        ("email_max_attachment_mb", settings.email_max_attachment_mb > 0, "positive"),
        ("api_connect_timeout", settings.api_connect_timeout > 0, "positive"),
        ("api_read_timeout", settings.api_read_timeout > 0, "positive"),
        ("api_max_retries", settings.api_max_retries >= 0, "0 or more"),
        ("api_backoff_seconds", settings.api_backoff_seconds >= 0, "0 or more"),
        (
            "api_backoff_max",
            settings.api_backoff_max >= settings.api_backoff_seconds,
            "at least api_backoff_seconds",
        ),
        ("api_max_body_kb", settings.api_max_body_kb > 0, "positive"),
        ("api_store_ttl", settings.api_store_ttl > 0, "positive"),
        ("maintenance_batch_size", settings.maintenance_batch_size > 0, "positive"),
        ("job_memory_mb", settings.job_memory_mb > 0, "positive"),
        (
            "schedule_timezone",
            known_zone(settings.schedule_timezone),
            "an IANA time zone like UTC or Europe/Paris",
        ),
        (
            "api_rate_limits",
            all(RATE_LIMIT.match(entry) for entry in settings.api_rate_limits),
            "entries like host=10/s",
        ),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{env_names(name)[0]}: must be {expected}, got {getattr(settings, name)!r}")
    if settings.durable_timeout >= settings.redis_timeout:
        raise ConfigError("RQKIT_DURABLE_TIMEOUT must be shorter than RQKIT_REDIS_TIMEOUT (a reply's wait)")
    if bool(settings.dashboard_username) != bool(settings.dashboard_password):
        raise ConfigError("RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD go together")


def known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


@cache
def get_settings() -> Settings:
    """The process's settings, loaded once."""
    return load_settings()
