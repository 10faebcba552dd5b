"""`ForkingWorker`: each job in a work-horse forked for it, as RQ's Worker, with the next horse forked while
idle (and the engine of `BatchWorker`, workers/batch.py, whose horse runs several)."""

from __future__ import annotations

import functools
import gc
import importlib
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, NoReturn, TypeVar

import redis.utils
from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

from config import history
from config.connection import close_inherited
from config.outage import OutageRetry, is_outage
from workers.base import FastWorker
from workers.claims import Claimed, Success
from workers.fork_server import LOWEST, ForkServer, close_all, ended, exit_status, may_raise_priority
from workers.horses import (
    HEADER,
    STARTED,
    Horse,
    HorseRequest,
    Pending,
    Report,
    read_exactly,
    small,
    write_all,
)
from workers.kept_connections import KeptConnections, Lent, Returned
from workers.prefault import WrittenPages

T = TypeVar("T")


class ForkingWorker(FastWorker):
    """Runs each job in a fresh work-horse forked for it by its fork server (a crash, a leak or a
    memory cap stays in there), monitored as RQ's Worker does: heartbeats, the kill after time-out + 60
    s, stop commands. While idle it keeps the next horse forked and waiting, so a job starts without
    waiting for a fork. A horse sends a plain success back through a pipe, and the worker records it."""

    horse_jobs = 1  # jobs a horse runs before a fresh one takes over
    one_by_one = False  # a horse runs only the jobs handed to it, claiming none itself
    _spare: Horse | Pending | None = None  # a fresh horse forked ahead of its job (or asked for)
    _resting: Horse | None = None  # a horse that ran jobs, waiting for its next (BatchWorker's)
    _rehearsal: Claimed | None = None
    _horse: Horse
    _horse_exit: int | None = None  # the running horse's exit pipe
    _report: bytearray | None = None
    _horse_status: int | None = None
    _beats: OutageRetry | None = None  # the back-off of a job's heartbeats while Redis is away
    _kept: Horse | None = None  # the horse that ran the last job, alive, to run the next one
    _say_started: int | None = None  # in a spare horse: the pipe to say STARTED on, once its job starts
    _handed: Lent = {}  # in a horse: the kept connections lent to it, to take over
    _returned: Returned  # the kept connections of horses that ended, for the server with the next request
    _drop_all = False  # the server is to close every kept connection at the next request

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._returned = {}
        self._job_modules: set[str] = set()
        self.pages = WrittenPages()  # before the fork server and its horses are forked
        self.forks = ForkServer(self.start_serving, self.prepare_horse, self.run_horse)
        # redis-py reads its own version from the package's files for each connection it opens (0.3 ms,
        # some 3 ms in a fresh horse): once, here, for the connections of every horse and its jobs.
        if not hasattr(redis.utils.get_lib_version, "cache_info"):
            redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)

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
        if self._spare is None and self._resting is None:
            self._spare = self.fork_horse(spare=True)

    def send(self, horse: Horse, claimed: Claimed) -> Horse:
        """Hand the job to the horse, with how many more it may claim after it; the pipe that brings it
        jobs closed if that is its last (it exits after the job)."""
        left = self.horse_jobs - horse.runs
        message = pickle.dumps((claimed, left, self.one_by_one))
        write_all(horse.jobs, len(message).to_bytes(HEADER, "big") + message)
        if left > 1:
            return horse
        os.close(horse.jobs)
        return horse._replace(jobs=-1)

    def rehearse(self) -> None:
        """In a spare horse: go through the start of a job (the last one) without running it, and copy the
        pages the last horse that noted them wrote. After a fork, the first write to each page it shares
        with the fork server makes a copy of it: done while idle, those copies are not made on the next
        job's way in (a millisecond or two here; workers/prefault.py)."""
        if self._rehearsal is not None:
            self._step([], [0, 0])  # a round trip that writes nothing
            self.adopt(self._rehearsal)
            self.executions.clear()
        self.pages.populate()

    def hand_over(self, claimed: Claimed) -> None:
        """Send the job to the waiting horse at once (or to one forked now)."""
        self._rehearsal = claimed
        spare = self._resting or self.spare_horse()
        if spare is self._resting:
            self._resting = None
        elif spare is not None:
            self._spare = None
            spare.raise_priority()
        horse = spare or self.fork_horse(spare=False)
        try:
            horse = self.send(horse, claimed)
        except BrokenPipeError:  # the waiting horse died (killed by hand?): fork one for this job
            self.discard(horse)
            self.drop_handed()
            horse, spare = self.send(self.fork_horse(spare=False), claimed), None
        self._horse, self._horse_pid = horse, horse.pid
        if spare is not None:
            # Let it start the job before this process goes on with its side: on a busy CPU that is
            # a millisecond or two sooner. (A horse that dies first gives an empty read.) Woken by that
            # byte, this process would run first on a CPU the two share (the kernel favours a task
            # that slept): it yields, so that the job (as a rule) reaches its first line first.
            os.read(horse.reports, len(STARTED))
            os.sched_yield()

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        horse, self._report = self._horse, bytearray()
        self.procline(f"Horse {horse.pid} running {job.id} since {time.time()}")
        self._horse_exit = horse.exit
        try:
            self.monitor_work_horse(*self.watch(job, queue, execution))
        finally:
            self._horse_exit = None
            if self._kept is None:
                horse.close()
        report = self.take_report()
        if report is None or report.success is None:
            return None
        if report.claimed:  # the horse's last job was one it claimed: the one handed to it is done
            self.executions.pop(execution.id, None)
            job, queue = self.adopt(report.claimed)
            execution = self.executions[report.claimed.execution_id]
        job.ended_at, fields, func_name = report.success
        self._job_modules.add(func_name.rpartition(".")[0])  # the fork server imports it, for later horses
        return Success(job, queue, execution, fields)

    def watch(self, job: Job, queue: Queue, execution: Execution) -> tuple[Job, Queue, Execution]:
        """The job to monitor as RQ does (here: the one handed over)."""
        return job, queue, execution

    def take_report(self) -> Report | None:
        """The horse's report (None if it died first), the runs it counted added to this worker's; the
        horse kept for the next job, unless it ran its last or is spent."""
        raw, self._report = self._report or b"", None
        report = pickle.loads(raw[HEADER:]) if len(raw) > HEADER and self._horse_status == os.EX_OK else None
        kept, self._kept = self._kept, None
        if kept and report:
            kept = kept._replace(runs=kept.runs + report.ran)
            if report.spent or kept.runs >= self.horse_jobs:
                self.discard(kept, wait=False)  # it exits by itself (a SIGKILL makes sure)
                kept = None
        if kept is None:  # the horse is gone: what it gave back is lent to another
            self._returned[self._horse.kept] = report and report.handed
        self._resting = kept
        if report:
            self._tally.counts.update(report.counts)
        return report

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
        """A horse waiting for its job, forked by the fork server; a spare one (forked ahead of its job)
        rehearses, and says when it starts the job."""
        forked, ours = self.ask_fork_server(spare, self.forks.fork)
        return Horse.forked(forked, *ours)

    def order_spare(self) -> None:
        """Ask the fork server for a spare without waiting for it (`spare_horse` takes it when needed)."""
        order, ours = self.ask_fork_server(True, self.forks.order)
        self._spare = Pending(order, *ours)

    def ask_fork_server(self, spare: bool, ask: Callable[..., T]) -> tuple[T, list[int]]:
        """`ask` (the fork server's `fork` or `order`) with a horse's request and its pipes' ends; what it
        answers, and this process's ends."""
        jobs_read, jobs_write = os.pipe()
        reports_read, reports_write = os.pipe()
        rehearsal = self._rehearsal if spare and small(self._rehearsal) else None
        modules = tuple(self._job_modules)
        request = HorseRequest(spare, rehearsal, self._returned, self._drop_all, modules)
        ours = [jobs_write, reports_read]
        try:
            answer = ask(request, [jobs_read, reports_write], ours)
        except BaseException:
            close_all(ours)
            raise
        self._returned, self._drop_all = {}, False
        return answer, ours

    def spare_horse(self) -> Horse | None:
        """The spare, once the fork server has said it forked it (None if its server ended first)."""
        pending = self._spare
        if not isinstance(pending, Pending):
            return pending
        try:
            self._spare = spare = Horse.forked(
                self.forks.forked(pending.order), pending.jobs, pending.reports
            )
        except OSError:
            self._spare = None
            close_all([pending.jobs, pending.reports])
            return None
        return spare

    def start_serving(self) -> None:
        """In the fork server, as it starts."""
        # The wait's socket is the worker's: a process the job leaves behind must not hold it open once
        # the worker is gone (Redis would hand the next job to that wait: lost).
        close_inherited(self._waiting)
        self._kept_connections = KeptConnections(self.connection)

    def prepare_horse(self, request: HorseRequest) -> tuple[int, int | None]:
        """In the fork server, before it forks a horse: the kept connections horses gave back taken back
        (the others closed), the job modules seen imported, a set of kept connections lent to it. Its set's
        id, and its nice value: a spare waits at the lowest, if it may raise its own as its job comes."""
        self._rehearsal = request.rehearsal
        self._kept_connections.settle(request.returned, request.drop_all)
        for module in request.modules:
            if module not in sys.modules:
                with suppress(Exception):
                    importlib.import_module(module)
        set_id, self._handed = self._kept_connections.lend()
        return set_id, LOWEST if request.spare and may_raise_priority() else None

    def run_horse(self, request: HorseRequest, jobs: int, reports: int) -> NoReturn:
        """A new horse, forked by the fork server."""
        for connection in self._handed.values():
            connection.take_over()
        os.setpgrp()
        self.main_work_horse_on(jobs, reports, request.spare)

    def main_work_horse_on(self, jobs: int, reports: int, spare: bool) -> NoReturn:
        """The horse: wait for a job, run it (and those it may claim after it), report (a plain success
        to the worker to record; anything else it handles as RQ), and wait for the next, until it ran
        its `horse_jobs` or the worker closes the pipe (it stopped or died)."""
        gc.freeze()  # a collection now leaves the pages shared with the fork server alone
        self.setup_work_horse_signals()
        self._is_horse = True
        self._tally = history.Tally()  # the runs the worker counted are the worker's to send
        try:
            if spare:
                self.rehearse()
            while len(size := read_exactly(jobs, HEADER)) == HEADER:
                claimed, left, one_by_one = pickle.loads(read_exactly(jobs, int.from_bytes(size, "big")))
                self.executions.clear()
                self._say_started = reports if spare else None
                spare = True  # a next job comes to it waiting, as to a spare
                done = self.run_handed(claimed, 0 if one_by_one else left - 1)
                last = done.ran >= left or done.spent
                if last:
                    self.pages.learn()
                    given = {for_job: handed.give_back() for for_job, handed in self._handed.items()}
                    done = done._replace(handed={key: at for key, at in given.items() if at is not None})
                report = pickle.dumps(done)
                try:
                    write_all(reports, len(report).to_bytes(HEADER, "big") + report)
                except BrokenPipeError:  # the worker died: record the success from here, as RQ's horse
                    self.record()
                    break
                self._unrecorded = None  # the worker records it, and sends the runs
                self._tally.sent()
                # Its last: exit now, not at the pipe's end, which never comes if a process forked while
                # the worker held the pipe (RQ's scheduler, restarted after an outage) keeps it open.
                if last:
                    break
        except BaseException:
            os._exit(1)
        os._exit(0)

    def run_handed(self, claimed: Claimed, more: int) -> Report:
        """In the horse: run the job handed over; its plain success left to report."""
        job, queue = self.adopt(claimed)
        self._unrecorded = self.run_one(job, queue, claimed)
        return self.report(1, False, None)

    def run(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        """In the horse, FastWorker's; a spare says STARTED first, as late as it can: the worker waits for
        it before it goes on, so as not to hold up the job's start on a busy CPU."""
        if self._say_started is not None:
            os.write(self._say_started, STARTED)
            self._say_started = None
        return super().run(job, queue, execution)

    def run_one(self, job: Job, queue: Queue, claimed: Claimed) -> Success | None:
        """In the horse: one job, as RQ's horse runs it."""
        if os.environ.get("RQ_WORKER_ID") != self.name:  # (each setenv keeps its string for good)
            os.environ["RQ_WORKER_ID"] = self.name
        os.environ["RQ_JOB_ID"] = job.id
        execution = self.executions[claimed.execution_id]
        success = self.run(job, queue, execution)
        if success is None:
            self.executions.pop(execution.id, None)
        return success

    def report(self, ran: int, spent: bool, claimed: Claimed | None) -> Report:
        """The horse's report after `ran` jobs: its unrecorded success, and its runs not sent."""
        success = self._unrecorded
        done = (success.job.ended_at, success.fields, success.job.func_name or "") if success else None
        return Report(ran, spent, done, claimed if success else None, self._tally.counts)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """Read the horse's report until it is whole (the horse then waits for its next job, or exits by
        itself: this process goes on at once) or the horse exits (a process the job started may hold the
        pipe open), under RQ's monitoring alarm; the exit status of one that exited first."""
        if self._report is None or self._horse_exit is None:  # RQ's path, or a stop before perform()
            return super().wait_for_horse()
        horse = self._horse
        if horse.read_report(self._report):  # it waits for its next job, or exits unwaited for
            self._kept = horse if horse.jobs != -1 else None
            self._horse_status = os.EX_OK
            return horse.pid, os.EX_OK, None
        status, rusage = exit_status(horse.exit, horse.pidfd)
        self._horse_status = status
        return horse.pid, status, rusage

    def drop_handed(self) -> None:
        """The next horse gets new connections, not those kept (a horse died with them, or Redis failed
        over): the fork server closes them all, and the idle horses that hold some are let go."""
        for idle in (self.spare_horse(), self._resting):
            if idle is not None:
                self.discard(idle)
        self._spare = self._resting = None
        self._returned, self._drop_all = {}, True

    def stops_in_outage(self, exc: RedisError, outage: OutageRetry) -> bool:
        self.drop_handed()
        return super().stops_in_outage(exc, outage)

    def kill_horse(self, sig: Any = signal.SIGKILL) -> None:
        """RQ's (the horse's process group); not once the horse has ended: its fork server reaped it, and
        its pid may be another process's."""
        if not self.horse_pid:  # no horse: a stop command must not kill this process group
            return
        if self._horse_exit is None or not ended(self._horse_exit):  # (None: RQ's own horse, or a stop
            super().kill_horse(sig)  # before perform())

    def discard(self, horse: Horse, wait: bool = True) -> None:
        """Kill a horse that has no job (it has nothing to lose), wait for its end (or not: its fork server
        reaps it), and close its pipes; the kept connections it had are closed."""
        self._returned[horse.kept] = None
        with suppress(ProcessLookupError):
            signal.pidfd_send_signal(horse.pidfd, signal.SIGKILL)
        if wait:
            exit_status(horse.exit, horse.pidfd)
        horse.close()

    def teardown(self) -> None:
        for idle in (self.spare_horse(), self._resting):
            if idle is not None:
                self.discard(idle)
        self._spare = self._resting = None
        self.forks.stop()
        super().teardown()
