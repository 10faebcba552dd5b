"""The one duration parser: `30s`, `5m`, `1.5h`, `1d`, or a number of seconds."""

from __future__ import annotations

import re

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """Seconds from a number, or from a string with a unit (s, m, h, d); ValueError for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 2h or 1d")
    return float(match[1]) * UNITS[match[2]]
