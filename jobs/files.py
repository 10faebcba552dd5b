"""Files under a root folder, reached from the root's descriptor one name at a time, never through a
symlink: the file checked is the file used, whatever is swapped in meanwhile. Writes go to a temp file
in the final folder, renamed into place through that folder's descriptor."""

from __future__ import annotations

import os
import posixpath
import stat
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from jobs.errors import JobInputError

NAME_MAX = 255  # bytes in one file name (Linux's limit, and most file systems')
TEMP_PREFIX = ".rqkit-tmp-"  # files being written (renamed into place when whole); sweeps leave them alone
# Opened without following a symlink and without blocking (a FIFO swapped in): a folder must be one.
FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
BREAKS_A_LINE = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, unpaired surrogates, line/paragraph breaks
Names = tuple[str, ...]
Opened = tuple[BinaryIO, os.stat_result]


class Missing(Exception):
    """Inside this module: the file, or a folder on its way, is not there (callers get a JobInputError)."""


def shown(path: str) -> str:
    """A path as an error line shows it: on one line, long ones shortened."""
    text = path if path.isprintable() else ascii(path)
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]} ({len(path)} characters)"


def bad_character(text: str) -> str | None:
    """The first character with no place on one line of text: a control, a line break, a lone surrogate."""
    return next((char for char in text if unicodedata.category(char) in BREAKS_A_LINE), None)


def is_text(text: str) -> bool:
    """Whether the string can be written as UTF-8: it holds no lone surrogate (bytes that weren't UTF-8)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(name: str, path: str, label: str) -> None:
    """One file or folder name: visible, valid UTF-8, on one line, within NAME_MAX bytes."""
    if name.startswith("."):
        raise JobInputError(
            f"{label}: {shown(path)}: hidden files and folders (a name starting with '.') are refused"
        )
    char = bad_character(name)
    if char is not None:
        raise JobInputError(
            f"{label}: {shown(path)}: a file name cannot hold {char!r} "
            "(no controls, line breaks or bytes that aren't UTF-8)"
        )
    if len(name.encode()) > NAME_MAX:
        raise JobInputError(f"{label}: {shown(path)}: a name is over {NAME_MAX} bytes")


@dataclass(frozen=True)
class Tree:
    """A root folder that job paths point into. `off_limits`: folders and files never reached from it,
    by identity (device and inode), so that no other path to them gets through either."""

    root: Path  # the operator's setting, its own symlinks resolved: nothing below it is a symlink
    label: str  # what the errors start with: "thumbnail", "email: attachment"
    title: str  # "the media root"
    off_limits: tuple[Path, ...] = ()
    hard_links: bool = False  # whether a file with several names is read (it could be any file)

    def names(self, path: object) -> Names:
        """The names from the root to `path` (relative to the root, or absolute inside it), taken as text."""
        if not isinstance(path, str) or not path:
            raise JobInputError(f"{self.label}: a path is needed, got {path!r}")
        if "\x00" in path:
            raise JobInputError(f"{self.label}: a path cannot hold a NUL character: {shown(path)}")
        normal = PurePosixPath(posixpath.normpath(path))
        if normal.is_absolute():
            if not normal.is_relative_to(self.root):
                raise JobInputError(f"{self.label}: {shown(path)} is outside {self.title} {self.root}")
            normal = normal.relative_to(self.root)
        names = normal.parts if normal.parts != (".",) else ()
        if names[:1] == ("..",):
            raise JobInputError(f"{self.label}: {shown(path)} is outside {self.title} {self.root}")
        for name in names:
            check_name(name, path, self.label)
        return names

    @contextmanager
    def reading(self, names: Names) -> Iterator[Opened]:
        """The regular file at `names`, open for reading, and its status (the file's own, not a link's)."""
        try:
            stream, info = self.open_file(names)
        except Missing as exc:
            raise JobInputError(str(exc)) from None
        with stream:
            yield stream, info

    def open_if_there(self, names: Names) -> Opened | None:
        """As `reading` (the caller closes the stream), but None if the file isn't there."""
        try:
            return self.open_file(names)
        except Missing:
            return None

    @contextmanager
    def folder(self, names: Names, create: bool = False) -> Iterator[int]:
        """The descriptor of the folder at `names`, reached one name at a time (made if `create`)."""
        try:
            fd = self.descend(names, create)
        except Missing as exc:
            raise JobInputError(str(exc)) from None
        try:
            yield fd
        finally:
            os.close(fd)

    def check_folder(self, names: Names) -> None:
        """Refuse now what making the folder at `names` would refuse; what isn't there yet is fine."""
        with suppress(Missing):
            os.close(self.descend(names, create=False))

    def write_all(self, contents: dict[Names, Callable[[BinaryIO], None]]) -> None:
        """Write each file (its folders made as needed) to a temp file beside it, then rename them all
        into place: all or none. Each value writes the content to the stream it is given."""
        with ExitStack() as folders:
            staged: list[tuple[int, str, Names]] = []
            try:
                for names, write in contents.items():
                    folder = folders.enter_context(self.folder(names[:-1], create=True))
                    temp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
                    # not mkstemp: its 0600 would keep a web server out; the umask decides
                    fd = self.create(folder, temp, names)
                    staged.append((folder, temp, names))
                    with os.fdopen(fd, "wb") as stream:
                        write(stream)
                for folder, temp, names in staged:
                    self.rename(folder, temp, names)
            finally:
                for folder, temp, _ in staged:
                    with suppress(FileNotFoundError):
                        os.unlink(temp, dir_fd=folder)

    def create(self, folder: int, temp: str, names: Names) -> int:
        """A new temp file in the folder (gone meanwhile, if someone removed it: said in one line)."""
        try:
            return os.open(temp, NEW_FILE, 0o666, dir_fd=folder)
        except OSError as exc:
            raise JobInputError(f"{self.label}: cannot write {self.display(names)}: {exc.strerror}") from None

    def rename(self, folder: int, temp: str, names: Names) -> None:
        """Into place, through the folder's descriptor: a symlink there is replaced, never followed."""
        try:
            os.replace(temp, names[-1], src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            raise JobInputError(f"{self.label}: cannot write {self.display(names)}: {exc.strerror}") from None

    def open_file(self, names: Names) -> Opened:
        folder = self.descend(names[:-1], create=False)
        try:
            fd = self.open(folder, names, FILE, want_folder=False)
        finally:
            os.close(folder)
        try:
            info = os.fstat(fd)
            self.check_file(info, names)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb"), info

    def descend(self, names: Names, create: bool) -> int:
        """The folder at `names`, one name at a time from the root, each opened without following a link."""
        fd = self.open_root(create)
        try:
            for depth in range(1, len(names) + 1):
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(names[depth - 1], dir_fd=fd)
                fd, parent = self.open(fd, names[:depth], FOLDER, want_folder=True), fd
                os.close(parent)
                self.check_allowed(os.fstat(fd), names[:depth])
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_root(self, create: bool) -> int:
        for forbidden in self.off_limits:
            if self.root.is_relative_to(forbidden.resolve()):
                raise JobInputError(
                    f"{self.label}: {self.title} {self.root} lies in the toolkit's own data ({forbidden})"
                )
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(self.root, FOLDER)
        except FileNotFoundError:
            raise Missing(f"{self.label}: {self.title} {self.root} is not there") from None
        except OSError as exc:
            raise JobInputError(
                f"{self.label}: {self.title} {self.root} cannot be opened: {exc.strerror}"
            ) from None

    def open(self, folder: int, names: Names, flags: int, want_folder: bool) -> int:
        """Open the last of `names` in `folder` with `flags`, or say in one line why it can't be."""
        try:
            return os.open(names[-1], flags, dir_fd=folder)
        except OSError as exc:
            raise self.refusal(folder, names, exc, want_folder) from None

    def refusal(self, folder: int, names: Names, exc: OSError, want_folder: bool) -> Exception:
        where = self.display(names)
        try:
            info = os.stat(names[-1], dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return Missing(f"{self.label}: no such file: {where}")
        except OSError:
            return JobInputError(f"{self.label}: cannot open {where}: {exc.strerror}")
        if stat.S_ISLNK(info.st_mode):
            return JobInputError(
                f"{self.label}: {where} is a symlink (symlinks under {self.title} are refused)"
            )
        if want_folder and not stat.S_ISDIR(info.st_mode):
            return JobInputError(f"{self.label}: {where} is not a folder")
        return JobInputError(f"{self.label}: cannot open {where}: {exc.strerror}")

    def check_allowed(self, info: os.stat_result, names: Names) -> None:
        """Refuse the toolkit's own data, whatever the path that leads to it."""
        here = (info.st_dev, info.st_ino)
        for forbidden in self.off_limits:
            with suppress(OSError):
                there = os.stat(forbidden)
                if (there.st_dev, there.st_ino) == here:
                    raise JobInputError(
                        f"{self.label}: {self.display(names)} is the toolkit's own data ({forbidden})"
                    )

    def check_file(self, info: os.stat_result, names: Names) -> None:
        """A regular file, not the toolkit's own data, with no other name (a hard link could be any file)."""
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise JobInputError(f"{self.label}: {self.display(names)} is {kind}")
        self.check_allowed(info, names)
        if info.st_nlink > 1 and not self.hard_links:
            raise JobInputError(
                f"{self.label}: {self.display(names)} has {info.st_nlink} hard links "
                "(refused: another name of it could be any file)"
            )

    def display(self, names: Sequence[str]) -> str:
        return shown("/".join(names))
