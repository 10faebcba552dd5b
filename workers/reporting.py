"""What the fast workers write beyond RQ's own keys and fields, for the dashboard: each run in the job
history (config/history.py), and in their hash the memory they hold and their TTL
(config/worker_fields.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue

from config import history, rq_classes
from config.outage import is_outage, server_reply
from config.worker_fields import MEMORY_FIELD, TTL_FIELD, resident_kb


class Reporting(rq_classes.Worker):
    """RQ's worker, reporting what the dashboard shows: a run that RQ's own code ends (a success the
    claim script doesn't record, every failure, a dead horse's too) counted in the job history."""

    @contextmanager
    def unless_away(self, skipped: str) -> Iterator[None]:
        """Skip a write that a later one makes good, in one line, if Redis is away or refuses writes."""
        try:
            yield
        except RedisError as exc:
            if not is_outage(exc):
                raise
            self.log.warning("Worker %s: Redis is away (%s): %s", self.name, server_reply(exc), skipped)

    def serialize(self) -> dict[str, Any]:
        """RQ's fields of the worker's hash, and its TTL: a dashboard marks it dead once a heartbeat is
        that late (RQ keeps no TTL: others go by RQ's default)."""
        return {**super().serialize(), TTL_FIELD: self.worker_ttl}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tally = history.Tally()  # plain successes, sent with the claim script or a heartbeat

    def beat(self, timeout: int | None, pipeline: Any) -> None:
        """RQ's heartbeat, the memory this worker and its work-horse hold, and the runs counted but not
        sent yet (a long job holds back no claim script's: they go with its heartbeats)."""
        super().heartbeat(timeout, pipeline)
        held = [resident_kb(pid) for pid in (os.getpid(), self.horse_pid or None) if pid]
        pipeline.hset(self.key, MEMORY_FIELD, sum(kb for kb in held if kb is not None))
        if self._tally.counts:
            history.add(pipeline, self._tally.as_counts())
            self._tally.sent()

    def handle_job_success(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """RQ's, for a success the script doesn't record; counted in the job history."""
        super().handle_job_success(job, queue, *args, **kwargs)
        with self.unless_away(f"job {job.id} is not in the history"):
            history.count_run(self.connection, job, "succeeded")

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """RQ's, counted in the job history (a horse that died included: no entry point saw that)."""
        super().handle_job_failure(job, queue, *args, **kwargs)
        with self.unless_away(f"job {job.id} is not in the history"):
            history.count_run(self.connection, job, "failed")
