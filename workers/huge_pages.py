"""A worker's memory in huge pages before it forks its fork server, so that each horse's fork and exit
cost less.

A fork copies a page-table entry for each 4 KiB page of the process's private memory (some 13,000 for a
worker's image), and the horse's exit clears them again. Where that memory is in 2 MiB pages
(MADV_COLLAPSE, Linux 6.1, whatever the system's transparent huge page setting), a fork copies one entry
for each, or, once a write has split one into 4 KiB entries, copies them in runs; the exit the same. A
horse's first write to a shared page still copies only that 4 KiB page. Collapsed in the worker, before
the fork, the pages stay shared with the server (collapsed in the server, they were a copy: 30 MB more
a worker). Only 2 MiB that are mostly in use already are collapsed (a huge page fills the rest); memory
made later is left to the system's setting; a kernel without it, or without free huge pages, leaves
things as they are.
"""

from __future__ import annotations

import ctypes

from workers.prefault import PAGE, PRESENT, private_writable

HUGE = 1 << 21  # a huge page where pages are 4 KiB (x86-64, arm64's default)
MOST_FILLED = 3 / 4  # the share of a huge page's span in use, at least, for it to be collapsed
MADV_COLLAPSE = 25  # linux/mman.h

_madvise = ctypes.CDLL(None, use_errno=True).madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def collapse() -> None:
    """Have the kernel move this process's private anonymous memory into huge pages, for each aligned 2
    MiB of it that is mostly in use. Best effort: what it can't collapse stays as it is."""
    if PAGE * 512 != HUGE:
        return
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            for start, end, name in private_writable():
                if name not in ("", "[heap]"):  # a file's copy, or a thread's stack
                    continue
                for span in range(-(-start // HUGE) * HUGE, end // HUGE * HUGE, HUGE):
                    pagemap.seek(span // PAGE * 8)
                    entries = memoryview(pagemap.read(HUGE // PAGE * 8)).cast("Q")
                    if sum(entry & PRESENT == PRESENT for entry in entries) >= MOST_FILLED * len(entries):
                        _madvise(span, HUGE, MADV_COLLAPSE)  # (an error: that span is left as it is)
    except OSError:  # no /proc (a sandbox?)
        return
