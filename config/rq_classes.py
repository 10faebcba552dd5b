"""RQ's Job, Queue and Worker with the configured serializer (pickle or json) as their default.

Every part of the toolkit makes its RQ objects from these classes, and hands them to the tools that
take a class: `rqscheduler --job-class config.rq_classes.Job` (rq-scheduler has no serializer
option), and rq-dashboard through `launcher/dashboard.py`. Stock `rq worker` takes `-S json`.
"""

from __future__ import annotations

from typing import Any

import rq
import rq.job
import rq_scheduler
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
    """RQ's forking worker, with a job's heartbeat lasting its monitoring interval plus 15 s (RQ: 60 s):
    the job of a worker killed mid-job is found abandoned that much sooner, and failed or retried."""

    job_class = Job
    queue_class: type[rq.Queue] = Queue
    heartbeat_grace = 15

    def get_heartbeat_ttl(self, job: rq.job.Job, working_time: float = 0.0) -> int:
        return super().get_heartbeat_ttl(job, working_time) - 60 + self.heartbeat_grace

    def __init__(self, queues: Any, name: str | None = None, **kwargs: Any) -> None:
        kwargs["serializer"] = kwargs.get("serializer") or configured_serializer()
        super().__init__(queues, name, **kwargs)


class Scheduler(rq_scheduler.Scheduler):
    """rq-scheduler's scheduler, storing and moving jobs of the configured serializer."""

    job_class = Job
    queue_class = Queue
