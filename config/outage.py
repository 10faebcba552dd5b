"""How long-running loops (workers, the scheduler) wait out a Redis outage: one policy for all."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from redis.exceptions import ConnectionError, MasterDownError, ReadOnlyError, ResponseError, TimeoutError

REDIS_DOWN = (ConnectionError, TimeoutError)  # what an outage looks like; anything else is a real error
# Replies of a Redis that answers but serves no write for now: a master short of the replicas that
# `min-replicas-to-write` asks for, a master just demoted by a failover (READONLY for a write, UNBLOCKED
# for a worker's blocking pop). redis-py reports them as they are, after a note of the pipelined
# command, or inside a script's error.
WRITES_REFUSED = re.compile(r"(?:^|: -?)((?:NOREPLICAS|READONLY|UNBLOCKED) [^\n]*)")


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says Redis is away or refuses writes for now: worth waiting out, not a bug."""
    if isinstance(exc, (*REDIS_DOWN, ReadOnlyError, MasterDownError)):
        return True
    return isinstance(exc, ResponseError) and bool(WRITES_REFUSED.search(str(exc)))


def server_reply(exc: BaseException) -> str:
    """The server's refusal, without redis-py's note of the pipelined command or script that got it."""
    found = WRITES_REFUSED.findall(str(exc))
    return found[-1] if found else str(exc)


class OutageRetry:
    """Waits 1 s after the first failure, twice as long after each next one, at most 30 s; `reset()`
    once Redis answers again."""

    first = 1.0
    longest = 30.0

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any], who: str) -> None:
        self.log, self.who, self.delay = log, who, self.first

    def wait(self, exc: BaseException) -> None:
        """Log the outage once per attempt, then sleep before the next attempt."""
        state = "unreachable" if isinstance(exc, REDIS_DOWN) else "refusing writes"
        self.log.warning(
            "%s: Redis is %s (%s); retrying in %.0f s", self.who, state, server_reply(exc), self.delay
        )
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.longest)

    def reset(self) -> None:
        self.delay = self.first
