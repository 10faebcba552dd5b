"""Check-then-use races: another process swaps a folder for a symlink to outside the root as fast as it
can while the thumbnail and email jobs read and write through it. Not one file may come from, or go to,
outside the root."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from config import get_settings
from jobs.email import Message, prepare
from jobs.errors import JobInputError
from jobs.images import Places, ThumbnailSpec, make_thumbnails
from tests.conftest import Media

pytestmark = pytest.mark.slow

SECONDS, TRIES = 3.0, 20_000  # whichever ends first
SWAPPER = """
import ctypes, os, sys, time
folder, outside, stop = sys.argv[1], sys.argv[2], sys.argv[3]
link, swaps, end = folder + ".swap", 0, time.monotonic() + 60
os.symlink(outside, link)
libc = ctypes.CDLL(None, use_errno=True)
def exchange():  # renameat2(RENAME_EXCHANGE): the folder and the symlink trade names atomically
    if libc.renameat2(-100, folder.encode(), -100, link.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
while not os.path.exists(stop) and time.monotonic() < end:
    exchange()
    if not swaps:
        print("swapping", flush=True)
    exchange()
    swaps += 1
print(swaps, flush=True)
"""


@contextmanager
def swapping(folder: Path, outside: Path) -> Iterator[Callable[[], int]]:
    """A process swapping `folder` for a symlink to `outside` and back, until the block ends; yields a
    function that stops it and returns how many swaps it made."""
    stop = folder.parent / "stop-swapping"
    process = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(folder), str(outside), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "swapping"

    def finish() -> int:
        stop.touch()
        return int(process.communicate(timeout=30)[0].strip())

    try:
        yield finish
    finally:
        if process.poll() is None:
            stop.touch()
            process.wait(timeout=30)


def tries() -> Iterator[int]:
    deadline = time.monotonic() + SECONDS
    for attempt in range(TRIES):
        if time.monotonic() > deadline:
            return
        yield attempt


def pair(root: Path, outside: Path, name: str, inside_data: bytes, outside_data: bytes) -> None:
    for base, data in ((root, inside_data), (outside, outside_data)):
        (base / "d").mkdir(parents=True, exist_ok=True)
        (base / "d" / name).write_bytes(data)


def test_an_attachment_is_never_read_through_a_swapped_folder(media: Media, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    pair(media.root, outside, "file.txt", b"public", b"SECRET")
    settings, message = (
        get_settings(),
        Message(to="a@example.com", subject="s", text="t", attachments=["d/file.txt"]),
    )
    read, refused = [], 0
    with swapping(media.root / "d", outside / "d") as finish:
        for _ in tries():
            try:
                read.append(prepare(settings, message).attachments[0][1])
            except JobInputError:
                refused += 1
        swaps = finish()
    assert swaps > 0
    assert read.count(b"SECRET") == 0, f"{read.count(b'SECRET')} escapes in {len(read) + refused} tries"
    assert set(read) <= {b"public"}


def picture(color: str) -> bytes:
    stream = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(stream, "PNG")
    return stream.getvalue()


def test_a_thumbnail_source_is_never_read_through_a_swapped_folder(media: Media, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    pair(media.root, outside, "pic.png", picture("white"), picture("black"))
    places, colours, refused = Places.from_settings(get_settings()), [], 0
    with swapping(media.root / "d", outside / "d") as finish:
        for attempt in tries():
            spec = ThumbnailSpec((8,), "png", 80 + attempt % 2)  # another marker each time: always rewritten
            try:
                make_thumbnails("d/pic.png", places, spec, 10**6)
            except JobInputError:
                refused += 1
                continue
            with Image.open(media.output(8, "d/pic.png.png")) as thumb:
                colours.append(thumb.convert("RGB").getpixel((0, 0)))
        swaps = finish()
    assert swaps > 0
    escapes = colours.count((0, 0, 0))
    assert escapes == 0, f"{escapes} escapes in {len(colours) + refused} tries"


def test_a_thumbnail_is_never_written_through_a_swapped_folder(media: Media, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (media.root / "d").mkdir()
    (media.root / "d" / "pic.png").write_bytes(picture("white"))
    places = Places.from_settings(get_settings())
    make_thumbnails("d/pic.png", places, ThumbnailSpec((8,), "png", 79), 10**6)  # makes thumbs/8/d
    written = refused = 0
    with swapping(media.thumbs / "8" / "d", outside / "d") as finish:
        for attempt in tries():
            try:
                make_thumbnails("d/pic.png", places, ThumbnailSpec((8,), "png", 80 + attempt % 2), 10**6)
                written += 1
            except JobInputError:
                refused += 1
        swaps = finish()
    assert swaps > 0
    assert list((outside / "d").iterdir()) == [], f"written outside, in {written + refused} tries"
