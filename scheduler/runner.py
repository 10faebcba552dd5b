"""rq-scheduler's scheduler as the toolkit runs it (`python -m scheduler`): the configured serializer, and
a loop that outlives a Redis restart or outage (stock `rqscheduler` exits at the first connection error)."""

from __future__ import annotations

import signal
import time
from contextlib import suppress
from typing import Any

import rq_scheduler
from redis.exceptions import RedisError

from config.connection import reconnect
from config.outage import OutageRetry, is_outage
from config.rq_classes import Job, Queue

RQSCHEDULER_INTERVAL = 60.0  # seconds between a bare `rqscheduler`'s looks: its `-i` default


class Scheduler(rq_scheduler.Scheduler):
    """rq-scheduler's scheduler, storing and moving jobs of the configured serializer."""

    job_class = Job
    queue_class = Queue
    stopping = False

    def run(self, burst: bool = False) -> None:
        """rq-scheduler's loop, started again after a Redis outage (waited out as config.outage says)."""
        outage = OutageRetry(self.log, "rq-scheduler")
        while True:
            started = time.monotonic()
            try:
                return super().run(burst)
            except RedisError as exc:
                if self.stopping or not is_outage(exc):
                    raise
                reconnect(self.connection)
                if time.monotonic() - started > self._interval:  # it got through a check: Redis was back
                    outage.reset()
                outage.wait(exc)

    def register_birth(self) -> None:
        self.connection.delete(self.key)  # this process's own entry, left by a run cut off from Redis
        super().register_birth()

    def _install_signal_handlers(self) -> None:
        """Stop on SIGINT or SIGTERM, even while Redis is away (stock: the handler itself fails)."""

        def stop(signum: int, frame: Any) -> None:
            self.log.info("Shutting down RQ scheduler...")
            self.stopping = True
            with suppress(RedisError):
                self.register_death()
                self.remove_lock()
            raise SystemExit()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
