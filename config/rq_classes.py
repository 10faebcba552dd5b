"""RQ's Job, Queue and Worker with the configured serializer (pickle or json) as their default, and the
job states the toolkit shows.

Every part of the toolkit makes its RQ objects from these classes, and hands them to the tools that
take a class: `rqscheduler --job-class config.rq_classes.Job` (rq-scheduler has no serializer
option), and rq-dashboard through `launcher/dashboard.py`. Stock `rq worker` takes `-S json`. The
toolkit's own worker engine (`workers/`) builds on `Worker`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import rq
import rq.job
from rq.defaults import DEFAULT_JOB_CLASS
from rq.job import JobStatus
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.utils import as_text, decode_redis_hash, str_to_date

from config.settings import get_settings

# The states a job is counted and listed in (one list or registry each), as `info`, `jobs list` and the
# metrics show them; and the groups the toolkit decides by.
STATES = ("queued", "started", "scheduled", "deferred", "failed", "finished")
WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED)
NOT_STARTED = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
UNFINISHED = (*NOT_STARTED, JobStatus.STARTED)
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


DATES = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")  # of a job's hash


def read_date(value: bytes | str) -> datetime:
    """RQ's str_to_date, fast for RQ's own format (which ends in Z: UTC)."""
    text = as_text(value)
    if text.endswith("Z"):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    return str_to_date(value)


SERIALIZERS = (DefaultSerializer, JSONSerializer)  # RQ's own, which need no check


def configured_serializer() -> type[DefaultSerializer] | type[JSONSerializer]:
    """The serializer that the `serializer` setting names."""
    return JSONSerializer if get_settings().serializer == "json" else DefaultSerializer


class Job(rq.job.Job):
    """A job that reads and writes its data with the configured serializer unless told otherwise."""

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:
        serializer = serializer or configured_serializer()
        if serializer not in SERIALIZERS:
            super().__init__(id, connection=connection, serializer=serializer)
            return
        super().__init__(id, connection=connection)  # RQ's check of a serializer costs 7 us a job
        self.serializer = serializer

    def restore(self, raw_data: Any) -> Any:
        """RQ's, with RQ's dates read by datetime.fromisoformat: RQ's strptime costs some 6 us a date, and
        a job has four or five (a tenth of what a no-op job costs a fast worker)."""
        fields = decode_redis_hash(raw_data)
        dates = {name: fields.pop(name) for name in DATES if fields.get(name)}
        restored = super().restore(fields)
        for name, value in dates.items():
            setattr(self, name, read_date(value))
        return restored


class Queue(rq.Queue):
    job_class = Job

    def __init__(self, name: str = "default", connection: Any = None, **kwargs: Any) -> None:
        kwargs["serializer"] = kwargs.get("serializer") or configured_serializer()
        super().__init__(name, connection, **kwargs)


class Worker(rq.Worker):
    """RQ's worker with the configured serializer, job and queue classes (to list workers, and the base
    of the toolkit's own)."""

    job_class = Job
    queue_class: type[rq.Queue] = Queue

    def __init__(self, queues: Any, name: str | None = None, **kwargs: Any) -> None:
        kwargs["serializer"] = kwargs.get("serializer") or configured_serializer()
        if kwargs.get("job_class") in (rq.job.Job, DEFAULT_JOB_CLASS):  # `rq worker` passes its default
            del kwargs["job_class"]  # this class's: RQ's with the configured serializer, dates read faster
        super().__init__(queues, name, **kwargs)

    def validate_queues(self) -> None:
        """Any RQ queue will do, as most code that starts a worker makes plain `rq.Queue` objects (RQ's own
        check wants instances of the worker's queue class); names become that class."""
        for queue in self.queues:
            if not isinstance(queue, rq.Queue):
                raise TypeError(f"{queue} is not an RQ queue or a queue name")
