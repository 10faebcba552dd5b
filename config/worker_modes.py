"""How `up`'s workers run each queue's jobs (the `worker_modes` setting, entries `queue=mode`): a fresh
work-horse per job, a horse per batch of `horse_jobs` jobs, or in the worker's own process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.errors import ConfigError

if TYPE_CHECKING:
    from config.settings import Settings

# mode: the worker class that runs it (workers/); a queue left out is "fork"
MODES = {
    "fork": "workers.ForkingWorker",
    "batch": "workers.BatchWorker",
    "in-process": "workers.InProcessWorker",
}
DEFAULT_MODE = "fork"


def queue_modes(settings: Settings) -> dict[str, str]:
    """Each queue's mode, in the queues' priority order."""
    given = dict(entry.split("=", 1) for entry in settings.worker_modes)
    return {queue: given.get(queue, DEFAULT_MODE) for queue in settings.queues}


def worker_groups(settings: Settings) -> list[tuple[str, tuple[str, ...]]]:
    """The worker class of each mode in use, with its queues in priority order (modes in the order of
    their first queue)."""
    groups: dict[str, list[str]] = {}
    for queue, mode in queue_modes(settings).items():
        groups.setdefault(mode, []).append(queue)
    return [(MODES[mode], tuple(queues)) for mode, queues in groups.items()]


def check_worker_settings(settings: Settings) -> None:
    """Raise ConfigError for a bad worker mode, or a horse setting below 1."""
    seen: set[str] = set()
    for entry in settings.worker_modes:
        queue, equals, mode = entry.partition("=")
        if not equals:
            raise ConfigError(f"RQKIT_WORKER_MODES: {entry!r} is not queue=mode (like images=batch)")
        if mode not in MODES:
            raise ConfigError(f"RQKIT_WORKER_MODES: {entry!r}: the mode must be one of {', '.join(MODES)}")
        if queue not in settings.queues:
            known = ", ".join(settings.queues)
            raise ConfigError(f"RQKIT_WORKER_MODES: {entry!r}: no queue {queue!r} in RQKIT_QUEUES ({known})")
        if queue in seen:
            raise ConfigError(f"RQKIT_WORKER_MODES: queue {queue!r} has two modes")
        seen.add(queue)
    for name in ("horse_jobs", "horse_growth_mb"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"RQKIT_{name.upper()}: must be at least 1, got {getattr(settings, name)!r}")
