"""How much memory a process of this host holds (its resident set), as the workers publish it and the
dashboard shows it."""

from __future__ import annotations

import resource

PAGE_KB = resource.getpagesize() // 1024
MEMORY_FIELD = "rqkit_memory_kb"  # in a worker's hash: its RSS and its work-horse's, at its last heartbeat


def resident_kb(pid: int | None) -> int | None:
    """The resident memory of process `pid` in KiB, or None (no such process, or not readable)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return None
