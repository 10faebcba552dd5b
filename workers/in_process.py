"""`InProcessWorker`: each job in the worker's own process, as RQ's SimpleWorker."""

from __future__ import annotations

import logging
from typing import Any

from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

from workers.base import FastWorker, Success


class InProcessWorker(FastWorker):
    """Runs each job in the worker's own process (no isolation between jobs, as RQ's SimpleWorker):
    for trusted, small jobs. A job's heartbeat lasts its time-out plus the grace."""

    in_process = True
    job_log_level = logging.DEBUG  # at thousands of jobs a second, a line each would cost a tenth

    def kill_horse(self, sig: Any = None) -> None:
        """No horse to kill (as RQ's SimpleWorker): a stop command must not kill this process group."""

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        return self.run(job, queue, execution)
