"""What a maintenance run did, or (dry) would do."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Report:
    """What a run did (or, dry, would do): counts, batches, time and the longest single step."""

    target: str
    dry_run: bool
    examined: int = 0
    deleted: int = 0  # in a dry run, what would be: reported as would_delete
    batches: int = 0
    bytes_freed: int = 0  # in a dry run, what would be: reported as would_free_bytes
    folders_removed: int = 0
    seconds: float = 0.0
    longest_step_ms: float = 0.0

    def timed(self, step: Callable[[], Any]) -> Any:
        """Run one transaction or command batch, keeping the longest."""
        start = time.perf_counter()
        try:
            return step()
        finally:
            self.longest_step_ms = max(self.longest_step_ms, (time.perf_counter() - start) * 1000)

    def as_dict(self) -> dict[str, Any]:
        report = {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}
        if self.dry_run:  # it deleted nothing: what it would delete goes under names that say so
            report |= {"deleted": 0, "would_delete": self.deleted}
            report |= {"bytes_freed": 0, "would_free_bytes": self.bytes_freed}
        return report
