"""Job tags: checked at enqueue, kept in the job's meta and in one index per tag, and pruned.

An index (`rqkit:tag:<tag>`) is a sorted set of job ids scored by enqueue time, written after RQ has
saved the job. Ids of jobs that expired or were deleted leave it when `jobs list --tag` meets them,
when the toolkit deletes a job, and in the hourly `prune-tags` sweep, which reaches the tags nobody
lists; Redis drops an index once it is empty.
"""

from __future__ import annotations

import re
import time
from itertools import islice
from typing import Any

from redis import Redis
from rq.job import Job

from config import redis_client
from jobs.errors import JobInputError
from jobs.runtime import retry_only_transient

TAG = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
PREFIX = "rqkit:tag:"
BATCH = 1000


def tag_key(tag: str) -> str:
    """The index of a tag."""
    return PREFIX + tag


def check_tags(tags: list[str]) -> None:
    for tag in tags:
        if not isinstance(tag, str) or not TAG.match(tag):
            raise JobInputError(f"tag {tag!r}: 1 to 100 letters, digits and - _ . : (like customer:42)")


def index(job: Job, connection: Any) -> None:
    """Add the job to the index of each of its tags (`connection` may be a pipeline)."""
    for tag in job.meta.get("tags", []):
        connection.zadd(tag_key(tag), {job.id: time.time()})


def forget(job: Job, connection: Redis) -> None:
    """Take a deleted job out of its tags' indexes."""
    for tag in job.meta.get("tags", []):
        connection.zrem(tag_key(tag), job.id)


@retry_only_transient
def prune_tags() -> dict[str, int]:
    """Remove the ids of jobs that no longer exist from every tag index, a batch at a time."""
    connection = redis_client()
    report = {"tags": 0, "entries": 0, "pruned": 0}
    for key in connection.scan_iter(match=PREFIX + "*", count=BATCH):
        report["tags"] += 1
        ids = (job_id for job_id, _ in connection.zscan_iter(key, count=BATCH))
        while batch := list(islice(ids, BATCH)):
            report["entries"] += len(batch)
            report["pruned"] += prune_batch(connection, key, batch)
    return report


def prune_batch(connection: Redis, key: bytes, job_ids: list[bytes]) -> int:
    """Drop the ids in `job_ids` whose job hash is gone; how many went."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(Job.key_for(job_id.decode()))
        gone = [job_id for job_id, exists in zip(job_ids, pipe.execute(), strict=True) if not exists]
    return int(connection.zrem(key, *gone)) if gone else 0
