"""The toolkit's fast workers: RQ's data model and semantics, in a fraction of RQ's round trips.

A job's start is one Lua script (pop, execution record, started registry, job and worker state) and a
plain success one more (result stream, finished registry, TTLs, cleanup): the keys and fields RQ's own
worker writes, so `rq info`, rq-dashboard, `rq requeue` and a stock `rq worker` on the same queues all
read them as RQ's. Everything else (failures, retries, `Retry` results, callbacks, webhooks, repeats,
rate limits, dependents, result_ttl=0, time-outs, stop commands) goes through RQ's own code.

- `InProcessWorker` runs jobs in its own process, like RQ's SimpleWorker.
- `ForkingWorker` runs each job in a fresh forked work-horse, like RQ's Worker; the horse hands a
  plain success back to the worker through a pipe, and the worker records it.
"""

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
from base64 import b64decode
from contextlib import suppress
from datetime import datetime
from typing import Any, NamedTuple
from uuid import uuid4

import redis.exceptions
from rq.defaults import DEFAULT_WORKER_TTL, RQ_KEY_PREFIX
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, Retry
from rq.queue import Queue
from rq.results import Result
from rq.timeouts import JobTimeoutException
from rq.utils import get_version, now, utcformat
from rq.worker import WorkerStatus

from config import rq_classes

SUSPENDED = "suspended"
STARTED = b"S"  # what a work-horse says as it starts its job, before it reports the outcome

# One script per job: record the last job's plain success (if any), then claim the next job (if KEYS
# names queues). ARGV: the number of success arguments, the success arguments, the claim arguments.
#
# Success: prefix, worker, job id, execution id, queue, ended (RQ's date format), ended (s), result TTL,
# seconds worked, the worker's TTL, then the result's stream fields. A job with dependents gets
# {'dependents'} and nothing written: RQ's own success handling enqueues them. A success recorded
# already (a reply lost on the way back) is not recorded twice.
#
# Claim (KEYS: the queues, in order): prefix, worker, now (s), now (RQ's date format), execution id, the
# id a blocking wait popped already ('' to pop here), whether that one sits in KEYS[1]'s intermediate
# list, then the heartbeat rule: monitoring interval, grace, in-process flag, RQ's default worker TTL.
# Replies {} (no job), {'suspended'}, or {'job', queue, job id, the job's hash}.
STEP = """
local function recorded(results, eid)
  local last = redis.call('XREVRANGE', results, '+', '-', 'COUNT', 1)[1]
  if not last then return false end
  for i = 1, #last[2], 2 do
    if last[2][i] == 'execution_id' then return last[2][i + 1] == eid end
  end
  return false
end

local function record(a)
  local prefix, worker, id, eid, queue, stamp, ttl = a[1], a[2], a[3], a[4], a[5], a[6], tonumber(a[8])
  local jobkey = prefix .. ':job:' .. id
  if redis.call('EXISTS', jobkey .. ':dependents') == 1 then return false end
  local results = prefix .. ':results:' .. id
  if recorded(results, eid) then return true end
  local wkey = prefix .. ':worker:' .. worker
  redis.call('HINCRBY', wkey, 'successful_job_count', 1)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', a[9])
  if redis.call('EXISTS', jobkey) == 1 then
    redis.call('HSET', jobkey, 'status', 'finished', 'ended_at', stamp, 'last_heartbeat', stamp)
    redis.call('XADD', results, 'MAXLEN', 10, '*', unpack(a, 11))
    if ttl == -1 then
      redis.call('PERSIST', results)
      redis.call('ZADD', prefix .. ':finished:' .. queue, '+inf', id)
    else
      redis.call('EXPIRE', results, ttl)
      redis.call('ZADD', prefix .. ':finished:' .. queue, math.floor(tonumber(a[7])) + ttl, id)
      redis.call('EXPIRE', jobkey, ttl)
      redis.call('EXPIRE', jobkey .. ':dependents', ttl)
      redis.call('EXPIRE', prefix .. ':job::' .. id .. ':dependencies', ttl)  -- sic: RQ's key
    end
  end
  local composite = id .. ':' .. eid
  redis.call('DEL', prefix .. ':execution:' .. composite)
  redis.call('ZREM', prefix .. ':wip:' .. queue, composite)
  redis.call('ZREM', prefix .. ':executions:' .. id, eid)
  redis.call('SREM', wkey .. ':executions', composite)
  redis.call('HSET', wkey, 'state', 'idle', 'last_heartbeat', stamp)
  redis.call('EXPIRE', wkey, a[10])
  return true
end

local function claim(a)
  local prefix, worker, now, stamp, eid, id = a[1], a[2], tonumber(a[3]), a[4], a[5], a[6]
  local qkey
  if id ~= '' then
    qkey = KEYS[1]
    if a[7] == '1' then redis.call('LREM', qkey .. ':intermediate', 1, id) end
    if redis.call('EXISTS', prefix .. ':job:' .. id) == 0 then return {} end
  else
    if redis.call('EXISTS', prefix .. ':suspended') == 1 then return {'suspended'} end
    for i = 1, #KEYS do
      while true do
        id = redis.call('LPOP', KEYS[i])
        if not id then break end
        if redis.call('EXISTS', prefix .. ':job:' .. id) == 1 then qkey = KEYS[i] break end
      end
      if qkey then break end
    end
    if not qkey then return {} end
  end
  local jobkey = prefix .. ':job:' .. id
  local interval, grace, default_ttl = tonumber(a[8]), tonumber(a[9]), tonumber(a[11])
  local timeout = tonumber(redis.call('HGET', jobkey, 'timeout'))
  local ttl
  if a[10] == '1' then
    if timeout == -1 then ttl = default_ttl else ttl = (timeout or default_ttl) + grace end
  elseif timeout and timeout > 0 then
    ttl = math.floor(math.min(timeout, interval)) + grace
  else
    ttl = interval + grace
  end
  local second = math.floor(now)
  local composite = id .. ':' .. eid
  local execution = prefix .. ':execution:' .. composite
  redis.call('HSET', execution, 'id', eid, 'job_id', id, 'created_at', a[3], 'last_heartbeat', a[3],
    'worker_name', worker)
  redis.call('EXPIRE', execution, ttl)
  redis.call('ZADD', prefix .. ':executions:' .. id, second + ttl + 60, eid)
  redis.call('EXPIRE', prefix .. ':executions:' .. id, ttl + 60)
  local queue = string.sub(qkey, #prefix + 8)
  redis.call('ZADD', prefix .. ':wip:' .. queue, second + ttl, composite)
  local wkey = prefix .. ':worker:' .. worker
  redis.call('SADD', wkey .. ':executions', composite)
  redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', stamp)
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', wkey .. ':executions', ttl)
  redis.call('HSET', jobkey, 'last_heartbeat', stamp, 'status', 'started', 'started_at', stamp,
    'worker_name', worker)
  redis.call('PERSIST', jobkey)
  return {'job', queue, id, redis.call('HGETALL', jobkey)}
end

local n = tonumber(ARGV[1])
if n > 0 and not record({unpack(ARGV, 2, n + 1)}) then return {'dependents'} end
if #KEYS == 0 then return {} end
return claim({unpack(ARGV, n + 2)})
"""


class Success(NamedTuple):
    """A plain success that the next script records: the job, its queue and execution, its result."""

    job: Job
    queue: Queue
    execution: Execution
    fields: list[Any]  # the result stream entry, as XADD's field-value list


class Claimed(NamedTuple):
    """A job as the claim script handed it over: enough to rebuild it in a work-horse."""

    queue: str
    job_id: str
    fields: list[bytes]  # the job's hash, as HGETALL's field-value list
    execution_id: str
    started: datetime


class FastWorker(rq_classes.Worker):
    """What both fast workers share: one script per job, RQ's own code for everything else."""

    in_process = False
    job_log_level = logging.INFO  # of the one line per job, as it ends

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step = self.connection.register_script(STEP)
        self._beaten = 0.0
        self._unrecorded: Success | None = None
        self._queues: dict[str, Queue] = {}  # by name, made once: RQ's constructors are not cheap
        # The blocking wait for a job has a connection of its own, closed before each fork: if this
        # process dies in that wait, no horse (or process a job left behind) holds the socket open,
        # which would make Redis hand the next job to a reader that is gone.
        pool = self.connection.connection_pool
        self._waiting = redis.Redis(
            connection_pool=type(pool)(pool.connection_class, **pool.connection_kwargs)
        )

    # The claim does the suspension check and the heartbeat that RQ's loop does around each job.
    def check_for_suspension(self, burst: bool) -> None:
        pass

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if timeout is None and pipeline is None and time.monotonic() - self._beaten < 1:
            return
        self._beaten = time.monotonic()
        super().heartbeat(timeout, pipeline)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Claim the first job of the queues, in the script that records the last one's success; else
        wait for one as RQ does (BLMOVE into the queue's intermediate list for one queue, BLPOP for
        several) and claim that."""
        burst = timeout is None
        idle_since = time.monotonic()
        backoff = 1.0
        while True:
            try:
                claimed = self.claim()
                if claimed == SUSPENDED:
                    super().check_for_suspension(burst)  # waits while suspended, or stops a burst
                    continue
                if claimed or burst or self._stop_requested:
                    return claimed or None
                self.go_idle()
                assert timeout is not None
                wait = timeout
                if max_idle_time is not None:
                    wait = max(1, min(wait, int(max_idle_time - (time.monotonic() - idle_since))))
                popped = self.wait_for_job(wait)
                if popped is None:
                    if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                        return None
                    continue
                claimed = self.claim(*popped)
                if claimed:
                    return claimed
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self._state = WorkerStatus.IDLE  # nothing claimed: a SIGTERM from now on stops at once
                if self._stop_requested:
                    return None
                self.log.error(
                    "Worker %s: Redis is unreachable (%s); retrying in %.0f s", self.name, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * self.exponential_backoff_factor, self.max_connection_wait_time)

    def go_idle(self) -> None:
        """What RQ's worker does before it waits for a job, and the next horse made ready."""
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        self.heartbeat()
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # (it may fork a scheduler: before the spare's pipes exist)
        self.get_ready()

    def wait_for_job(self, timeout: int) -> tuple[str, str, bool] | None:
        """Block until a job id arrives: (queue key, job id, whether it went to the intermediate list)."""
        keys = [queue.key for queue in self._ordered_queues]
        try:
            if len(keys) == 1 and get_version(self.connection) >= (6, 2, 0):
                got = Queue.lmove(self._waiting, keys[0], timeout)
                return keys[0], got[1].decode(), True
            key, job_id = Queue.lpop(keys, timeout, connection=self._waiting)
            return key.decode(), job_id.decode(), False
        except DequeueTimeout:
            return None

    def claim(self, queue_key: str = "", job_id: str = "", intermediate: bool = False) -> Any:
        """Record the last success, and start the next job (or the one already popped): (job, queue),
        SUSPENDED, or None."""
        started = now()
        execution_id = uuid4().hex
        keys = [queue_key] if queue_key else [queue.key for queue in self._ordered_queues]
        claim = [
            RQ_KEY_PREFIX,
            self.name,
            started.timestamp(),
            utcformat(started),
            execution_id,
            job_id,
            int(intermediate),
            self.job_monitoring_interval,
            self.heartbeat_grace,
            int(self.in_process),
            DEFAULT_WORKER_TTL,
        ]
        self._state = WorkerStatus.BUSY  # a SIGTERM now asks for a stop after the job it may claim
        reply = self.step(keys, claim)
        if reply is None:
            reply = self.step(keys, claim)
        if not reply or reply[0] != b"job":
            self._state = WorkerStatus.IDLE
            return SUSPENDED if reply else None
        claimed = Claimed(reply[1].decode(), reply[2].decode(), reply[3], execution_id, started)
        self.hand_over(claimed)
        job, queue = self.adopt(claimed)
        self.reorder_queues(reference_queue=queue)
        self.log.debug("Worker %s: %s: %s", self.name, claimed.queue, claimed.job_id)
        return job, queue

    def hand_over(self, claimed: Claimed) -> None:
        """Start the job somewhere before this process reads it (the in-process worker doesn't)."""

    def adopt(self, claimed: Claimed) -> tuple[Job, Queue]:
        """The job and queue of a claim, with its execution as this worker's current one."""
        job = self.job_class(claimed.job_id, connection=self.connection, serializer=self.serializer)
        job.restore(as_mapping(claimed.fields))
        queue = self._queues.get(claimed.queue)
        if queue is None:
            queue = self._queues[claimed.queue] = self.queue_class(
                claimed.queue,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        execution = Execution(claimed.execution_id, claimed.job_id, self.connection, self.name)
        execution.created_at = execution.last_heartbeat = claimed.started
        execution._job = job
        self.executions[claimed.execution_id] = execution
        return job, queue

    def step(self, keys: list[str], claim: list[Any]) -> Any:
        """Run the script: record the unrecorded success, and claim if `keys` name queues. None when
        the success went to RQ's own handling instead (the job has dependents), with nothing claimed."""
        success, self._unrecorded = self._unrecorded, None
        record: list[Any] = []
        if success:
            job, queue, execution = success.job, success.queue, success.execution
            assert job.started_at and job.ended_at
            record = [
                RQ_KEY_PREFIX,
                self.name,
                job.id,
                execution.id,
                queue.name,
                utcformat(job.ended_at),
                job.ended_at.timestamp(),
                job.get_result_ttl(self.default_result_ttl),
                (job.ended_at - job.started_at).total_seconds(),
                self.worker_ttl + 60,
                *success.fields,
            ]
        try:
            reply = self._step(keys, [len(record), *record, *claim])
        except BaseException:
            self._unrecorded = success  # a connection error: record it with the next script
            raise
        if success or (reply and reply[0] == b"job"):
            self._beaten = time.monotonic()  # the script wrote the worker's heartbeat
        if success:
            self.executions.pop(success.execution.id, None)
            if reply and reply[0] == b"dependents":
                self.hand_to_rq(success)
                return None
            self.log.log(
                self.job_log_level,
                "Worker %s: %s: Job OK (%s)",
                self.name,
                success.queue.name,
                success.job.id,
            )
        return reply

    def record(self) -> None:
        """Record the unrecorded success now (the worker is about to do something else)."""
        if self._unrecorded:
            self.step([], [])

    def hand_to_rq(self, success: Success) -> None:
        """RQ's own success handling (the job has dependents), with the result the horse sent."""
        entry = as_mapping(success.fields)
        job = success.job
        job._result = (
            job.serializer.loads(b64decode(entry["return_value"])) if "return_value" in entry else None
        )
        self.executions[success.execution.id] = success.execution
        self.handle_job_success(job, success.queue, success.queue.started_job_registry, success.execution)
        self.set_state(WorkerStatus.IDLE)

    def run_maintenance_tasks(self) -> None:
        self.record()
        super().run_maintenance_tasks()

    def teardown(self) -> None:
        try:
            self.record()
        except redis.exceptions.RedisError as exc:
            assert self._unrecorded is not None
            job_id = self._unrecorded.job.id
            self.log.error(
                "Worker %s: Redis error as it stops (%s): job %s finished unrecorded", self.name, exc, job_id
            )
        try:
            super().teardown()
        except redis.exceptions.RedisError as exc:
            self.log.warning(
                "Worker %s: Redis error as it stops (%s): its entry expires by itself", self.name, exc
            )

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the claimed job; a plain success is recorded by the next script, at the latest when
        the worker is about to wait, sweep or stop."""
        execution = next(iter(self.executions.values()))
        self._unrecorded = self.perform(job, queue, execution)
        if self._unrecorded is None:
            self.executions.pop(execution.id, None)
            self.set_state(WorkerStatus.IDLE)
        self._state = WorkerStatus.IDLE  # in Redis too, once recorded

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        raise NotImplementedError

    def get_ready(self) -> None:
        """Prepare, while idle, for the next job."""

    def plain(self, job: Job, value: Any) -> bool:
        """Whether the one-script success applies: nothing RQ's success handling would do beyond it
        (a result kept for a while or for ever; RQ deletes the job for 0)."""
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        return not (
            isinstance(value, Retry)
            or not (result_ttl == -1 or result_ttl > 0)
            or job._success_callback_name
            or job.webhooks
            or job.repeats_left
            or job.rate_limit_key
        )

    def run(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        """Perform the job under its time-out, as RQ's perform_job does; a plain success comes back to
        be recorded, anything else goes through RQ's own handling here."""
        try:
            job.started_at = execution.created_at
            timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                value = job.perform()
            job.ended_at = now()
            if self.plain(job, value):
                result = Result(
                    job.id,
                    Result.Type.SUCCESSFUL,
                    self.connection,
                    return_value=value,
                    worker_name=self.name,
                    serializer=job.serializer,
                    execution_id=execution.id,
                    execution_started_at=execution.created_at,
                    execution_ended_at=job.ended_at,
                )
                fields = [item for pair in result.serialize().items() for item in pair]
                return Success(job, queue, execution, fields)
            self._finalize_success(job, queue, execution, value)
        except:  # noqa: E722 (RQ's own catch-all: a BaseException from the job fails it too)
            self._finalize_failure(job, queue, execution, sys.exc_info())
        return None


class InProcessWorker(FastWorker):
    """Runs each job in the worker's own process (no isolation between jobs, as RQ's SimpleWorker):
    for trusted, small jobs. A job's heartbeat lasts its time-out plus the grace."""

    in_process = True
    job_log_level = logging.DEBUG  # at thousands of jobs a second, a line each would cost a tenth

    def kill_horse(self, sig: Any = None) -> None:
        """No horse to kill (as RQ's SimpleWorker): a stop command must not kill this process group."""

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        return self.run(job, queue, execution)


class Horse(NamedTuple):
    """A forked work-horse waiting for its job: its pid, and the pipes to hand the job over and to
    read the outcome back."""

    pid: int
    jobs: int
    reports: int


class ForkingWorker(FastWorker):
    """Runs each job in a fresh work-horse forked for it (a crash, a leak or a memory cap stays in
    there), monitored as RQ's Worker does: heartbeats, the kill after time-out + 60 s, stop commands.
    While idle it keeps the next horse forked and waiting, so a job starts without waiting for a fork.
    A horse sends a plain success back through a pipe, and the worker records it."""

    _spare: Horse | None = None
    _rehearsal: Claimed | None = None
    _horse: Horse
    _horse_exit: int | None = None  # a pidfd: readable once the horse has exited
    _report: bytearray | None = None
    _horse_status: int | None = None

    def get_ready(self) -> None:
        if self._spare is None:
            self._spare = self.fork_horse(spare=True)
            self.rehearse()

    def rehearse(self) -> None:
        """Go through the start of a job (the last one) without running it. After a fork, the first
        write to each page the two processes share makes a copy of it: done while idle, those copies
        are not made on the next job's way in (a millisecond or so here, in each process)."""
        if self._rehearsal is None:
            return
        self._step([], [0])  # a round trip that writes nothing
        self.adopt(self._rehearsal)
        self.executions.clear()

    def hand_over(self, claimed: Claimed) -> None:
        """Send the job to the waiting horse at once (or to one forked now)."""
        self._rehearsal = claimed
        spare, self._spare = self._spare, None
        horse = spare or self.fork_horse(spare=False)
        message = pickle.dumps(claimed)
        message = len(message).to_bytes(8, "big") + message
        try:
            write_all(horse.jobs, message)
        except BrokenPipeError:  # the waiting horse died (killed by hand?): fork one for this job
            self.discard(horse)
            horse = self.fork_horse(spare=False)
            write_all(horse.jobs, message)
        os.close(horse.jobs)
        self._horse, self._horse_pid = horse, horse.pid
        if horse is spare:
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
            os.close(horse.reports)
        report, self._report = self._report, None
        if not report or self._horse_status != os.EX_OK:
            return None
        job.ended_at, fields, func_name = pickle.loads(report)
        module = func_name.rpartition(".")[0]
        if module not in sys.modules:
            with suppress(Exception):  # import it here, once, for every later horse
                importlib.import_module(module)
        return Success(job, queue, execution, fields)

    def fork_horse(self, spare: bool) -> Horse:
        """A horse waiting for its job; a spare one (forked while idle) rehearses, and says when it
        starts the job."""
        self._waiting.connection_pool.disconnect()
        jobs_read, jobs_write = os.pipe()
        reports_read, reports_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setpgrp()
            os.close(jobs_write)
            os.close(reports_read)
            self.main_work_horse_on(jobs_read, reports_write, spare)
        os.close(jobs_read)
        os.close(reports_write)
        return Horse(pid, jobs_write, reports_read)

    def main_work_horse_on(self, jobs: int, reports: int, spare: bool) -> None:
        """The horse: wait for its job, run it; send a plain success to the worker, handle anything
        else as RQ. No job (the worker stopped, or died) and it just exits."""
        gc.freeze()  # a collection now leaves the pages shared with the worker alone
        self.setup_work_horse_signals()
        self._is_horse = True
        try:
            if spare:
                self.rehearse()
            size = read_exactly(jobs, 8)
            if len(size) < 8:
                os._exit(0)
            self.executions.clear()
            job, queue = self.adopt(pickle.loads(read_exactly(jobs, int.from_bytes(size, "big"))))
            os.environ["RQ_WORKER_ID"], os.environ["RQ_JOB_ID"] = self.name, job.id
            if spare:
                os.write(reports, STARTED)
            success = self.run(job, queue, next(iter(self.executions.values())))
            if success:
                try:
                    write_all(reports, pickle.dumps((job.ended_at, success.fields, job.func_name)))
                except BrokenPipeError:  # the worker died: record the success from here, as RQ's horse
                    self._unrecorded = success
                    self.record()
        except BaseException:
            os._exit(1)
        os._exit(0)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """Read the horse's report until it ends or the horse exits (a process the job started may
        hold the pipe open), under RQ's monitoring alarm; then reap the horse."""
        assert self._report is not None and self._horse_exit is not None
        reports = self._horse.reports
        poller = select.poll()
        poller.register(reports, select.POLLIN)
        poller.register(self._horse_exit, select.POLLIN)
        while True:
            if reports in {fd for fd, _ in poller.poll()}:
                if chunk := os.read(reports, 65536):
                    self._report += chunk
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


def as_mapping(flat: list[Any]) -> dict[Any, Any]:
    """A field-value list (HGETALL's reply, XADD's arguments) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


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
