"""`InProcessWorker`: each job in the worker's own process, as RQ's SimpleWorker."""

from __future__ import annotations

import logging
from typing import Any

from rq.defaults import DEFAULT_WORKER_TTL
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.worker import WorkerStatus

from workers.base import FastWorker
from workers.claims import Success


class InProcessWorker(FastWorker):
    """Runs each job in the worker's own process (no isolation between jobs, as RQ's SimpleWorker):
    for trusted, small jobs. A job's heartbeat lasts its time-out plus the grace."""

    in_process = True
    job_log_level = logging.DEBUG  # at thousands of jobs a second, a line each would cost a tenth

    def kill_horse(self, sig: Any = None) -> None:
        """No horse to kill (as RQ's SimpleWorker): a stop command must not kill this process group."""

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        return self.run(job, queue, execution)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """As RQ's SimpleWorker's (nothing beats while the job runs), with the grace: the claim script's
        rule, for jobs on RQ's path."""
        if job.timeout == -1:
            return DEFAULT_WORKER_TTL
        return int(job.timeout or DEFAULT_WORKER_TTL) + self.heartbeat_grace

    def execute_as_rq(self, job: Job, queue: Queue) -> None:
        """RQ's SimpleWorker.execute_job."""
        self.perform_job(job, queue, self.prepare_execution(job))
        self.set_state(WorkerStatus.IDLE)
