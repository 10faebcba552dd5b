"""`ForkingWorker`: each job in a work-horse forked for it, as RQ's Worker (or for up to `horse_jobs` jobs in
a row), with the next horse forked while idle."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import pickle
import select
import signal
import sys
import time
from contextlib import suppress
from typing import Any, NamedTuple

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

from config.outage import OutageRetry, is_outage
from config.settings import get_settings
from config.worker_fields import resident_kb
from workers.base import FastWorker
from workers.claims import Claimed, Success

STOPS = {signal.SIGTERM, signal.SIGINT}  # what asks a worker to stop
STARTED = b"S"  # what a work-horse says as it starts its job, before it reports the outcome
HEADER = 8  # a report's length, before it: a horse that runs several jobs doesn't end each with its exit


class Horse(NamedTuple):
    """A forked work-horse waiting for its job: its pid, and the pipes to hand the job over and to
    read the outcome back."""

    pid: int
    jobs: int
    reports: int
    runs: int = 0  # jobs handed to it so far
    start_kb: int | None = None  # its resident memory as its first job began


class ForkingWorker(FastWorker):
    """Runs each job in a fresh work-horse forked for it (a crash, a leak or a memory cap stays in
    there), monitored as RQ's Worker does: heartbeats, the kill after time-out + 60 s, stop commands.
    While idle it keeps the next horse forked and waiting, so a job starts without waiting for a fork.
    A horse sends a plain success back through a pipe, and the worker records it.

    With `horse_jobs` N > 1, a horse runs up to N jobs one after the other, and is replaced after the
    Nth, once it has grown `horse_growth_mb` since its first, or when it dies (which fails only the job
    it was running): the fork's cost is paid once per N jobs, and what one job leaves behind (a leak, a
    global changed) reaches at most the N - 1 after it."""

    _spare: Horse | None = None
    _rehearsal: Claimed | None = None
    _horse: Horse
    _horse_exit: int | None = None  # a pidfd: readable once the horse has exited
    _report: bytearray | None = None
    _horse_status: int | None = None
    _beats: OutageRetry | None = None  # the back-off of a job's heartbeats while Redis is away
    _kept: Horse | None = None  # the horse that ran the last job, alive, to run the next one

    def execute_as_rq(self, job: Job, queue: Queue) -> None:
        """RQ's Worker.execute_job (the class past FastWorker): a horse forked for the job, running RQ's
        perform_job."""
        super(FastWorker, self).execute_job(job, queue)

    def bootstrap(self, logging_level: str | None = None, *args: Any, **kwargs: Any) -> None:
        """RQ's, with RQ's job logger at the worker's level: `rq worker` gives it none, so RQ's line for a
        retry (`Job ...: enqueued for retry`) went missing, and a job whose horse died, rerun and
        finished, read as failed in the log."""
        level = logging_level or logging.getLevelName(self.log.getEffectiveLevel())
        super().bootstrap(level, *args, **kwargs)

    def get_ready(self) -> None:
        if self._spare is None:
            self._spare = self.fork_horse(spare=True)
            self.rehearse()

    def grown(self, horse: Horse) -> bool:
        """Whether a horse that ran jobs has grown `horse_growth_mb` since its first."""
        now_kb = resident_kb(horse.pid)
        return bool(
            horse.start_kb and now_kb and now_kb - horse.start_kb > get_settings().horse_growth_mb * 1024
        )

    def counted(self, horse: Horse) -> Horse:
        """The horse with the job just handed to it counted; the pipe that brings it jobs closed if that
        was its Nth (it exits after the job)."""
        runs, limit = horse.runs + 1, get_settings().horse_jobs
        if runs >= limit:
            os.close(horse.jobs)
            return horse._replace(runs=runs, jobs=-1)
        return horse._replace(runs=runs, start_kb=horse.start_kb or resident_kb(horse.pid))

    def rehearse(self) -> None:
        """Go through the start of a job (the last one) without running it. After a fork, the first
        write to each page the two processes share makes a copy of it: done while idle, those copies
        are not made on the next job's way in (a millisecond or so here, in each process)."""
        if self._rehearsal is None:
            return
        self._step([], [0, 0])  # a round trip that writes nothing
        self.adopt(self._rehearsal)
        self.executions.clear()

    def hand_over(self, claimed: Claimed) -> None:
        """Send the job to the waiting horse at once (or to one forked now)."""
        self._rehearsal = claimed
        spare, self._spare = self._spare, None
        if spare and spare.runs and self.grown(spare):  # replaced before its next job
            self.discard(spare)
            spare = None
        horse = spare or self.fork_horse(spare=False)
        message = pickle.dumps(claimed)
        message = len(message).to_bytes(HEADER, "big") + message
        try:
            write_all(horse.jobs, message)
        except BrokenPipeError:  # the waiting horse died (killed by hand?): fork one for this job
            self.discard(horse)
            horse, spare = self.fork_horse(spare=False), None
            write_all(horse.jobs, message)
        horse = self.counted(horse)
        self._horse, self._horse_pid = horse, horse.pid
        if spare is not None:
            # Let it start the job before this process goes on with its side: on a busy CPU that is
            # a millisecond or two sooner. (A horse that dies first gives an empty read.)
            os.read(horse.reports, len(STARTED))

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        horse, self._report = self._horse, bytearray()
        self.procline(f"Horse {horse.pid} running {job.id} since {time.time()}")
        self._horse_exit = os.pidfd_open(horse.pid)
        try:
            self.monitor_work_horse(job, queue, execution)
        finally:
            os.close(self._horse_exit)
            if self._kept is None:
                os.close(horse.reports)
        self._spare, self._kept = self._kept or self._spare, None
        report, self._report = self._report, None
        if len(report) <= HEADER or self._horse_status != os.EX_OK:
            return None
        job.ended_at, fields, func_name = pickle.loads(report[HEADER:])
        module = func_name.rpartition(".")[0]
        if module not in sys.modules:
            with suppress(Exception):  # import it here, once, for every later horse
                importlib.import_module(module)
        return Success(job, queue, execution, fields)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """RQ's, while the horse runs; Redis away, the horse runs on, and each failed heartbeat is one line
        and the back-off of config/outage.py before the next (RQ's loop quits on a TimeoutError)."""
        try:
            super().maintain_heartbeats(job, execution)
        except RedisError as exc:
            if not is_outage(exc):
                raise
            who = f"Worker {self.name}: heartbeat of job {job.id}"
            if self._beats is None or self._beats.who != who:
                self._beats = OutageRetry(self.log, who)
            self._beats.wait(exc)
        else:
            self._beats = None  # a next outage starts the back-off over

    def fork_horse(self, spare: bool) -> Horse:
        """A horse waiting for its job; a spare one (forked while idle) rehearses, and says when it
        starts the job."""
        self._waiting.connection_pool.disconnect()
        jobs_read, jobs_write = os.pipe()
        reports_read, reports_write = os.pipe()
        # A stop asked for while the fork runs would be raised inside the fork's own hooks, where
        # Python drops it ("Exception ignored"): the worker ran on. Held back, it arrives just after.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.setpgrp()
            os.close(jobs_write)
            os.close(reports_read)
            self.main_work_horse_on(jobs_read, reports_write, spare)
        os.close(jobs_read)
        os.close(reports_write)
        horse = Horse(pid, jobs_write, reports_read)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return horse

    def main_work_horse_on(self, jobs: int, reports: int, spare: bool) -> None:
        """The horse: wait for a job, run it, report (a plain success to the worker to record; anything
        else it handles as RQ), and wait for the next, until the worker closes the pipe (its last job,
        or the worker stopped or died)."""
        gc.freeze()  # a collection now leaves the pages shared with the worker alone
        self.setup_work_horse_signals()
        self._is_horse = True
        try:
            if spare:
                self.rehearse()
            # At most horse_jobs, then exit without waiting for the pipe's end: a process forked while
            # the worker held the pipe (RQ's scheduler, restarted after an outage) keeps it open.
            for _ in range(get_settings().horse_jobs):
                if len(size := read_exactly(jobs, HEADER)) < HEADER:
                    break
                self.executions.clear()
                job, queue = self.adopt(pickle.loads(read_exactly(jobs, int.from_bytes(size, "big"))))
                os.environ["RQ_WORKER_ID"], os.environ["RQ_JOB_ID"] = self.name, job.id
                if spare:
                    os.write(reports, STARTED)
                spare = True  # a next job comes to it waiting, as to a spare
                success = self.run(job, queue, next(iter(self.executions.values())))
                report = pickle.dumps((job.ended_at, success.fields, job.func_name)) if success else b""
                try:
                    write_all(reports, len(report).to_bytes(HEADER, "big") + report)
                except BrokenPipeError:  # the worker died: record the success from here, as RQ's horse
                    self._unrecorded = success
                    self.record()
                    break
        except BaseException:
            os._exit(1)
        os._exit(0)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """Read the horse's report until it ends or the horse exits (a process the job started may
        hold the pipe open), under RQ's monitoring alarm; then reap the horse."""
        if self._report is None or self._horse_exit is None:  # RQ's path, or a stop before perform()
            return super().wait_for_horse()
        horse = self._horse
        reports = horse.reports
        poller = select.poll()
        poller.register(reports, select.POLLIN)
        poller.register(self._horse_exit, select.POLLIN)
        while True:
            if reports in {fd for fd, _ in poller.poll()}:
                if chunk := os.read(reports, 65536):
                    self._report += chunk
                    if horse.jobs != -1 and reported(self._report):  # it waits for its next job
                        self._kept, self._horse_status = horse, os.EX_OK
                        return horse.pid, os.EX_OK, None
                    continue
                break
            os.set_blocking(reports, False)  # the horse exited: take what it wrote, and no more
            with suppress(BlockingIOError):
                while chunk := os.read(reports, 65536):
                    self._report += chunk
            break
        pid, status, rusage = super().wait_for_horse()
        self._horse_status = status
        return pid, status, rusage

    def kill_horse(self, sig: Any = signal.SIGKILL) -> None:
        if self.horse_pid:  # no horse: a stop command must not kill this process group
            super().kill_horse(sig)

    def discard(self, horse: Horse) -> None:
        """Kill a horse that has no job (it has nothing to lose), and close its pipes."""
        with suppress(ProcessLookupError):
            os.kill(horse.pid, signal.SIGKILL)
        os.waitpid(horse.pid, 0)
        os.close(horse.jobs)
        os.close(horse.reports)

    def teardown(self) -> None:
        spare, self._spare = self._spare, None
        if spare:
            self.discard(spare)
        super().teardown()


def reported(report: bytearray) -> bool:
    """Whether a horse's report is whole: its length, then that many bytes."""
    return len(report) >= HEADER and len(report) - HEADER == int.from_bytes(report[:HEADER], "big")


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def read_exactly(fd: int, size: int) -> bytes:
    """`size` bytes from a pipe, or fewer if it ends first."""
    chunks, left = [], size
    while left and (chunk := os.read(fd, min(left, 65536))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
