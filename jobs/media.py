"""The media root: the one folder, or bucket prefix, that job paths (images, attachments) may point
into, the toolkit's own data excepted; and how a path typed at the shell becomes a job argument."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from config import Settings
from config.settings import config_file
from config.storage import S3Location
from jobs.errors import JobInputError
from jobs.files import TEMP_PREFIX, Tree, shown
from jobs.objects import ObjectTree

__all__ = ["TEMP_PREFIX", "as_argument", "media_tree", "read_files", "toolkit_data"]

SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def toolkit_data(settings: Settings) -> tuple[Path | S3Location, ...]:
    """What no job may read from the media root: var_dir (the content database with its sessions, stored
    mail, Redis files), the thumbnails root, the content database's SQLite files wherever they are, and
    the settings file."""
    scheme, _, rest = settings.sqlalchemy_url.partition(":///")
    database = rest.split("?")[0] if scheme.split("+")[0] == "sqlite" else ""
    files = [Path(database + suffix) for suffix in SQLITE_COMPANIONS] if database else []
    return (settings.var_dir, settings.thumbnails_root, *files, config_file())


def media_tree(settings: Settings, label: str) -> Tree | ObjectTree:
    """The media root as jobs reach it: nothing hidden, none of the toolkit's data; in a folder, no
    symlink below it."""
    root, data = settings.media_root, toolkit_data(settings)
    if isinstance(root, S3Location):
        prefixes = tuple(where for where in data if isinstance(where, S3Location))
        return ObjectTree(root, label, "the media root", settings, prefixes)
    paths = tuple(where for where in data if isinstance(where, Path))
    return Tree(root.resolve(), label, "the media root", paths)


def read_files(
    paths: Sequence[object], tree: Tree | ObjectTree, max_files: int, max_mb: int
) -> list[tuple[str, bytes]]:
    """The names and contents of files under the tree, each read once through its descriptors: at most
    `max_files`, together within `max_mb`."""
    if len(paths) > max_files:
        raise JobInputError(f"{tree.label}: {len(paths)} files; at most {max_files}")
    found: list[tuple[str, bytes]] = []
    for path in paths:
        read = read_file(path, tree, max_mb * 2**20 - sum(len(data) for _, data in found))
        if read is None:
            together = " (with the files before it)" if found else ""
            raise JobInputError(f"{tree.label}: {shown(str(path))} is over {max_mb} MB{together}")
        found.append(read)
    return found


def read_file(path: object, tree: Tree | ObjectTree, room: int) -> tuple[str, bytes] | None:
    """A regular file's (or an object's) name and content, or None if it is over `room` bytes."""
    names = tree.names(path)
    if not names:
        raise JobInputError(f"{tree.label}: {path} is {tree.title} itself, not a file")
    if isinstance(tree, ObjectTree):
        read = tree.read(names, room)
        return (names[-1], read[0]) if read else None
    with tree.reading(names) as (stream, info):
        data = stream.read(room + 1) if info.st_size <= room else b""
    return (names[-1], data) if info.st_size <= room and len(data) <= room else None


def as_argument(typed: str, settings: Settings) -> str:
    """A path typed at the shell (relative to the current directory) as a job argument: relative to
    the media root when inside it, so that workers that mount it elsewhere agree. Taken as text: a
    symlink on the way is the job's to refuse, not this function's to follow. With a bucket for the
    media root, what is typed is a key below its prefix (or an s3:// URL), taken as it is."""
    if isinstance(settings.media_root, S3Location):
        return typed
    media_root, absolute = settings.media_root.resolve(), Path(os.path.abspath(typed))
    argument = (
        absolute.relative_to(media_root).as_posix() if absolute.is_relative_to(media_root) else str(absolute)
    )
    return argument + "/" if typed.endswith("/") else argument  # a folder's name stays one
