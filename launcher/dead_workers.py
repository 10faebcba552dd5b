"""A worker that `up` saw die: the jobs it had started go through RQ's own abandoned-job handling at
once (retried if they have retries left, else failed with AbandonedJobError), and it is registered
dead, instead of both waiting for its heartbeat to lapse and for another worker's registry sweep."""

from __future__ import annotations

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from config import rq_classes


def release_jobs(connection: Redis, worker_name: str) -> list[tuple[str, str]]:
    """Hand the started jobs of the dead worker `worker_name` to RQ's abandoned-job handling, then register
    its death; the id of each job it cut short, and what became of the job, in words."""
    worker = rq_classes.Worker([], worker_name, connection=connection, prepare_for_work=False)
    released = []
    for execution in worker.get_current_executions(refresh=True):
        try:
            job = rq_classes.Job.fetch(execution.job_id, connection=connection)
        except NoSuchJobError:  # deleted meanwhile: nothing to hand over
            continue
        cut_short = job.get_status() == JobStatus.STARTED  # (else it ended before its worker died)
        registry = rq_classes.Queue(job.origin, connection=connection).started_job_registry
        with connection.pipeline() as pipe:
            registry.add_execution(execution, pipe, ttl=0, xx=True)  # its lease ends now: the worker is gone
            pipe.execute()
        registry.cleanup()  # RQ's handling of every execution whose lease has ended
        if cut_short:
            released.append((job.id, fate(job)))
    worker.register_death()
    return released


def fate(job: Job) -> str:
    """What RQ's handling made of an abandoned job, in words (a rerun may have started already)."""
    job.refresh()
    status = job.get_status(refresh=False)
    if status == JobStatus.FAILED:
        return "RQ failed it (AbandonedJobError)"
    later = " later" if status == JobStatus.SCHEDULED else ""
    return f"RQ runs it again{later} (retries left: {job.retries_left})"
