"""Job areas and the registry: `from jobs import enqueue; enqueue("sleep", 5)`."""

from jobs.registry import JOBS, JobSpec, enqueue, get_spec, submit

__all__ = ["JOBS", "JobSpec", "enqueue", "get_spec", "submit"]
