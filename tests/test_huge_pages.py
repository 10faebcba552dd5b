"""workers/huge_pages.py: the fork server's memory moved into huge pages, where it is mostly in use (a real
kernel's, read back from /proc/self/smaps)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

import pytest

from tests.test_prefault import in_fork
from workers import huge_pages
from workers.huge_pages import HUGE, MADV_COLLAPSE
from workers.prefault import PAGE

SPAN = 4 * HUGE


def private_memory(written_every: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping of SPAN bytes with every `written_every`th page written (its number in
    its first bytes), and its address."""
    memory = mmap.mmap(-1, SPAN, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for page in range(0, SPAN // PAGE, written_every):
        memory[page * PAGE : page * PAGE + 4] = page.to_bytes(4, "big")
    return memory, ctypes.addressof(ctypes.c_char.from_buffer(memory))


def smaps_kb(address: int) -> dict[str, int]:
    """The kB counts in /proc/self/smaps of the mapping at `address`."""
    counts: dict[str, int] = {}
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                inside = int(head[0].split("-")[0], 16) == address
            elif inside and len(head) == 3 and head[2] == "kB":
                counts[head[0].rstrip(":")] = int(head[1])
    return counts


def aligned_spans(address: int) -> int:
    return (address + SPAN) // HUGE - -(-address // HUGE)


@pytest.fixture(autouse=True)
def kernel_collapses() -> None:
    """Skip where the kernel has no MADV_COLLAPSE (before Linux 6.1) or no huge pages to collapse into."""
    _, address = private_memory(written_every=1)
    start = -(-address // HUGE) * HUGE
    if huge_pages._madvise(start, HUGE, MADV_COLLAPSE) and ctypes.get_errno() == errno.EINVAL:
        pytest.skip("this kernel can't collapse memory into huge pages (MADV_COLLAPSE: Linux 6.1)")


def test_memory_in_use_is_moved_into_huge_pages_with_its_contents() -> None:
    def run() -> dict[str, object]:
        memory, address = private_memory(written_every=1)
        before = smaps_kb(address)
        huge_pages.collapse()
        after = smaps_kb(address)
        pages = [int.from_bytes(memory[page * PAGE : page * PAGE + 4], "big") for page in range(SPAN // PAGE)]
        return {
            "before": before["AnonHugePages"],
            "after": after["AnonHugePages"],
            "spans": aligned_spans(address),
            "intact": pages == list(range(SPAN // PAGE)),
        }

    done = in_fork(run)
    assert done["before"] == 0
    assert done["after"] == done["spans"] * HUGE // 1024
    assert done["intact"]


def test_memory_mostly_unused_is_left_as_it_is() -> None:
    def run() -> dict[str, int]:
        _, address = private_memory(written_every=8)  # an eighth of its pages in use
        before = smaps_kb(address)
        huge_pages.collapse()
        after = smaps_kb(address)
        return {"huge": after["AnonHugePages"], "grown": after["Rss"] - before["Rss"]}

    assert in_fork(run) == {"huge": 0, "grown": 0}


def test_collapsed_before_a_fork_the_memory_stays_shared_and_a_write_copies_4_kib() -> None:
    """The worker collapses, then forks its server: the server shares the huge pages (no copy of them,
    no memory added), and a write there copies that 4 KiB page, not 2 MiB, leaving the worker's as it
    was."""

    def run() -> dict[str, object]:
        memory, address = private_memory(written_every=1)
        huge_pages.collapse()
        huge = smaps_kb(address)["AnonHugePages"]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            before = smaps_kb(address)
            memory[0:4] = b"serv"
            copied = smaps_kb(address)["Private_Dirty"] - before["Private_Dirty"]
            os.write(write, f"{before['Private_Dirty']} {copied}".encode())
            os._exit(0)
        os.close(write)
        private, copied = map(int, os.read(read, 64).split())
        os.waitpid(pid, 0)
        return {
            "huge": huge > 0,
            "private_kb_after_fork": private,
            "copied_kb": copied,
            "worker_sees": int.from_bytes(memory[0:4], "big"),
        }

    assert in_fork(run) == {
        "huge": True,
        "private_kb_after_fork": 0,
        "copied_kb": PAGE // 1024,
        "worker_sees": 0,
    }
