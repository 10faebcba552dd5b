"""The one duration parser: `30s`, `5m`, `1.5h`, `1d`, or a number of seconds."""

from __future__ import annotations

import math
import re

DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")  # ASCII digits only, not any Unicode digit
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """Seconds from a finite number, or from a string with a unit (s, m, h, d); ValueError for anything
    else, a number too large to be finite included."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf  # float() of a huge int overflows
    else:
        match = DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
        seconds = float(match[1]) * UNITS[match[2]] if match else math.nan
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 2h or 1d")
    return seconds
