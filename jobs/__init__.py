"""Job areas and the registry: `from jobs import enqueue; enqueue("sleep", 5)`."""

from jobs.registry import JOBS, BulkSubmission, JobSpec, enqueue, get_spec, submit, submit_many

__all__ = ["JOBS", "BulkSubmission", "JobSpec", "enqueue", "get_spec", "submit", "submit_many"]
