"""The Resque tutorial's Sleeper: a job that only takes time, for demos and tests."""

from __future__ import annotations

import logging
import time

from jobs.errors import JobInputError
from jobs.runtime import retry_only_transient

logger = logging.getLogger(__name__)

MAX_SLEEP = 3600


def check_seconds(seconds: object) -> None:
    """Refuse anything but a number of seconds between 0 and MAX_SLEEP."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_SLEEP:
        raise JobInputError(f"sleep: SECONDS must be a number from 0 to {MAX_SLEEP}, got {seconds!r}")


@retry_only_transient
def sleep(seconds: float) -> dict[str, float]:
    """Sleep for `seconds`, then say so."""
    check_seconds(seconds)
    time.sleep(seconds)
    logger.info("slept %ss", seconds)
    return {"slept": seconds}
