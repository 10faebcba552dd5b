"""How long-running loops (workers, the scheduler) wait out a Redis outage: one policy for all."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import ConnectionError, TimeoutError

REDIS_DOWN = (ConnectionError, TimeoutError)  # what an outage looks like; anything else is a real error


class OutageRetry:
    """Waits 1 s after the first failure, twice as long after each next one, at most 30 s; `reset()`
    once Redis answers again."""

    first = 1.0
    longest = 30.0

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any], who: str) -> None:
        self.log, self.who, self.delay = log, who, self.first

    def wait(self, exc: BaseException) -> None:
        """Log the outage once per attempt, then sleep before the next attempt."""
        self.log.warning("%s: Redis is unreachable (%s); retrying in %.0f s", self.who, exc, self.delay)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.longest)

    def reset(self) -> None:
        self.delay = self.first
