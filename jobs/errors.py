"""The toolkit's errors, rooted at ToolkitError: import them from here."""

from __future__ import annotations

from config.errors import ConfigError, ToolkitError

__all__ = [
    "ConfigError",
    "JobInputError",
    "MemoryLimitError",
    "RejectedError",
    "ToolkitError",
    "UnknownJobError",
    "UpstreamError",
]


class JobInputError(ToolkitError):
    """A job's arguments are wrong: a permanent failure, never retried."""


class UnknownJobError(JobInputError):
    """No job is registered under that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown job {name!r}; known jobs: {', '.join(known)}")
        self.known = known


class MemoryLimitError(ToolkitError):
    """The job needed more memory than its cap (never retried)."""


class RejectedError(ToolkitError):
    """A service refused the request for good (an SMTP 5xx reply, an HTTP 4xx): never retried."""


class UpstreamError(ToolkitError):
    """A service the job depends on failed in a way that may pass: retried per the job's policy."""
