"""`BatchWorker`: a work-horse runs up to `horse_jobs` jobs in a row, claiming each next one itself, with
isolation between batches at close to the speed of a worker without horses."""

from __future__ import annotations

import logging
import mmap
import resource
import select
import struct
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import now

from config.settings import get_settings
from workers.claims import SUSPENDED, Claimed, Success
from workers.fork_server import may_raise_priority
from workers.forking import ForkingWorker
from workers.horses import Report

FORK_AHEAD_AFTER_MS = 5  # into a batch, the next horse is forked (the batch's first job has its CPU first)
HEAD = struct.Struct("QI")  # the slot's write count (odd while a write is under way) and its length
STOP_AT = HEAD.size  # one byte: the worker asks the horse to stop after its job
START = STOP_AT + 1  # where the job's fields start


class Running(NamedTuple):
    """A job that a horse claimed itself, as the worker reads it from the slot."""

    queue: str
    job_id: str
    execution_id: str
    started: datetime


class Slot:
    """Memory that a worker shares with its horses (mapped before they are forked): the job the horse
    claimed last, which the worker reads at a heartbeat or when the horse died, and the worker's request
    to stop after the job. The writer counts each write twice, so a reader sees one that ran meanwhile."""

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, mmap.PAGESIZE)

    def note(self, claimed: Claimed | None) -> None:
        """Write the job the horse runs now (None: the one handed to it, which the worker knows)."""
        data = b""
        if claimed:
            started = repr(claimed.started.timestamp())
            data = "\0".join((claimed.queue, claimed.job_id, claimed.execution_id, started)).encode()
        data = data if START + len(data) <= len(self.memory) else b""  # an id that long: not known
        count = HEAD.unpack_from(self.memory)[0]
        HEAD.pack_into(self.memory, 0, count + 1, 0)
        self.memory[START : START + len(data)] = data
        HEAD.pack_into(self.memory, 0, count + 2, len(data))

    def running(self) -> Running | None:
        """The job the horse noted last, or None (or if no whole write could be read)."""
        for _ in range(1000):
            count, size = HEAD.unpack_from(self.memory)
            data = self.memory[START : START + size]
            if count % 2 == 0 and HEAD.unpack_from(self.memory)[0] == count:
                break
        else:
            return None
        if not data:
            return None
        queue, job_id, execution_id, started = data.decode().split("\0")
        return Running(queue, job_id, execution_id, datetime.fromtimestamp(float(started), UTC))

    def ask_stop(self) -> None:
        self.memory[STOP_AT] = 1

    def stop_asked(self) -> bool:
        return self.memory[STOP_AT] == 1


class BatchWorker(ForkingWorker):
    """A `ForkingWorker` whose horse, once its job is done, claims the next one itself, up to
    `horse_jobs` (100) jobs; a fresh horse takes over after the last, after a job that timed out, once
    the horse's peak memory has grown `horse_growth_mb` (256) since its first job, or when it dies,
    which fails only the job it was running. The worker sees none of those claims: a slot of shared
    memory tells it the job to heartbeat, or to fail. A leak or a global changed reaches the rest of the
    batch only. Where a process may raise its priority again (CAP_SYS_NICE, or RLIMIT_NICE), the next
    horse is forked while a batch runs, at the lowest priority: it takes the CPU the batch leaves while
    it waits for Redis, and is ready when the batch ends."""

    job_log_level = logging.DEBUG  # as InProcessWorker's: at INFO, its two lines were a sixth of a no-op job
    one_by_one = False  # RQ's --max-jobs counts the jobs handed over: then a horse claims none itself
    _claimed: Claimed | None = None  # in a horse: the job it claimed last
    _start_kb: int | None = None  # in a horse: its peak resident memory as its first job began
    _timed_out = False  # in a horse: a job timed out in it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.horse_jobs = get_settings().horse_jobs
        self.slot = Slot()

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self.one_by_one = kwargs.get("max_jobs") is not None
        return super().work(*args, **kwargs)

    def hand_over(self, claimed: Claimed) -> None:
        """In the worker, ForkingWorker's; in a horse (a job it claimed), the job noted in the slot."""
        if self._is_horse:
            self._claimed = claimed
            self.slot.note(claimed)
        else:
            self.slot.note(None)
            super().hand_over(claimed)

    def run_handed(self, claimed: Claimed, more: int) -> Report:
        """In the horse: the job handed over, then up to `more` it claims, each claim recording the last
        one's success; until none is queued, or the worker stops, or the horse is spent."""
        job, queue = self.adopt(claimed)
        self._start_kb = self._start_kb or peak_kb()
        ran, mine = 0, None  # mine: the job running, if the horse claimed it
        while True:
            self._unrecorded = self.run_one(job, queue, mine or claimed)
            ran, spent = ran + 1, self.spent()
            if ran > more or spent or self.slot.stop_asked():
                break
            try:
                got = self.claim()
            except RedisError:  # Redis away: the success is back in _unrecorded, for the worker
                break
            if got is None or got == SUSPENDED:
                break
            (job, queue), mine = got, self._claimed
        return self.report(ran, spent, mine)

    def spent(self) -> bool:
        """Whether the horse is to be replaced: a job timed out in it, or it grew too much."""
        grown_kb = peak_kb() - (self._start_kb or 0)
        return self._timed_out or grown_kb > get_settings().horse_growth_mb * 1024

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ's; a time-out noted (it stops the job wherever it was: the horse's state is suspect)."""
        self._timed_out = self._timed_out or isinstance(exc_info[1], JobTimeoutException)
        super().handle_exception(job, *exc_info)

    def watch(self, job: Job, queue: Queue, execution: Execution) -> tuple[Job, Queue, Execution]:
        """Until the horse reports or exits, each monitoring interval RQ's step for the job it runs:
        heartbeats, or the horse killed once the job is 60 s past its time-out. Then that job."""
        poller = select.poll()
        assert self._horse_exit is not None
        for fd in (self._horse.reports, self._horse_exit):
            poller.register(fd, select.POLLIN)
        if self._spare is None and may_raise_priority() and not poller.poll(FORK_AHEAD_AFTER_MS):
            with suppress(OSError):  # (its fork server died, and this horse with it: seen below)
                self.order_spare()
        while not poller.poll(self.job_monitoring_interval * 1000):
            running = self.in_flight(job, queue, execution)
            if running is None:
                continue
            working = (now() - running[0].started_at).total_seconds() if running[0].started_at else 0.0
            timeout = running[0].timeout or queue.DEFAULT_TIMEOUT
            if running[0].timeout != -1 and working > timeout + 60:
                self.heartbeat(self.job_monitoring_interval + 60)
                self.kill_horse()
            else:
                self.maintain_heartbeats(running[0], running[2])
        return self.in_flight(job, queue, execution) or (job, queue, execution)

    def in_flight(self, job: Job, queue: Queue, execution: Execution) -> tuple[Job, Queue, Execution] | None:
        """The job the horse runs: the one handed over, or the one it claimed since (None: gone)."""
        running = self.slot.running()
        if running is None:
            return job, queue, execution
        try:
            job = self.job_class.fetch(running.job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            return None
        execution = Execution(running.execution_id, running.job_id, self.connection, self.name)
        execution.created_at = execution.last_heartbeat = running.started
        return job, self._queues.get(running.queue, queue), execution

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        try:
            return super().perform(job, queue, execution)
        finally:
            self.slot.note(None)  # no job in a horse (for a stop command that comes now)

    def get_current_job_id(self) -> str | None:
        running = self.slot.running()
        return running.job_id if running else super().get_current_job_id()

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop command, for the job the horse claimed too."""
        running = self.slot.running()
        if running is None:
            super().request_stop_execution(execution_id)
        elif running.execution_id == execution_id:
            self._stopped_job_id = running.job_id
            self.kill_horse()
        else:
            self.log.warning("Not running execution %s, command ignored.", execution_id)

    def handle_warm_shutdown_request(self) -> None:
        """RQ's; the horse stops after its job."""
        super().handle_warm_shutdown_request()
        self.slot.ask_stop()


def peak_kb() -> int:
    """This process's peak resident memory in KiB, as Celery's max_memory_per_child reads it: a system
    call, where reading /proc/<pid>/statm after each job made a batch's jobs a sixth slower."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
