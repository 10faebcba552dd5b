"""The disk cache sweep: every file reached from the root's descriptor one name at a time, never through
a symlink, and deleted only if it is still the file the walk found."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

from jobs.errors import JobInputError
from jobs.maintenance.report import Report
from jobs.media import TEMP_PREFIX


class CachedFile(NamedTuple):
    folder: tuple[str, ...]  # names from the root down
    name: str
    info: os.stat_result

    @property
    def identity(self) -> tuple[int, int, int]:
        return self.info.st_dev, self.info.st_ino, self.info.st_mtime_ns


# A folder is opened one name at a time, refusing a symlink (O_NOFOLLOW) and anything not a folder,
# without blocking (a FIFO swapped in): nothing is ever reached through a symlink.
FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def sweep_disk(root: Path, config: dict[str, Any], report: Report, now: float) -> None:
    """Files older than max_age_days go; then, while over max_size_mb, the least recently used.
    Everything is reached from the root's descriptor without following a symlink; symlinks, special
    files and files being written (.rqkit-tmp-*) are left as they are."""
    root_fd = open_root(root, f"cache target {report.target!r}")
    if root_fd is None:
        return
    try:
        files = list(cached_files(root_fd))
        report.examined = len(files)
        chosen = expired_files(files, config, now)
        if report.dry_run:
            report.deleted, report.bytes_freed = len(chosen), sum(f.info.st_size for f in chosen)
            return
        for cached in chosen:
            if remove(root_fd, cached):
                report.deleted += 1
                report.bytes_freed += cached.info.st_size
        report.folders_removed = remove_emptied_folders(root_fd, {cached.folder for cached in chosen})
    finally:
        os.close(root_fd)


def open_root(root: Path, label: str) -> int | None:
    """The root's descriptor (None if there is no such folder); a symlink or a file is refused."""
    try:
        return os.open(root, FOLDER)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if root.is_symlink():
            target = os.readlink(root)
            raise JobInputError(
                f"{label}: {root} is a symlink (to {target}): set its path to the folder itself"
            ) from None
        reason = "is not a folder" if exc.errno == errno.ENOTDIR else f"cannot be read ({exc.strerror})"
        raise JobInputError(f"{label}: {root} {reason}") from None


@contextmanager
def open_folder(root_fd: int, folder: tuple[str, ...]) -> Iterator[int]:
    """A folder under the root, reached one name at a time from its descriptor (else OSError)."""
    fd = os.open(".", FOLDER, dir_fd=root_fd)
    try:
        for name in folder:
            fd, parent = os.open(name, FOLDER, dir_fd=fd), fd
            os.close(parent)
        yield fd
    finally:
        os.close(fd)


def cached_files(root_fd: int) -> Iterator[CachedFile]:
    """Every regular file under the root but those being written, with its lstat; two descriptors at most."""
    pending: list[tuple[str, ...]] = [()]
    while pending:
        folder = pending.pop()
        for name, info in folder_entries(root_fd, folder):
            if stat.S_ISDIR(info.st_mode):
                pending.append((*folder, name))
            elif stat.S_ISREG(info.st_mode) and not name.startswith(TEMP_PREFIX):
                yield CachedFile(folder, name, info)


def folder_entries(root_fd: int, folder: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
    """Names and lstat results of a folder's entries; none if it is gone or was swapped for a link."""
    entries = []
    try:
        with open_folder(root_fd, folder) as fd, os.scandir(fd) as listing:
            for entry in listing:
                with suppress(FileNotFoundError):  # gone meanwhile (a thumbnail job replaced it)
                    entries.append((entry.name, os.stat(entry.name, dir_fd=fd, follow_symlinks=False)))
    except OSError:
        return []
    return entries


def expired_files(files: list[CachedFile], config: dict[str, Any], now: float) -> list[CachedFile]:
    """Those older than max_age_days, then the least recently used while the rest is over max_size_mb."""
    max_age, limit = float(config.get("max_age_days", 0)) * 86400, float(config.get("max_size_mb", 0))
    old = [f for f in files if max_age and now - f.info.st_mtime > max_age]
    rest = [f for f in files if not (max_age and now - f.info.st_mtime > max_age)]
    over = sum(f.info.st_size for f in rest) - limit * 2**20 if limit else 0
    for cached in sorted(rest, key=lambda f: max(f.info.st_atime, f.info.st_mtime)):
        if over <= 0:
            break
        old.append(cached)
        over -= cached.info.st_size
    return old


def remove(root_fd: int, cached: CachedFile) -> bool:
    """Unlink the file the walk found, if that very file (same inode and mtime) is still there."""
    try:
        with open_folder(root_fd, cached.folder) as fd:
            now = os.stat(cached.name, dir_fd=fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino, now.st_mtime_ns) != cached.identity:
                return False
            os.unlink(cached.name, dir_fd=fd)
            return True
    except OSError:  # gone or replaced meanwhile
        return False


def remove_emptied_folders(root_fd: int, emptied: set[tuple[str, ...]]) -> int:
    """Remove the folders the sweep emptied, deepest first, then their parents if that emptied them."""
    removed = 0
    for depth in range(max(map(len, emptied), default=0), 0, -1):
        for folder in [f for f in emptied if len(f) == depth]:
            try:
                with open_folder(root_fd, folder[:-1]) as fd:
                    os.rmdir(folder[-1], dir_fd=fd)  # a symlink or a folder filled meanwhile stays
            except OSError:
                continue
            removed += 1
            emptied.add(folder[:-1])
    return removed
