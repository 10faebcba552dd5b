"""workers/prefault.py: the pages a horse wrote are copied ahead by a later fork (a real kernel's faults)."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from tests import compat_jobs
from workers import prefault
from workers.batch import BatchWorker
from workers.prefault import HEAD, PAGE, RANGE, RELEARN_SECONDS, WrittenPages

PAGES = 64
NOTED, OTHERS = range(16), range(32, 48)


def in_fork(action: Callable[[], Any]) -> Any:
    """What `action` returns (JSON), run in a forked child."""
    shared = mmap.mmap(-1, PAGE)
    pid = os.fork()
    if pid == 0:
        try:
            shared.write(json.dumps(action()).encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return json.loads(shared[: shared.find(b"\0")])


def faults_writing(memory: mmap.mmap, pages: range) -> int:
    """The page faults this process takes writing to each page the byte it holds (nothing changes)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for page in pages:
        memory[page * PAGE] = memory[page * PAGE]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def ends_after_writing(pages: WrittenPages, memory: mmap.mmap, written: range) -> Callable[[], None]:
    """A horse that writes to `written`, then ends."""

    def run() -> None:
        faults_writing(memory, written)
        pages.learn()

    return run


def spare(pages: WrittenPages, memory: mmap.mmap) -> Callable[[], dict[str, Any]]:
    """A spare that copies ahead, then runs its job: the faults it takes writing to each set of pages,
    and what the memory holds."""

    def run() -> dict[str, Any]:
        pages.populate()
        held = [int.from_bytes(memory[page * PAGE : page * PAGE + 8], "big") for page in range(PAGES)]
        noted, others = faults_writing(memory, NOTED), faults_writing(memory, OTHERS)
        return {"noted": noted, "others": others, "held": held}

    return run


@pytest.fixture
def memory() -> mmap.mmap:
    """Private memory, written before the forks (so shared with them until each writes)."""
    private = mmap.mmap(-1, PAGES * PAGE, flags=mmap.MAP_PRIVATE)
    for page in range(PAGES):
        private[page * PAGE : page * PAGE + 8] = page.to_bytes(8, "big")
    return private


def test_a_fork_copies_ahead_the_pages_an_ending_one_wrote_and_no_others(memory: mmap.mmap) -> None:
    pages = WrittenPages()
    in_fork(ends_after_writing(pages, memory, NOTED))
    got = in_fork(spare(pages, memory))
    assert got["held"] == list(range(PAGES))  # the contents as they were
    assert got["others"] >= len(OTHERS)  # (the measure works)
    assert got["noted"] <= 2, got


def test_the_pages_noted_are_noted_again_only_once_they_are_a_minute_old(memory: mmap.mmap) -> None:
    pages = WrittenPages()
    in_fork(ends_after_writing(pages, memory, NOTED))
    first = HEAD.unpack_from(pages.memory)
    in_fork(ends_after_writing(pages, memory, OTHERS))
    assert HEAD.unpack_from(pages.memory) == first  # fresh: kept
    count, size, written = first
    HEAD.pack_into(pages.memory, 0, count, size, written - RELEARN_SECONDS)
    in_fork(ends_after_writing(pages, memory, OTHERS))
    assert HEAD.unpack_from(pages.memory)[0] == count + 2
    assert HEAD.unpack_from(pages.memory)[2] > time.time() - 5
    got = in_fork(spare(pages, memory))
    assert got["others"] <= 2 and got["noted"] >= len(NOTED), got


def test_a_note_left_half_written_is_not_copied_from_and_is_written_again(memory: mmap.mmap) -> None:
    """A horse killed as it wrote leaves an odd count: a spare copies nothing, the next horse notes."""
    pages = WrittenPages()
    in_fork(ends_after_writing(pages, memory, NOTED))
    count, size, written = HEAD.unpack_from(pages.memory)
    HEAD.pack_into(pages.memory, 0, count + 1, size, written)
    assert in_fork(spare(pages, memory))["noted"] >= len(NOTED)
    in_fork(ends_after_writing(pages, memory, NOTED))
    assert HEAD.unpack_from(pages.memory)[0] == count + 4  # odd as it wrote (count + 3), then even
    assert in_fork(spare(pages, memory))["noted"] <= 2


def test_a_batch_worker_s_horse_notes_what_it_wrote_as_it_ends(connection: Redis) -> None:
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(compat_jobs.add, 1, n) for n in range(5)]
    worker = BatchWorker(["default"], connection=connection)
    worker.horse_jobs = 2  # the first horse ends after its second job
    worker.work(burst=True)
    assert [job.return_value() for job in jobs] == [1 + n for n in range(5)]
    count, ranges, written = HEAD.unpack_from(worker.pages.memory)
    assert count == 2 and ranges > 10 and written > time.time() - 60


def test_a_note_a_job_spoiled_or_from_the_future_harms_no_spare_and_is_written_again(
    memory: mmap.mmap,
) -> None:
    """A horse's job can write the shared note (any job runs in a horse): a size past its end, a time
    ahead (or a clock set back). A spare copies at most what fits, and the next horse to end notes anew."""
    pages = WrittenPages()
    in_fork(ends_after_writing(pages, memory, NOTED))
    count = HEAD.unpack_from(pages.memory)[0]
    HEAD.pack_into(pages.memory, 0, count, 0xFFFFFFFF, time.time() + 10 * RELEARN_SECONDS)
    assert in_fork(spare(pages, memory))["held"] == list(range(PAGES))  # it ran to its job
    in_fork(ends_after_writing(pages, memory, OTHERS))
    assert HEAD.unpack_from(pages.memory)[0] == count + 2
    assert in_fork(spare(pages, memory))["others"] <= 2


def test_no_more_than_the_budget_is_noted_or_copied(
    memory: mmap.mmap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a horse wrote (a job's gigabytes), at most MOST_PAGES are noted, and copied."""
    monkeypatch.setattr(prefault, "MOST_PAGES", 8)
    pages = WrittenPages()
    in_fork(ends_after_writing(pages, memory, NOTED))
    count, size, _ = HEAD.unpack_from(pages.memory)
    spans = [RANGE.unpack_from(pages.memory, HEAD.size + at * RANGE.size)[1] for at in range(size)]
    assert 0 < sum(spans) <= 8
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    RANGE.pack_into(pages.memory, HEAD.size, start, PAGES)  # one range over all of it
    HEAD.pack_into(pages.memory, 0, count, 1, time.time())
    assert in_fork(spare(pages, memory))["noted"] >= len(NOTED) - 8
