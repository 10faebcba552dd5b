"""Jobs that a worker's blocking pop took and never received, found and put back on their queue.

A worker on several queues waits in BLPOP. If its process is frozen then killed, or its host cut
off, while it waits, Redis still pops the next job pushed and writes it to a connection nobody
reads: the job's hash says "queued", it is on no queue, and nothing would ever run it. (A worker on
one queue claims the job in the same write as its BLMOVE, workers/claims.py's claim_as_it_arrives:
only Redis going away between the two leaves it in the worker's own list, where that worker's next
claim takes it, and which this pass doesn't read: a worker gone by then leaves it to this pass.)
`release-due` runs a pass every minute:
- it SCANs the job hashes in pages of 1,000 and reads status, origin and enqueued_at; a queued job
  that is neither on its queue nor on its intermediate list (each list read once per pass) is
  sighted, and its first sighting kept in Redis;
- a job sighted at an earlier pass `confirm` s before (45), and enqueued `grace` s ago (60), is put
  back at the front of its queue by one script that checks it all again (queued, on no list, in no
  registry, no execution, not put back in the last 10 minutes: config/put_back.py). A worker
  claims a job milliseconds after its pop, so a live worker's job is never caught between the two
  at two passes;
- except while a connection stands that may still hand the job to a worker: its last command a
  blocking pop it is no longer blocked in, quiet since between the job's enqueue and its first
  sighting (a cut-off host's, say, whose network may come back). A worker reads its BLPOP's reply
  until its socket times out, RQ's worker TTL less 5 s, so such a connection holds a job for
  `late_reply` s at most (420). A worker killed closes its connection: its job is back within about
  two minutes.
A failover can leave the same: the new master got a job's pop, not the claim that followed on the
old one. The worker that ran the job puts it back as soon as it is past the outage
(workers/claims.py's RecentPops); this pass is the backstop.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from redis import Redis
from redis.exceptions import ResponseError
from rq.defaults import DEFAULT_WORKER_TTL
from rq.intermediate_queue import IntermediateQueue
from rq.job import JOB_ID_PATTERN, Job
from rq.queue import Queue
from rq.utils import as_text, str_to_date

import config.put_back

logger = logging.getLogger(__name__)

SEEN = "rqkit:orphans:seen"  # job id -> when a pass first found it queued on no list (Redis time)
SEEN_TTL = 86400
PAGE = 1000
BLOCKING_POPS = {"blpop", "brpop", "blmpop"}
JOB_ID = re.compile(JOB_ID_PATTERN.pattern.encode())
# Read in Redis, a page at a time, so that only the queued jobs' fields travel: redis-py parses an
# HMGET reply in about 35 µs, Redis runs the HMGET in 2 (a pass over 100,000 keys: 3.7 s, now 1 s).
QUEUED_OF = """
-- KEYS: job hashes (a key of another type is passed over). Reply: key, origin, enqueued_at of each
-- queued job that has both.
local found = {}
for _, key in ipairs(KEYS) do
  local f = redis.pcall('HMGET', key, 'status', 'origin', 'enqueued_at')
  if f[1] == 'queued' and f[2] and f[3] then
    found[#found + 1] = key
    found[#found + 1] = f[2]
    found[#found + 1] = f[3]
  end
end
return found
"""


@dataclass(frozen=True)
class Timing:
    """How long a sighted job waits before it is put back (seconds)."""

    grace: float = 60  # since its enqueue
    confirm: float = 45  # since its first sighting: longer than `up`'s workers read a reply (35 s)
    late_reply: float = DEFAULT_WORKER_TTL  # the longest a worker may still read its BLPOP's reply
    slack: float = 5  # CLIENT LIST counts idle time in whole seconds; hosts' clocks differ a little


class Sighting(NamedTuple):
    """A queued job on neither its queue nor its intermediate list."""

    job_id: str
    origin: str
    enqueued_at: float  # epoch seconds


def recover_orphans(connection: Redis, timing: Timing = Timing()) -> dict[str, int]:
    """One pass: sight the queued jobs on no list, put back those sighted before; the counts."""
    now = server_time(connection)
    seen = {as_text(key): float(value) for key, value in connection.hgetall(SEEN).items()}
    counts = {"scanned": 0, "queued": 0}
    sighted = {s.job_id: s for s in sightings(connection, now - timing.slack, counts)}
    due = [  # sighted at an earlier pass too, long enough ago
        s
        for s in sighted.values()
        if now - seen.get(s.job_id, math.inf) >= timing.confirm and now - s.enqueued_at >= timing.grace
    ]
    quiet = quiet_pops(connection) if due else []
    held = {s.job_id for s in due if may_still_arrive(s, seen[s.job_id], now, quiet, timing)}
    recovered = {
        s.job_id for s in due if s.job_id not in held and put_back(connection, s, now - seen[s.job_id])
    }
    keep = sighted.keys() - recovered
    with connection.pipeline() as pipe:
        pipe.delete(SEEN)
        if keep:
            pipe.hset(SEEN, mapping={job_id: seen.get(job_id, now) for job_id in keep})
            pipe.expire(SEEN, SEEN_TTL)
        pipe.execute()
    return {
        **counts,
        "orphaned": len(sighted),
        "recovered": len(recovered),
        "held": len(held),
        "waiting": len(sighted) - len(due),
    }


def server_time(connection: Redis) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6


def sightings(connection: Redis, before: float, counts: dict[str, int]) -> Iterator[Sighting]:
    """The queued jobs enqueued before `before` that are on no list, read a page of keys at a time."""
    prefix = Job.key_for("").encode()
    queued_of = connection.register_script(QUEUED_OF)
    lists: dict[str, set[bytes | str]] = {}
    for page in pages(connection, prefix):
        counts["scanned"] += len(page)
        found = queued_of(keys=page) if page else []
        counts["queued"] += len(found) // 3
        for key, origin, enqueued in zip(found[::3], found[1::3], found[2::3], strict=True):
            job_id, queue, at = key[len(prefix) :], origin.decode(errors="replace"), epoch(enqueued)
            if at is None or at >= before:
                continue  # not a time, or enqueued after the pass began: maybe pushed after its list was read
            if queue not in lists:
                lists[queue] = listed(connection, queue)
            if job_id not in lists[queue]:
                yield Sighting(job_id.decode(), queue, at)


def epoch(stamp: bytes) -> float | None:
    """RQ's enqueued_at in epoch seconds; None if it isn't one of RQ's times."""
    try:
        return str_to_date(stamp).timestamp()
    except ValueError:
        return None


def pages(connection: Redis, prefix: bytes) -> Iterator[list[bytes]]:
    """The job hashes' keys, a SCAN page at a time (not rq:job:ID:dependents and the like)."""
    cursor = None
    while cursor != 0:
        cursor, keys = connection.scan(cursor or 0, match=prefix + b"*", count=PAGE)
        yield [key for key in cast(list[bytes], keys) if JOB_ID.fullmatch(key, len(prefix))]


def listed(connection: Redis, queue: str) -> set[bytes | str]:
    """The ids on the queue and its intermediate list, each read from its tail: pops (at the head)
    and pushes move no id from a page not read yet into one already read."""
    key = Queue.redis_queue_namespace_prefix + queue
    return set().union(
        *(tail_first(connection, name) for name in (key, IntermediateQueue(key, connection).key))
    )


def tail_first(connection: Redis, key: str) -> Iterator[bytes | str]:
    end = -1
    while True:
        page = connection.lrange(key, end - PAGE + 1, end)
        yield from page
        if len(page) < PAGE:
            return
        end -= PAGE


def quiet_pops(connection: Redis) -> list[int] | None:
    """How long each connection has been quiet since a blocking pop it is no longer blocked in; None
    if Redis won't list its clients (an ACL without CLIENT)."""
    try:
        clients: list[dict[str, Any]] = connection.client_list()
    except ResponseError:
        return None
    return [
        int(c["idle"]) for c in clients if c.get("cmd") in BLOCKING_POPS and "b" not in c.get("flags", "")
    ]


def may_still_arrive(
    sighting: Sighting, first_seen: float, now: float, quiet: list[int] | None, timing: Timing
) -> bool:
    """Whether a connection may still hand the job to a worker: one whose pop came between the job's
    enqueue and its first sighting, not longer ago than a worker reads a reply (unknown: any)."""
    if now - first_seen >= timing.late_reply:
        return False
    if quiet is None:
        return True
    since_seen, since_enqueued = now - first_seen - timing.slack, now - sighting.enqueued_at + timing.slack
    return any(since_seen <= idle <= since_enqueued and idle < timing.late_reply for idle in quiet)


def put_back(connection: Redis, sighting: Sighting, orphaned_for: float) -> bool:
    """Push the job to the front of its queue if it is still queued on no list and in no registry."""
    if not config.put_back.put_back(connection, sighting.job_id, sighting.origin):
        return False
    logger.info(
        "Job %s: queued but on no queue for %.0f s at least (a blocking pop took it for a worker that "
        "never got it); put back at the front of %r",
        sighting.job_id,
        orphaned_for,
        sighting.origin,
    )
    return True
