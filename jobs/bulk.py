"""Bulk enqueue near the pipelined Redis rate: RQ's own job hashes, written by one Lua script per batch.

RQ's `enqueue_many` builds a Job object per call and has redis-py pack an HSET of ~20 fields for
each. Here RQ builds one job per batch, the template, and its `to_dict()` gives the fields that every
job of the batch shares (status, origin, timestamps, timeout, TTLs, retries, meta, ...), sent once.
Per job only the key, the data and the description travel, and the script does what RQ's enqueue
does for a job without dependencies, TTL or rate limit: HSET the hash, RPUSH the id on the queue,
SADD the queue to `rq:queues`. The Job objects handed back are made on first use, from the template.
"""

from __future__ import annotations

import bisect
import copy
import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any, overload

from rq import Queue
from rq.job import Job
from rq.utils import now

from config.durable import check_reached

# KEYS: rq:queues, the queue's key, then one key per job.
# ARGV: the job key prefix, the number of shared fields, their names and values, then data and
# description per job. The batch is atomic, as RQ's enqueue_many in a MULTI is.
ENQUEUE_SCRIPT = """
local prefix_length = #ARGV[1]
local shared = tonumber(ARGV[2])
local fields = {}
for i = 3, 2 + 2 * shared do
  fields[i - 2] = ARGV[i]
end
local n = 2 * shared
fields[n + 1] = 'data'
fields[n + 3] = 'description'
local ids = {}
local at = 3 + 2 * shared
for k = 3, #KEYS do
  fields[n + 2] = ARGV[at]
  fields[n + 4] = ARGV[at + 1]
  at = at + 2
  redis.call('HSET', KEYS[k], unpack(fields))
  ids[k - 2] = string.sub(KEYS[k], prefix_length + 1)
end
redis.call('SADD', KEYS[1], KEYS[2])
if #ids > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
return #ids
"""
PER_JOB = ("data", "description")  # the fields that depend on the arguments
UNSUPPORTED = {"ttl", "dependency_ids", "rate_limit_key"}  # RQ does more than a HSET and RPUSH for these
VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

Call = tuple[Any, ...]
Describe = Callable[[Call, dict[str, Any]], str]


class BulkJobs(Sequence[Job]):
    """The jobs of a bulk enqueue, in order: each RQ Job is made on first use, as RQ's enqueue_many
    returns it (without reading Redis); `ids` costs nothing."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._calls: list[Call] = []
        self._descriptions: list[str] = []
        self._starts: list[int] = []  # the index of the first job of each batch, made from its template
        self._templates: list[Job] = []
        self._made: dict[int, Job] = {}

    def add(self, template: Job, ids: list[str], calls: Sequence[Call], descriptions: list[str]) -> None:
        self._starts.append(len(self.ids))
        self._templates.append(template)
        self.ids += ids
        self._calls += calls
        self._descriptions += descriptions

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...

    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("job index out of range")
        job = self._made.get(index)
        if job is None:
            job = self._made[index] = self._make(index)
        return job

    def _make(self, index: int) -> Job:
        template = self._templates[bisect.bisect_right(self._starts, index) - 1]
        job = copy.copy(template)
        for name, value in list(vars(job).items()):  # meta, webhooks, ...: its own, as from RQ
            if isinstance(value, list | dict | set) and name != "_kwargs":  # RQ shares the kwargs too
                setattr(job, name, value.copy())
        job.id = self.ids[index]
        job.args = self._calls[index]
        job.description = self._descriptions[index]
        return job

    def __repr__(self) -> str:
        return f"<BulkJobs: {len(self)} jobs>"


def new_ids(count: int) -> list[str]:
    """`count` random version-4 UUIDs in their string form, as RQ's `str(uuid.uuid4())`, from one read
    of the system's random source (five times as fast)."""
    h = os.urandom(16 * count).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-{VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def enqueue_calls(
    queue: Queue,
    func: Callable[..., Any],
    calls: Sequence[Call],
    kwargs: dict[str, Any],
    options: Callable[[], dict[str, Any]],
    describe: Describe,
    batch_size: int,
) -> BulkJobs:
    """Enqueue one job per call on `queue` with the RQ job options that `options()` gives (all but the
    description, which `describe` gives per call), a batch per script call; the jobs, in order.

    Each batch is sent before the reply to the previous one is read, on one connection (so in order),
    and Redis runs a batch while this side builds the next: that overlap is half the speed. A batch
    that fails leaves those before it enqueued, and perhaps the one after it, which was already sent;
    the error is raised (a MULTI of RQ's enqueue_many doesn't roll back on an error either)."""
    jobs = BulkJobs()
    if not calls:
        return jobs
    pool = queue.connection.connection_pool
    connection = pool.get_connection()
    unread = 0
    try:
        for start in range(0, len(calls), batch_size):
            batch = calls[start : start + batch_size]
            template = queue.create_job(func, args=batch[0], kwargs=kwargs, **options())
            template.enqueued_at = now()
            ids, descriptions, keys, argv = script_input(queue, template, batch, kwargs, describe)
            connection.send_command("EVAL", ENQUEUE_SCRIPT, len(keys), *keys, *argv)
            jobs.add(template, ids, batch, descriptions)
            if unread:
                connection.read_response()
            unread = 1
        if unread:
            connection.read_response()
        check_reached(connection, f"the bulk enqueue of {len(calls)} jobs")
    except BaseException:
        connection.disconnect()  # a reply may be left unread: the next user of it starts afresh
        raise
    finally:
        pool.release(connection)
    return jobs


def script_input(
    queue: Queue, template: Job, calls: Sequence[Call], kwargs: dict[str, Any], describe: Describe
) -> tuple[list[str], list[str], list[str], list[Any]]:
    """The ids and descriptions of a job per call, and the script's keys and arguments that write them:
    the template's fields, with each call's data and description."""
    fields = template.to_dict()
    if UNSUPPORTED & fields.keys():
        raise ValueError(f"bulk enqueue writes no {', '.join(sorted(UNSUPPORTED & fields.keys()))}")
    shared = [item for field, value in fields.items() if field not in PER_JOB for item in (field, value)]
    prefix = template.redis_job_namespace_prefix
    ids = new_ids(len(calls))
    descriptions = [describe(args, kwargs) for args in calls]
    keys = [queue.redis_queues_keys, queue.key, *(prefix + job_id for job_id in ids)]
    argv: list[Any] = [prefix, len(shared) // 2, *shared]
    dumps, compress, call_of = queue.serializer.dumps, zlib.compress, (template.func_name, template.instance)
    for args, description in zip(calls, descriptions, strict=True):
        # RQ's job data: its serializer's dumps of (func_name, instance, args, kwargs), compressed
        argv += (compress(dumps((*call_of, args, kwargs))), description)
    return ids, descriptions, keys, argv
