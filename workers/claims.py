"""What the fast workers hand the claim script (`claim.lua`) and get back from it."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

SUSPENDED = "suspended"
CLAIM_SCRIPT = (Path(__file__).parent / "claim.lua").read_text()


class Success(NamedTuple):
    """A plain success that the next script records: the job, its queue and execution, its result."""

    job: Job
    queue: Queue
    execution: Execution
    fields: list[Any]  # the result stream entry, as XADD's field-value list


# Where a popped job id sits until its claim (claim.lua's ARGV): nowhere (BLPOP), in the queue's
# intermediate list (BLMOVE), or not known (popped before an outage: maybe back in its queue).
WHERE_NOWHERE, WHERE_INTERMEDIATE, WHERE_UNKNOWN = "0", "1", "2"


class Popped(NamedTuple):
    """A job id that a blocking wait took off a queue, to claim."""

    queue_key: str
    job_id: str
    where: str


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


def as_mapping(flat: list[Any]) -> dict[Any, Any]:
    """A field-value list (HGETALL's reply, XADD's arguments) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
