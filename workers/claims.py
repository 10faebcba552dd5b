"""What the fast workers hand the claim script (`claim.lua`) and get back from it."""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from redis import Redis
from redis.exceptions import NoScriptError
from rq.defaults import DEFAULT_WORKER_TTL, RQ_KEY_PREFIX
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now, utcformat

from config.put_back import put_back

SUSPENDED = "suspended"
CLAIM_SCRIPT = (Path(__file__).parent / "claim.lua").read_text()


class Success(NamedTuple):
    """A plain success that the next script records: the job, its queue and execution, its result."""

    job: Job
    queue: Queue
    execution: Execution
    fields: list[Any]  # the result stream entry, as XADD's field-value list


# Where a popped job id sits until its claim (claim.lua's ARGV): nowhere (BLPOP), or not known (popped
# before an outage: maybe back in its queue).
WHERE_NOWHERE, WHERE_UNKNOWN = "0", "2"
LATE = 1.0  # seconds: a claim read later than this is checked before it runs (lapsed)
ARRIVING = "*"  # claim.lua's job id for the one its BLMOVE moves into the worker's own list


class Popped(NamedTuple):
    """A job id that a blocking wait took off a queue, to claim; or claimed as it arrived (the execution
    id, and the claim script's reply)."""

    queue_key: str
    job_id: str
    where: str
    claimed: tuple[str, Any] | None = None


class RecentPops:
    """The last jobs the worker's blocking wait popped off several queues (BLPOP: on no list until
    their claim). A failover can leave the new master with a job's pop and not the claim that followed
    on the old one: queued on no list, which the orphan pass (jobs/orphans.py) finds in two minutes or
    so. Once past an outage, the worker puts those jobs back at once (config/put_back.py checks each)."""

    def __init__(self, size: int = 256) -> None:
        self.pops: deque[Popped] = deque(maxlen=size)
        self.after_outage = False

    def note(self, popped: Popped) -> Popped:
        self.pops.append(popped)
        return popped

    def put_back_lost(self, connection: Redis, log: logging.Logger) -> int:
        """Put back the ones that are queued on no list now, in one round trip; how many."""
        self.after_outage = False
        prefix = len(Queue.redis_queue_namespace_prefix)
        with connection.pipeline(transaction=False) as pipe:
            for popped in self.pops:
                put_back(connection, popped.job_id, popped.queue_key[prefix:], client=pipe)
            replies = pipe.execute()
        for popped, reply in zip(self.pops, replies, strict=True):
            if reply:
                log.warning("Job %s: popped before an outage, not claimed after it: put back", popped.job_id)
        return sum(replies)


def idle_wait(timeout: int, max_idle_time: int | None, idle_since: float) -> int:
    """How long to block for a job: RQ's timeout, cut to what is left of max_idle_time."""
    if max_idle_time is None:
        return timeout
    return max(1, min(timeout, int(max_idle_time - (time.monotonic() - idle_since))))


class Claimed(NamedTuple):
    """A job as the claim script handed it over: enough to rebuild it in a work-horse."""

    queue: str
    job_id: str
    fields: list[bytes]  # the job's hash, as HGETALL's field-value list
    execution_id: str
    started: datetime


def claim_args(worker: Any, execution_id: str, job_id: str, where: str) -> list[Any]:
    """claim.lua's claim arguments for a fast worker, at this time."""
    started = now()
    return [
        RQ_KEY_PREFIX,
        worker.name,
        started.timestamp(),
        utcformat(started),
        execution_id,
        job_id,
        where,
        worker.job_monitoring_interval,
        worker.heartbeat_grace,
        int(worker.in_process),
        DEFAULT_WORKER_TTL,
    ]


def claim_as_it_arrives(waiting: Redis, script: Any, key: str, timeout: int, claim: list[Any]) -> Any:
    """BLMOVE the queue's next job into the worker's own list (claim ARGV 2: the worker's name), and the
    claim script (`claim`: its arguments, ARRIVING for the job) in the same write: its reply."""
    keys, args = [key, f"{RQ_KEY_PREFIX}:worker:{claim[1]}:popped"], [0, 0, *claim]
    with waiting.pipeline(transaction=False) as pipe:
        pipe.blmove(keys[0], keys[1], timeout, "LEFT", "RIGHT")
        script(keys=keys, args=args, client=pipe)
        try:
            return pipe.execute()[1]
        except NoScriptError:  # Redis restarted in the wait (redis-py sent it again): the script alone claims
            return script(keys=keys, args=args, client=waiting)  # what the BLMOVE moved (loading itself)


def lapsed(connection: Redis, reply: Any, execution_id: str, log: logging.Logger) -> bool:
    """Whether a claim made as the job arrived came back too late to run: read over LATE s after Redis
    made it (the worker frozen, its host cut off), and its execution gone (the lease lapsed: the job is
    RQ's to fail or retry as abandoned, maybe running elsewhere already)."""
    late = (now() - datetime.fromisoformat(reply[4].decode())).total_seconds()
    if late < LATE or connection.exists(f"{RQ_KEY_PREFIX}:execution:{reply[2].decode()}:{execution_id}"):
        return False
    log.warning("Job %s: claimed %.0f s ago, its lease lapsed since: not run here", reply[2].decode(), late)
    return True


def as_mapping(flat: list[Any]) -> dict[Any, Any]:
    """A field-value list (HGETALL's reply, XADD's arguments) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
