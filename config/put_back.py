"""A job left queued on no list, put back at the front of its queue by one script that checks it all
again: the orphan pass (jobs/orphans.py) and a worker back from an outage (workers/claims.py)."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.executions import ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ReadyJobRegistry,
    ScheduledJobRegistry,
)

MARK_TTL = 600  # a job put back is not put back again for this long: once per loss
SCHEDULED_JOBS = "rq:scheduler:scheduled_jobs"  # rq_scheduler's Scheduler.scheduled_jobs_key
REGISTRIES = (
    ScheduledJobRegistry,
    DeferredJobRegistry,
    ReadyJobRegistry,
    FinishedJobRegistry,
    FailedJobRegistry,
    CanceledJobRegistry,
)

SCRIPT = """
-- KEYS: 1 the job's hash, 2 its queue, 3 the queue's intermediate list, 4 the job's executions,
--       5 the job's put-back mark, 6 RQ's set of queues, 7.. the sorted sets that may hold the job
-- ARGV: 1 the job id, 2 the mark's TTL
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if redis.call('EXISTS', KEYS[4], KEYS[5]) > 0 then return 0 end
if redis.call('LPOS', KEYS[2], ARGV[1]) or redis.call('LPOS', KEYS[3], ARGV[1]) then return 0 end
for i = 7, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then return 0 end
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[6], KEYS[2])
redis.call('SET', KEYS[5], '1', 'EX', ARGV[2])
return 1
"""


def put_back(connection: Redis, job_id: str, origin: str, client: Any = None) -> Any:
    """Push the job to the front of its queue if it is still queued, on no list, in no registry, with
    no execution, and not put back in the last MARK_TTL s: 1 if it was, else 0 (with a pipeline as
    `client`, the reply comes with the pipeline's)."""
    queue = Queue.redis_queue_namespace_prefix + origin
    keys = [
        Job.key_for(job_id),
        queue,
        IntermediateQueue(queue, connection).key,
        ExecutionRegistry(job_id, connection).key,
        f"rqkit:orphans:put-back:{job_id}",
        Queue.redis_queues_keys,
        *(registry.key_template.format(origin) for registry in REGISTRIES),
        SCHEDULED_JOBS,
    ]
    return connection.register_script(SCRIPT)(keys=keys, args=[job_id, MARK_TTL], client=client)
