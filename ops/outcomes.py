"""How jobs end, for `enqueue --wait`, `thumbnails --wait` and the demo: waited for, with a one-line
reason when they fail."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.utils import as_text

from config.rq_classes import ENDED


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its status, its result if it finished, a one-line reason if not."""

    status: str
    result: Any = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_for(job: Job, poll: float = 0.1, timeout: float | None = None) -> Outcome:
    """Block until the job finishes, fails or disappears (or `timeout` passes); its outcome."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            status = job.get_status(refresh=True)
        except InvalidJobOperation:
            return Outcome("missing", reason=f"job {job.id} no longer exists (deleted or expired)")
        if status == JobStatus.FINISHED:
            return Outcome(status.value, result=job.return_value(refresh=True))
        if status in ENDED:
            return Outcome(status.value, reason=failure_reason(job))
        if deadline is not None and time.monotonic() > deadline:
            return Outcome(status.value, reason=f"still {status.value} after {timeout:g}s")
        time.sleep(poll)


def wait_for_all(
    jobs: Sequence[Job], progress: Callable[[int], object] = print, poll: float = 0.2
) -> list[Outcome]:
    """Block until every job has ended, calling `progress(n)` as n more end; their outcomes, in order."""
    outcomes: dict[str, Outcome] = {}
    while len(outcomes) < len(jobs):
        waiting = [job for job in jobs if job.id not in outcomes]
        with waiting[0].connection.pipeline(transaction=False) as pipe:
            for job in waiting:
                pipe.hget(job.key, "status")
            statuses = pipe.execute()
        ended = [
            job
            for job, status in zip(waiting, statuses, strict=True)
            if not status or as_text(status) in ENDED
        ]
        for job in ended:
            outcomes[job.id] = wait_for(job)
        if ended:
            progress(len(ended))
        if len(outcomes) < len(jobs):
            time.sleep(poll)
    return [outcomes[job.id] for job in jobs]


def failure_reason(job: Job) -> str:
    """The exception line of the job's traceback, e.g. `JobInputError: sleep: SECONDS must be ...`."""
    result = job.latest_result()
    text = (result.exc_string if result else None) or "failed without a traceback"
    return exception_line(text)


def exception_line(traceback_text: str) -> str:
    """The last exception's `Type: message` line, with the type's module path dropped."""
    lines = traceback_text.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    tail = lines[frames[-1] + 1 :] if frames else lines
    line = next(
        (line for line in tail if line.strip() and not line.startswith(" ")), lines[-1] if lines else ""
    )
    kind, colon, message = line.partition(": ")
    return f"{kind.rpartition('.')[2]}{colon}{message}" if " " not in kind else line
