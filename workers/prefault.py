"""The pages a work-horse writes, learned from one that ran and copied ahead by a spare while it waits.

A horse shares its pages with the fork server it was forked from, and its first write to each one makes a
copy of it: a page fault, some 2 us here, some 1,800 of them over a batch horse's first jobs, most in the
first. A horse that ends notes in memory shared with its worker, server and horses (mapped before they are
forked) which of its pages it holds alone: those it wrote, or made. A spare, while it waits for its job at
the lowest priority (workers/fork_server.py), has the kernel copy the same pages for it
(MADV_POPULATE_WRITE, Linux 5.14; elsewhere nothing is copied ahead): the faults are taken in the CPU time
a batch leaves idle, not in its next job. The contents of a page are not touched; a page that is not
mapped in the spare is skipped; one that its job will not write costs a page of memory.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import struct
import time
from contextlib import suppress

RELEARN_SECONDS = 60  # how old the pages noted may be before an ending horse notes its own
MOST_PAGES = 8192  # noted at most (32 MiB): a horse of the peers' no-op writes some 1,600
MADV_POPULATE_WRITE = 23  # linux/mman.h
PRESENT_AND_ALONE = 1 << 63 | 1 << 56  # a pagemap entry: the page is present, mapped by this process only
LARGEST_MAPPING = 1 << 30  # a mapping's pagemap is read whole: none larger (a reservation, not a heap)
HEAD = struct.Struct("QId")  # the write count (odd while a write is under way), ranges, when written
RANGE = struct.Struct("QQ")  # a range's first address and its length in pages
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)  # looked up once, in the worker, not in each horse
_madvise = _libc.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class WrittenPages:
    """The ranges of pages an ending horse held alone, shared by the worker's processes; the writer counts
    each write twice, so that a spare that reads one under way skips it."""

    def __init__(self, size: int = 16 * PAGE) -> None:
        self.memory = mmap.mmap(-1, size)  # shared (MAP_SHARED) with every process forked from here on

    def learn(self) -> None:
        """In a horse that ends: note the pages it holds alone, if those noted are older than a minute (or
        from the future: a clock set back). Nothing, if it can't (no /proc/self/pagemap: a sandbox?)."""
        count, _, written = HEAD.unpack_from(self.memory)
        if count % 2 == 0 and 0 <= time.time() - written < RELEARN_SECONDS:
            return
        try:
            ranges = held_alone(self.most_ranges, MOST_PAGES)
        except Exception:  # noqa: BLE001 (what it saves is worth no horse's report)
            return
        count += 1 + count % 2  # odd (after an odd one left by a horse killed as it wrote)
        HEAD.pack_into(self.memory, 0, count, 0, written)
        for at, (start, pages) in enumerate(ranges):
            RANGE.pack_into(self.memory, HEAD.size + at * RANGE.size, start, pages)
        HEAD.pack_into(self.memory, 0, count + 1, len(ranges), time.time())

    @property
    def most_ranges(self) -> int:
        return (len(self.memory) - HEAD.size) // RANGE.size

    def populate(self) -> None:
        """In a spare: have the kernel copy the pages noted for this process (not a write under way; at
        most what `learn` notes, whatever a job wrote there)."""
        count, size, _ = HEAD.unpack_from(self.memory)
        data = self.memory[HEAD.size : HEAD.size + min(size, self.most_ranges) * RANGE.size]
        if count % 2 or HEAD.unpack_from(self.memory)[0] != count:
            return
        budget = MOST_PAGES
        with suppress(Exception):  # (what it saves is worth no job)
            for start, pages in RANGE.iter_unpack(data):
                pages = min(pages, budget)
                budget -= pages
                if _madvise(start, pages * PAGE, MADV_POPULATE_WRITE) and ctypes.get_errno() == errno.EINVAL:
                    return  # a kernel without it (before 5.14)
                if not budget:
                    return


def held_alone(most_ranges: int, most_pages: int) -> list[tuple[int, int]]:
    """The first ranges (first address, pages) of this process's private writable pages that are present
    and mapped by it alone (those it copied, or made, since its fork), up to either limit."""
    ranges: list[tuple[int, int]] = []
    pages = 0
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        for line in maps:
            span, perms = line.split(maxsplit=2)[:2]
            start, end = (int(address, 16) for address in span.split("-"))
            if perms[1] != "w" or perms[3] != "p" or end - start > LARGEST_MAPPING:
                continue
            pagemap.seek(start // PAGE * 8)
            entries = memoryview(pagemap.read((end - start) // PAGE * 8)).cast("Q")
            for index, entry in enumerate(entries):
                if entry & PRESENT_AND_ALONE != PRESENT_AND_ALONE:
                    continue
                address = start + index * PAGE
                if ranges and ranges[-1][0] + ranges[-1][1] * PAGE == address:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + 1)
                elif len(ranges) < most_ranges:
                    ranges.append((address, 1))
                else:
                    return ranges
                pages += 1
                if pages == most_pages:
                    return ranges
    return ranges
