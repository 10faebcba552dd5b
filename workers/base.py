"""The fast workers' engine: RQ's data model and semantics, in a fraction of RQ's round trips.

A job's start is one Lua script (`claim.lua`: pop, execution record, started registry, job and worker
state) and a plain success one more (result stream, finished registry, TTLs, cleanup): the keys and
fields RQ's own worker writes, so `rq info`, rq-dashboard, `rq requeue` and a stock `rq worker` on the
same queues all read them as RQ's. Everything else (failures, retries, `Retry` results, callbacks,
webhooks, repeats, rate limits, dependents, result_ttl=0, time-outs, stop commands) goes through RQ's
own code. `FastWorker` is what both fast workers share; `workers/forking.py` and
`workers/in_process.py` say where the job runs.
"""

from __future__ import annotations

import logging
import sys
import time
from base64 import b64decode
from datetime import datetime
from typing import Any
from uuid import uuid4

from redis.exceptions import RedisError
from rq.defaults import RQ_KEY_PREFIX
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, Retry
from rq.queue import Queue
from rq.results import Result
from rq.timeouts import JobTimeoutException
from rq.utils import get_version, now, utcformat
from rq.worker import WorkerStatus

from config.connection import reconnect, separate_client
from config.history import COUNTED_BY_WORKER
from config.outage import OutageRetry, is_outage
from config.settings import get_settings
from workers.allowed import allowed_functions, guarded
from workers.claims import (
    ARRIVING,
    CLAIM_SCRIPT,
    SUSPENDED,
    WHERE_NOWHERE,
    WHERE_UNKNOWN,
    Claimed,
    Popped,
    RecentPops,
    Success,
    as_mapping,
    claim_args,
    claim_as_it_arrives,
    idle_wait,
    lapsed,
)
from workers.paths import rq_path_reason
from workers.reporting import Reporting


class FastWorker(Reporting):
    """What both fast workers share: one script per job, RQ's own code for everything else. A job's
    heartbeat lasts the monitoring interval plus 15 s (RQ: plus 60 s), so that the job of a worker
    killed mid-job is found abandoned that much sooner."""

    in_process = False
    job_log_level = logging.INFO  # of the one line per job, as it ends
    heartbeat_grace = 15

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = allowed_functions(get_settings())
        if allowed is not None:  # only the registry's functions and the operator's (workers/allowed.py)
            self.job_class = guarded(self.job_class, allowed)
        self._step = self.connection.register_script(CLAIM_SCRIPT)
        self._idle_ttl_at: float | None = None  # when the worker's key last got its idle TTL
        self._unrecorded: Success | None = None
        self._queues = {queue.name: queue for queue in self.queues}  # by name: RQ's constructors cost
        # The blocking wait for a job has a connection of its own, closed before each fork: if this
        # process dies in that wait, no horse (or process a job left behind) holds the socket open,
        # which would make Redis hand the next job to a reader that is gone.
        self._waiting = separate_client(self.connection)
        self._pops = RecentPops()
        self.rq_path_reason = rq_path_reason(self, FastWorker)
        if self.rq_path_reason:
            self.log.info("Worker %s: RQ's own path for every job: %s", self.name, self.rq_path_reason)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop; a method replaced since the worker was made (a patch, a mock) counts too."""
        self.rq_path_reason = self.rq_path_reason or rq_path_reason(self, FastWorker)
        return super().work(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return super().get_heartbeat_ttl(job, working_time) - 60 + self.heartbeat_grace

    def check_for_suspension(self, burst: bool) -> None:
        """The claim does the suspension check that RQ's loop does before each job."""
        if self.rq_path_reason:
            super().check_for_suspension(burst)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, skipped where it adds nothing: a success waits to be recorded (that script
        writes the worker's idle TTL), or the idle TTL was written less than a second ago. A claim, or
        a heartbeat during a job, writes a shorter TTL: after those it goes through, or the worker's
        key could expire while it waits for the next job. Redis away: one line, and the worker carries on."""
        if timeout is None and pipeline is None and not self.rq_path_reason:
            fresh = self._idle_ttl_at is not None and time.monotonic() - self._idle_ttl_at < 1
            if fresh or self._unrecorded is not None:
                return
        with self.unless_away("no heartbeat"):
            if pipeline is None:  # one round trip (RQ's heartbeat alone is three)
                with self.connection.pipeline(transaction=False) as pipe:
                    self.beat(timeout, pipe)
                    pipe.execute()
            else:
                self.beat(timeout, pipeline)
            self._idle_ttl_at = time.monotonic() if timeout is None else None

    def set_shutdown_requested_date(self) -> None:
        with self.unless_away("the stop asked for is not in its entry"):
            super().set_shutdown_requested_date()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if self.rq_path_reason:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        return self.claim_or_wait(timeout, max_idle_time)

    def claim_or_wait(self, timeout: int | None, max_idle_time: int | None) -> tuple[Job, Queue] | None:
        """Claim the first job of the queues (the script records the last one's success), else wait for one;
        a job popped before an outage is claimed once Redis is back."""
        burst, idle_since = timeout is None, time.monotonic()
        outage = OutageRetry(self.log, f"Worker {self.name}")
        popped: Popped | None = None  # taken off its queue by the wait, not claimed yet
        while True:
            try:
                claimed, popped = self.claim(popped), None
                if self._pops.after_outage:  # after the claim, which records a success held back
                    with self.unless_away("jobs a failover lost are left to the orphan pass"):
                        if self._pops.put_back_lost(self.connection, self.log) and not claimed:
                            continue  # to claim them
                if claimed == SUSPENDED:  # RQ's check: wait while suspended, or stop a burst
                    super().check_for_suspension(burst)
                    continue
                if claimed or burst or self._stop_requested:
                    return claimed or None
                self.go_idle()
                assert timeout is not None
                popped = self.wait_for_job(idle_wait(timeout, max_idle_time, idle_since))
                idle = time.monotonic() - idle_since
                if popped is None and max_idle_time is not None and idle >= max_idle_time:
                    return None
            except RedisError as exc:
                popped = popped and popped._replace(where=WHERE_UNKNOWN)  # its claim may not have happened
                self._pops.after_outage = True
                if self.stops_in_outage(exc, outage):
                    return None

    def stops_in_outage(self, exc: RedisError, outage: OutageRetry) -> bool:
        """Wait out Redis being away (or refusing writes), unless a stop was asked for: then True. Any
        other Redis error is raised."""
        if not is_outage(exc):
            raise exc
        self._state = WorkerStatus.IDLE  # nothing claimed: a SIGTERM from now on stops at once
        reconnect(self.connection)
        reconnect(self._waiting)
        if self._stop_requested:
            return True
        outage.wait(exc)
        return False

    def go_idle(self) -> None:
        """What RQ's worker does before it waits for a job, and the next horse made ready."""
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        self.record()  # the runs counted: an idle worker holds none back
        self.heartbeat()
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # (it may fork a scheduler: before the spare's pipes exist)
        self.get_ready()

    def wait_for_job(self, timeout: int) -> Popped | None:
        """Block until a job arrives: on one queue claimed with it, on several popped (BLPOP) to claim."""
        keys = [queue.key for queue in self._ordered_queues]
        if len(keys) == 1 and get_version(self.connection) >= (6, 2, 0):
            return self.wait_and_claim(keys[0], timeout)
        try:
            key, job_id = Queue.lpop(keys, timeout, connection=self._waiting)
        except DequeueTimeout:
            return None
        return self._pops.note(Popped(key.decode(), job_id.decode(), WHERE_NOWHERE))

    def wait_and_claim(self, key: str, timeout: int) -> Popped | None:
        """Redis claims the queue's next job as it arrives, no round trip here first (workers/claims.py)."""
        execution_id = uuid4().hex
        claim = claim_args(self, execution_id, ARRIVING, WHERE_NOWHERE)
        reply = claim_as_it_arrives(self._waiting, self._step, key, timeout, claim)
        if not reply or lapsed(self.connection, reply, execution_id, self.log):
            return None
        return Popped(key, reply[2].decode(), WHERE_NOWHERE, (execution_id, reply))

    def claim(self, popped: Popped | None = None) -> Any:
        """Record the last success, and start the next job (or the one popped, or claimed as it arrived):
        (job, queue), SUSPENDED, or None."""
        if popped and popped.claimed:
            execution_id, reply = popped.claimed
            self._idle_ttl_at = None  # the claim gave the worker's key the job's heartbeat TTL
        else:
            execution_id = uuid4().hex
            keys = [popped.queue_key] if popped else [queue.key for queue in self._ordered_queues]
            where = popped.where if popped else WHERE_NOWHERE
            claim = claim_args(self, execution_id, popped.job_id if popped else "", where)
            self._state = WorkerStatus.BUSY  # a SIGTERM now asks for a stop after the job it may claim
            reply = self.step(keys, claim)
            reply = self.step(keys, claim) if reply is None else reply
        if not reply or reply[0] != b"job":
            self._state = WorkerStatus.IDLE
            return SUSPENDED if reply else None
        self._state = WorkerStatus.BUSY
        started = datetime.fromisoformat(reply[4].decode())
        claimed = Claimed(reply[1].decode(), reply[2].decode(), reply[3], execution_id, started)
        self.hand_over(claimed)
        job, queue = self.adopt(claimed)
        self.reorder_queues(reference_queue=queue)
        shown = f"{job.description} ({job.id})" if self.log_job_description else job.id
        self.job_line("Worker %s: %s: %s", self.name, queue.name, shown)  # RQ's line, as it takes a job
        return job, queue

    def job_line(self, message: str, *args: Any) -> None:
        """A line per job as it starts and ends, at job_log_level (RQ logs both with log.info)."""
        (self.log.info if self.job_log_level >= logging.INFO else self.log.debug)(message, *args)

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
        setattr(job, COUNTED_BY_WORKER, True)
        execution = Execution(claimed.execution_id, claimed.job_id, self.connection, self.name)
        execution.created_at = execution.last_heartbeat = claimed.started
        execution._job = job
        self.executions[claimed.execution_id] = execution
        return job, queue

    def step(self, keys: list[str], claim: list[Any], send_runs: bool = False) -> Any:
        """Run the script: add the runs counted (when due, or `send_runs`), record the unrecorded
        success, and claim if `keys` name queues. None when the success went to RQ's own handling
        instead (the job has dependents), with nothing claimed."""
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
        runs = self._tally.due(send_runs)
        try:
            reply = self._step(keys, [len(record), *record, len(runs), *runs, *claim])
        except BaseException:
            self._unrecorded = success  # a connection error: record it with the next script
            raise
        if runs:
            self._tally.sent()
        claimed = bool(reply) and reply[0] == b"job"
        if claimed:
            self._idle_ttl_at = None  # the claim gave the worker's key the job's heartbeat TTL
        if success:
            self.executions.pop(success.execution.id, None)
            if reply and reply[0] == b"dependents":
                self.hand_to_rq(success)
                return None
            if not claimed:
                self._idle_ttl_at = time.monotonic()  # the record wrote the idle TTL, and nothing after it
            self._tally.add(success.job, "succeeded", time.time())
            self.job_line("Worker %s: %s: Job OK (%s)", self.name, success.queue.name, success.job.id)
        return reply

    def record(self) -> None:
        """Record the unrecorded success and send the runs counted now (before a wait, sweep or stop)."""
        if self._unrecorded:
            self.step([], [])
        if self._tally.counts:
            self.step([], [], send_runs=True)

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
        with self.unless_away("no maintenance now"):
            self.record()
            super().run_maintenance_tasks()

    def teardown(self) -> None:
        try:
            self.record()
        except RedisError as exc:
            lost = (
                f"job {self._unrecorded.job.id} finished unrecorded" if self._unrecorded else "runs uncounted"
            )
            self.log.error("Worker %s: Redis error as it stops (%s): %s", self.name, exc, lost)
        try:
            super().teardown()
        except RedisError as exc:
            self.log.warning(
                "Worker %s: Redis error as it stops (%s): its entry expires by itself", self.name, exc
            )

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the claimed job; a plain success is recorded by the next script, at the latest when
        the worker is about to wait, sweep or stop. An end that Redis can't take is found abandoned later."""
        if self.rq_path_reason:
            setattr(job, COUNTED_BY_WORKER, True)
            return self.execute_as_rq(job, queue)
        execution = next(iter(self.executions.values()))
        with self.unless_away(f"job {job.id} ended unrecorded"):
            self._unrecorded = self.perform(job, queue, execution)
        if self._unrecorded is None:
            self.executions.pop(execution.id, None)
            with self.unless_away("its state is not idle yet"):
                self.set_state(WorkerStatus.IDLE)
        self._state = WorkerStatus.IDLE  # in Redis too, once recorded

    def perform(self, job: Job, queue: Queue, execution: Execution) -> Success | None:
        raise NotImplementedError

    def execute_as_rq(self, job: Job, queue: Queue) -> None:
        """RQ's own way to run a job (its Worker's or its SimpleWorker's), for the RQ path."""
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
                    execution_id=execution.id,
                    execution_started_at=execution.created_at,
                    execution_ended_at=job.ended_at,
                )
                result.serializer = job.serializer  # set, not passed: RQ's check of it costs 7 us a job
                fields = [item for pair in result.serialize().items() for item in pair]
                return Success(job, queue, execution, fields)
            self._finalize_success(job, queue, execution, value)
        except:  # noqa: E722 (RQ's own catch-all: a BaseException from the job fails it too)
            self._finalize_failure(job, queue, execution, sys.exc_info())
        return None
