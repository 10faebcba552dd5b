"""The toolkit's errors, rooted at ToolkitError: import them from here."""

from __future__ import annotations

import difflib

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
        self.known = known
        self.close = difflib.get_close_matches(name, known, n=3)
        hint = f" did you mean {' or '.join(map(repr, self.close))}?" if self.close else ""
        super().__init__(f"unknown job {name!r};{hint} known jobs: {', '.join(known)}")


class MemoryLimitError(ToolkitError):
    """The job needed more memory than its cap (never retried)."""


class RejectedError(ToolkitError):
    """A service refused the request for good (an SMTP 5xx reply, an HTTP 4xx): never retried."""


class UpstreamError(ToolkitError):
    """A service the job depends on failed in a way that may pass: retried per the job's policy."""
