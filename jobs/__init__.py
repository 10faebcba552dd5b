"""One module per job area, the registry of job names, and the enqueue path:
`from jobs import enqueue; enqueue("sleep", 5)`.

Importing one job's module (`jobs.demo`, `jobs.images`, ...) loads only what that job needs. The names
below come from `jobs.registry` and `jobs.submission`, which load every job area: on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.registry import JOBS, JobSpec, get_spec
    from jobs.submission import BulkSubmission, enqueue, submit, submit_many

EXPORTS = {
    "JOBS": "jobs.registry",
    "JobSpec": "jobs.registry",
    "get_spec": "jobs.registry",
    "BulkSubmission": "jobs.submission",
    "enqueue": "jobs.submission",
    "submit": "jobs.submission",
    "submit_many": "jobs.submission",
}
__all__ = ["JOBS", "BulkSubmission", "JobSpec", "enqueue", "get_spec", "submit", "submit_many"]


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(EXPORTS[name]), name)
