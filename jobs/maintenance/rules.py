"""The settings of session stores and cache targets: the fields each kind takes, the SQL presets, and
the checks that refuse a store or target which is misconfigured or could only reach RQ's or the
toolkit's own keys. docs/jobs.md says what each field means."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config.connection import RESERVED_PREFIXES
from config.storage import is_s3, parse_s3
from jobs.errors import ConfigError, JobInputError

PRESETS: dict[str, dict[str, Any]] = {
    "django": {"table": "django_session", "key_column": "session_key", "expiry_column": "expire_date"},
    "rails": {"table": "sessions", "key_column": "id", "updated_column": "updated_at", "max_age": 14 * 86400},
    "flask": {"table": "sessions", "key_column": "id", "expiry_column": "expiry"},
}
RESERVED = tuple(prefix.encode() for prefix in RESERVED_PREFIXES)  # never swept
TEXT, NUMBER, FLAG = "text", "a number, 0 or more", "true or false"
FIELDS = {  # what each kind of store and target takes
    ("session store", "sql"): dict.fromkeys(
        ("url", "preset", "table", "key_column", "expiry_column", "updated_column"), TEXT
    )
    | {"max_age": NUMBER},
    ("session store", "redis"): dict.fromkeys(("prefix", "index", "expiry_field"), TEXT),
    ("cache target", "disk"): {"path": TEXT, "max_age_days": NUMBER, "max_size_mb": NUMBER},
    ("cache target", "redis"): {"pattern": TEXT, "no_ttl": FLAG, "max_idle_seconds": NUMBER},
    ("cache target", "s3"): {"url": TEXT, "max_age_days": NUMBER, "max_size_mb": NUMBER},
}
DEFAULT_KIND = {"session store": "sql", "cache target": "disk"}
OWN = f"RQ's or the toolkit's own ({', '.join(RESERVED_PREFIXES)})"
GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
# A character every match of a SCAN pattern has at this place: escaped, alone in brackets, or plain.
LEADING_LITERAL = re.compile(r"\\(.)|\[(?:\\(.)|([^\\^\]]))\]|([^*?\[\\])", re.DOTALL)


def entry(kind: str, name: object, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A configured store or target by name, refused with the known names if there is none, or with
    what is wrong with its settings."""
    if not isinstance(name, str) or name not in table:
        raise JobInputError(
            f"{kind} {name!r} is not configured (known: {', '.join(sorted(table)) or 'none'})"
        )
    if reason := settings_problem(kind, table[name]):
        raise JobInputError(f"{kind} {name!r}: {reason}")
    return table[name]


def settings_problem(kind: str, config: dict[str, Any]) -> str | None:
    """What is wrong with the settings of a store or target, if anything."""
    variant = str(config.get("kind", DEFAULT_KIND[kind]))
    fields = FIELDS.get((kind, variant))
    if fields is None:
        known = ", ".join(v for k, v in FIELDS if k == kind)
        return f"unknown kind {config.get('kind')!r} (known: {known})"
    for field, value in config.items():
        if field != "kind" and field not in fields:
            return f"unknown field {field!r} (known: kind, {', '.join(fields)})"
        if field != "kind" and not fits(value, fields[field]):
            return f"{field} must be {fields[field]}, got {value!r}"
    if variant == "redis":
        return reserved_problem(kind, config)
    return sql_problem(config) if variant == "sql" else bucket_problem(variant, config)


def fits(value: Any, expected: str) -> bool:
    if expected == NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return isinstance(value, bool if expected == FLAG else str)


def reserved_problem(kind: str, config: dict[str, Any]) -> str | None:
    """A redis store or target that could only ever reach reserved keys (or none) is refused."""
    if kind == "cache target":
        pattern = config.get("pattern", "")
        if literal_start(pattern).encode().startswith(RESERVED):
            return f"every key pattern {pattern!r} matches is {OWN}"
        return None if pattern else "a redis target needs a pattern"
    prefix, index = config.get("prefix", ""), config.get("index", "")
    for what, name in (("every key under prefix", prefix), ("index", index)):
        if name.encode().startswith(RESERVED):
            return f"{what} {name!r} is {OWN}"
    return None if index or config.get("expiry_field") else "a redis store needs an index or an expiry_field"


def literal_start(pattern: str) -> str:
    """The characters every key a SCAN pattern matches starts with."""
    start, position = [], 0
    while found := LEADING_LITERAL.match(pattern, position):
        start.append(next(group for group in found.groups() if group is not None))
        position = found.end()
    return "".join(start)


def bucket_problem(variant: str, config: dict[str, Any]) -> str | None:
    """An s3 target needs an s3://bucket/prefix url; a disk target's path is a folder, never a bucket."""
    if variant == "disk":
        path_is_url = is_s3(config.get("path", ""))
        return 'path is a folder: for a bucket, set kind = "s3" and url' if path_is_url else None
    url = config.get("url", "")
    if not is_s3(url):  # never shown: it may be an address with a password
        return "an s3 target needs a url, s3://bucket/prefix"
    try:
        parse_s3(url, "url")
    except ConfigError as exc:
        return str(exc)
    return None


def sql_rule(config: dict[str, Any]) -> dict[str, Any]:
    """The preset's table and columns, overridden by what the store sets itself."""
    own = {k: v for k, v in config.items() if k not in ("kind", "preset", "url")}
    return PRESETS.get(config.get("preset") or "", {}) | own


def sql_problem(config: dict[str, Any]) -> str | None:
    rule = sql_rule(config)
    if "url" in config and (problem := url_problem(config["url"])):
        return problem
    if config.get("preset") is not None and config["preset"] not in PRESETS:
        return f"unknown preset {config['preset']!r} (known: {', '.join(PRESETS)})"
    if "table" not in rule or "key_column" not in rule:
        return "give a preset, or table and key_column"
    if "expiry_column" not in rule and not ("updated_column" in rule and "max_age" in rule):
        return "give expiry_column, or updated_column and max_age"
    return None


def url_problem(url: str) -> str | None:
    """Why a store's url is not a database URL, in words that never show it (it may hold a password)."""
    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "url is not a SQLAlchemy database URL (dialect://user@host/name)"
    return None
