"""Which functions a job may make a worker run: a Redis write is not code execution.

RQ imports whatever function (and callback) a job names. The toolkit's workers import only the job
functions of the registry, the schedule's trigger, and what the `job_functions` setting lists
(`module.function`, `module.*`, or `*` for RQ's way: any). A job naming anything else fails with
`FunctionNotAllowed`, at once (its retries unused), and the function is never imported.

(In pickle mode the job's data is a pickle, which can run code as it is read: only JSON mode closes
that path; see docs/security.md.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, cast

import rq.job
from rq.job import Job

from config.settings import Settings, get_settings

REGISTRY = "jobs.registry"  # imported by name, as workers/preload.py does: workers sit below jobs
TRIGGER = "scheduler.periodic.fire"  # the schedule's trigger, which runs on the workers
J = TypeVar("J", bound=Job)


class FunctionNotAllowed(Exception):
    """A job names a function this worker does not run."""


def allowed_functions(settings: Settings) -> frozenset[str] | None:
    """The dotted paths (and `module.*` patterns) a job may name; None when any function may run."""
    if "*" in settings.job_functions:
        return None
    registry = importlib.import_module(REGISTRY)
    return frozenset({*registry.function_paths(), TRIGGER, *settings.job_functions})


LAST: list[Any] = [None, None]  # the settings object allowed_now last saw, and what it allows


def allowed_now() -> frozenset[str] | None:
    """`allowed_functions` of the process's settings, made once per settings object (not once per job)."""
    settings = get_settings()
    if LAST[0] is not settings:
        LAST[:] = [settings, allowed_functions(settings)]
    return LAST[1]


def is_allowed(name: str | None, allowed: frozenset[str]) -> bool:
    module, _, function = (name or "").rpartition(".")
    return bool(module) and (name in allowed or f"{module}.*" in allowed) and function.isidentifier()


def check(kind: str, name: str | None, job: Job, allowed: frozenset[str]) -> None:
    """Refuse a function name outside `allowed`, failing the job without retries."""
    if name is not None and not is_allowed(name, allowed):
        job.retries_left = 0
        raise FunctionNotAllowed(
            f"{kind} {name!r} is not a job this worker runs: not in the toolkit's registry nor in "
            "RQKIT_JOB_FUNCTIONS (it was not imported)"
        )


def function_name(job: Job) -> str | None:
    """The job's function, as a dotted path; a method of an object the job carries is never allowed."""
    if job.instance is not None:
        return f"<{type(job.instance).__name__} object>.{job.func_name}"
    return job.func_name


GATED: dict[str, tuple[str, Callable[[Job], str | None]]] = {  # what RQ imports by name, and the name
    "func": ("function", function_name),
    "success_callback": ("callback", lambda job: job._success_callback_name),
    "failure_callback": ("callback", lambda job: job._failure_callback_name),
    "stopped_callback": ("callback", lambda job: job._stopped_callback_name),
}


def gates(job_class: type[Job], allowed: Callable[[], frozenset[str] | None]) -> dict[str, property]:
    """`job_class`'s properties that import by name, each checking the name against `allowed()` first
    (None: anything goes)."""

    def gate(attribute: str, kind: str, name_of: Callable[[Job], str | None]) -> property:
        inherited = getattr(job_class, attribute)

        def get(job: Job) -> Any:
            names = allowed()
            if names is not None:
                check(kind, name_of(job), job, names)
            return inherited.fget(job)

        return property(get)

    return {attribute: gate(attribute, kind, name_of) for attribute, (kind, name_of) in GATED.items()}


@cache
def guarded(job_class: type[J], allowed: frozenset[str]) -> type[J]:
    """A subclass of `job_class` that imports a job's function or callback only if `allowed` names it."""
    namespace: dict[str, Any] = {"__module__": job_class.__module__, "__doc__": job_class.__doc__}
    namespace |= gates(job_class, lambda: allowed)
    return cast(type[J], type(job_class.__name__, (job_class,), namespace))


def guard_every_job() -> None:
    """Gate RQ's own Job class in this process by the settings of the moment, so that a stock worker
    (`rq worker -c config.rq`, which runs this through config.rq) runs only what they allow too."""
    if not getattr(rq.job.Job, "_rqkit_guarded", False):
        for attribute, gate in gates(rq.job.Job, allowed_now).items():
            setattr(rq.job.Job, attribute, gate)
        rq.job.Job._rqkit_guarded = True  # type: ignore[attr-defined]
