"""What the toolkit's workers add to their RQ hash for the dashboard (RQ keeps neither): the memory they
hold, and their TTL, by which a worker whose heartbeat is late is dead."""

from __future__ import annotations

import resource

PAGE_KB = resource.getpagesize() // 1024
MEMORY_FIELD = "rqkit_memory_kb"  # its RSS and its work-horse's, at its last heartbeat
TTL_FIELD = "rqkit_worker_ttl"  # seconds between heartbeats after which it is dead (RQ's worker_ttl)


def resident_kb(pid: int | None) -> int | None:
    """The resident memory of process `pid` in KiB, or None (no such process, or not readable)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return None
