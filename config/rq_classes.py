"""RQ's Job, Queue and Worker with the configured serializer (pickle or json) as their default.

Every part of the toolkit makes its RQ objects from these classes, and hands them to the tools that
take a class: `rqscheduler --job-class config.rq_classes.Job` (rq-scheduler has no serializer
option), and rq-dashboard through `launcher/dashboard.py`. Stock `rq worker` takes `-S json`.
"""

from __future__ import annotations

import signal
import time
from contextlib import suppress
from typing import Any

import rq
import rq.job
import rq_scheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.serializers import DefaultSerializer, JSONSerializer

from config.settings import get_settings


def configured_serializer() -> type[DefaultSerializer] | type[JSONSerializer]:
    """The serializer that the `serializer` setting names."""
    return JSONSerializer if get_settings().serializer == "json" else DefaultSerializer


class Job(rq.job.Job):
    """A job that reads and writes its data with the configured serializer unless told otherwise."""

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=serializer or configured_serializer())


class Queue(rq.Queue):
    job_class = Job

    def __init__(self, name: str = "default", connection: Any = None, **kwargs: Any) -> None:
        kwargs["serializer"] = kwargs.get("serializer") or configured_serializer()
        super().__init__(name, connection, **kwargs)


class Worker(rq.Worker):
    """RQ's forking worker, with a job's heartbeat lasting its monitoring interval plus 15 s (RQ: 60 s),
    so that the job of a worker killed mid-job is found abandoned that much sooner, and which waits out
    a Redis outage while suspended."""

    job_class = Job
    queue_class: type[rq.Queue] = Queue
    heartbeat_grace = 15

    def __init__(self, queues: Any, name: str | None = None, **kwargs: Any) -> None:
        kwargs["serializer"] = kwargs.get("serializer") or configured_serializer()
        super().__init__(queues, name, **kwargs)

    def get_heartbeat_ttl(self, job: rq.job.Job, working_time: float = 0.0) -> int:
        return super().get_heartbeat_ttl(job, working_time) - 60 + self.heartbeat_grace

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check, which a Redis restart while workers are suspended (`rq suspend`) would crash:
        wait for Redis instead, as RQ does when it meets an outage in its dequeue."""
        while True:
            try:
                return super().check_for_suspension(burst)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self.log.warning("Worker %s: Redis is unreachable (%s); retrying in 2 s", self.name, exc)
                time.sleep(2)


class Scheduler(rq_scheduler.Scheduler):
    """rq-scheduler's scheduler, storing and moving jobs of the configured serializer, whose loop
    outlives a Redis restart or outage (stock `rqscheduler` exits at the first connection error)."""

    job_class = Job
    queue_class = Queue
    stopping = False

    def run(self, burst: bool = False) -> None:
        wait = 1.0
        while True:
            started = time.monotonic()
            try:
                return super().run(burst)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if self.stopping:
                    raise
                wait = 1.0 if time.monotonic() - started > 60 else min(wait * 2, 30)
                self.log.warning("Redis is unreachable (%s); trying again in %.0f s", exc, wait)
                time.sleep(wait)

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
