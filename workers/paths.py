"""Which path a fast worker's jobs take: its one script per job, or RQ's own code where the script
can't stand in for it (keys kept under other prefixes, RQ methods that a subclass or a patch replaced)."""

from __future__ import annotations

from typing import Any

from rq.defaults import RQ_KEY_PREFIX

# RQ's methods that the one-script path stands in for: a worker that replaces one gets RQ's own path.
BYPASSED = (
    "dequeue_job_and_maintain_ttl",
    "prepare_job_execution",
    "execute_job",
    "perform_job",
    "handle_job_success",
)


def rq_path_reason(worker: Any, engine: type) -> str | None:
    """Why `worker`'s jobs can't take the one-script path of `engine` (None: they can). The script writes
    RQ's keys as RQ's own classes name them, and stands in for the methods in BYPASSED."""
    for name in BYPASSED:
        if getattr(getattr(worker, name), "__func__", None) is not getattr(engine, name):
            return f"{type(worker).__name__}.{name} is replaced"
    if worker.key != f"{RQ_KEY_PREFIX}:worker:{worker.name}":
        return f"worker keys under {worker.redis_worker_namespace_prefix!r}"
    if worker.job_class.key_for("id") != f"{RQ_KEY_PREFIX}:job:id":
        return f"job keys under {worker.job_class.redis_job_namespace_prefix!r}"
    for queue in worker.queues:
        keys = (queue.key, queue.started_job_registry.key, queue.finished_job_registry.key)
        if keys != tuple(f"{RQ_KEY_PREFIX}:{kind}:{queue.name}" for kind in ("queue", "wip", "finished")):
            return f"queue {queue.name!r} keeps its keys under {queue.redis_queue_namespace_prefix!r}"
    return None
