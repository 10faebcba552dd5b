"""Where thumbnails are read from and written to: the media root and the thumbnails root, each a local
folder (jobs/files.Tree) or a bucket prefix (jobs/objects.ObjectTree).

A source has a version: its mtime and size, or its ETag. Every output records the parameters and the
version it was made from (in the image, and in a bucket object's metadata too), so that a rerun finds
what is up to date without decoding, or downloading, the source.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from rq.timeouts import BaseTimeoutException

from config import Settings
from config.storage import S3Location
from jobs.errors import JobInputError, ToolkitError
from jobs.files import NAME_MAX, Names, Tree
from jobs.media import media_tree
from jobs.objects import ObjectTree, Put

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"})
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
LONGEST_SUFFIX = max(len(f".{ext}") for ext in EXTENSIONS.values())  # what an output's name adds
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
RECORD = "rqkit-thumbnail"  # a bucket output's metadata field with what it was made from
# What decoding a hostile file raises is open-ended: besides OSError, SyntaxError and ValueError, Pillow's
# plugins let struct.error (a short EXIF block), NotImplementedError (an unknown DDS or BLP variant) and
# others through. Any exception while decoding is the file's fault, except these, which keep their meaning:
# the toolkit's own errors, the memory cap's MemoryError and RQ's time-out.
NOT_THE_FILES_FAULT = (ToolkitError, MemoryError, BaseTimeoutException)
Root = Tree | ObjectTree


@dataclass(frozen=True)
class Source:
    """An image to make thumbnails of: its version, and its content (read when first asked for)."""

    version: str
    content: Callable[[], BinaryIO]


@dataclass(frozen=True)
class Places:
    """The media root that sources are read from, and the thumbnails root that mirrors it."""

    media: Root
    thumbs: Root
    max_source_bytes: int  # a source object larger than this is refused before it is downloaded

    @classmethod
    def from_settings(cls, settings: Settings) -> Places:
        at = settings.thumbnails_root
        thumbs: Root = (
            ObjectTree(at, "thumbnail", "the thumbnails root", settings)
            if isinstance(at, S3Location)
            else Tree(at.resolve(), "thumbnail", "the thumbnails root", hard_links=True)
        )
        return cls(media_tree(settings, "thumbnail"), thumbs, settings.thumbnail_memory_mb * 2**20)

    @property
    def media_root(self) -> Path | S3Location:
        return self.media.root

    @property
    def thumbs_root(self) -> Path | S3Location:
        return self.thumbs.root

    def source(self, path: object) -> Names:
        """The names leading from the media root to the source, checked as text (not yet opened)."""
        names = self.media.names(path)
        if not names:
            raise JobInputError(f"thumbnail: {path} is the media root itself, not an image")
        if isinstance(path, str) and path.endswith("/"):  # as open() reads it: a folder's name
            raise JobInputError(f"thumbnail: {self.media.display(names)}/ names a folder, not an image")
        if len(names[-1].encode()) > NAME_MAX - LONGEST_SUFFIX:
            raise JobInputError(
                f"thumbnail: {self.media.display(names)}: a file name is over "
                f"{NAME_MAX - LONGEST_SUFFIX} bytes (its thumbnail's name adds up to {LONGEST_SUFFIX})"
            )
        return names

    @contextmanager
    def opened(self, names: Names) -> Iterator[Source]:
        """The source at `names`: a local file opened once (through its folders' descriptors), or a
        bucket object's HEAD, its content fetched (one GET, of that very version) only if asked for."""
        media = self.media
        if isinstance(media, Tree):
            with media.reading(names) as (stream, info):
                yield Source(f"mtime {info.st_mtime_ns} size {info.st_size}", lambda: stream)
            return
        head = media.head(names)
        if head is None:
            raise JobInputError(f"thumbnail: no such object: {media.display(names)}")
        if head.size > self.max_source_bytes:
            raise JobInputError(self.too_big(names))

        def content() -> BinaryIO:
            read = media.read(names, self.max_source_bytes, head.etag)
            if read is None:
                raise JobInputError(self.too_big(names))
            return io.BytesIO(read[0])

        yield Source(f"etag {head.etag.strip(chr(34))}", content)

    def too_big(self, names: Names) -> str:
        limit = self.max_source_bytes // 2**20
        return f"thumbnail: {self.media.display(names)} is over the {limit} MB memory limit for an image"

    def outputs(self, names: Names, sizes: tuple[int, ...], fmt: str) -> dict[int, Names]:
        """<thumbs>/<size>/<path relative to the media root>.<ext>, for each size, largest first."""
        ext = EXTENSIONS[fmt]
        return {size: (str(size), *names[:-1], f"{names[-1]}.{ext}") for size in sizes}

    def check_output_folders(self, names: Names, sizes: tuple[int, ...]) -> None:
        """Refuse now what writing would refuse: a symlink or a file where an output's folder goes."""
        if isinstance(self.thumbs, Tree):
            for size in sizes:
                self.thumbs.check_folder((str(size), *names[:-1]))

    def stale_sizes(self, outputs: dict[int, Names], record: str) -> list[int]:
        """The sizes whose output is missing or was made otherwise (other parameters or source), largest
        first. A symlink on a local output's way is refused (JobInputError): the job fails rather
        than write through it."""
        thumbs = self.thumbs
        if isinstance(thumbs, ObjectTree):
            heads = thumbs.heads(list(outputs.values()))
            made = [head.metadata.get(RECORD) if head else None for head in heads]
        else:
            made = [self.made_as(thumbs, output) for output in outputs.values()]
        return [size for size, made_as in zip(outputs, made, strict=True) if made_as != record]

    @staticmethod
    def made_as(thumbs: Tree, output: Names) -> str | None:
        """What a local output says it was made from, or None if it isn't there (or isn't ours)."""
        opened = thumbs.open_if_there(output)
        if opened is None:
            return None
        stream, _ = opened
        with stream:
            try:
                with Image.open(stream) as existing:
                    return read_record(existing)
            except NOT_THE_FILES_FAULT:
                raise
            except Exception:  # unreadable, or not an image: make it again
                return None

    def write(self, encoded: dict[Names, bytes], fmt: str, record: str) -> None:
        """Write every output, or none: local files renamed into place together, bucket objects each
        one PUT with the content type and the record in its metadata (those written taken back if one
        fails)."""
        thumbs = self.thumbs
        if isinstance(thumbs, ObjectTree):
            put = {names: Put(data, MEDIA_TYPES[fmt], {RECORD: record}) for names, data in encoded.items()}
            thumbs.put_all(put)
        else:
            thumbs.write_all({names: writer(data) for names, data in encoded.items()})

    def shown(self, output: Names) -> str:
        """Where an output is, as reports show it."""
        if isinstance(self.thumbs, ObjectTree):
            return f"{self.thumbs.location}{'/'.join(output)}"
        return str(self.thumbs.root.joinpath(*output))

    def images(self, names: Names, recursive: bool) -> Iterator[str]:
        """The media-relative paths of the images below `names` (by suffix, hidden names and the
        thumbnails root skipped), in a stable order; a bucket is listed a page at a time."""
        media = self.media
        if isinstance(media, ObjectTree):
            start = len(media.location.prefix)
            for head in media.walk(names, recursive):
                if Path(head.key).suffix.lower() in IMAGE_SUFFIXES and not self.in_thumbs(head.key):
                    yield head.key[start:]
            return
        root = media.root.joinpath(*names)
        skip = self.thumbs.root if isinstance(self.thumbs, Tree) else None
        for dirpath, dirnames, filenames in os.walk(root):
            folder = Path(dirpath)
            dirnames[:] = (
                sorted(d for d in dirnames if not d.startswith(".") and folder / d != skip)
                if recursive
                else []
            )
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    yield (folder / name).relative_to(media.root).as_posix()

    def in_thumbs(self, key: str) -> bool:
        at = self.thumbs.root
        return (
            isinstance(at, S3Location)
            and isinstance(self.media.root, S3Location)
            and (at.bucket == self.media.root.bucket and key.startswith(at.prefix))
        )


def writer(data: bytes) -> Callable[[BinaryIO], None]:
    def write(stream: BinaryIO) -> None:
        stream.write(data)

    return write


def read_record(image: Image.Image) -> str:
    """The record an output carries in the image itself (a JPEG comment, a PNG text, WebP's XMP)."""
    raw = image.info.get("comment") or image.info.get("rqkit") or image.info.get("xmp") or b""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
