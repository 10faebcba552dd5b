"""Tables of named entries (the schedule, session stores, cache targets) as the environment gives them:
JSON objects of objects."""

from __future__ import annotations

import json
from typing import Any

from config.errors import ConfigError


def to_tables(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    """A table of tables, from TOML as it is or from JSON in the environment."""
    try:
        table = json.loads(raw, object_pairs_hook=unique_keys) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(entry, dict) for entry in table.values()):
        raise ValueError(raw)
    for name, entry in table.items():
        if not isinstance(entry.get("enabled", True), bool):
            raise ConfigError(f"{source}: {name}.enabled must be true or false, got {entry['enabled']!r}")
    return table


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if a name appears twice (json.loads would keep the last silently)."""
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given twice")
    return dict(pairs)
