"""The media root: the one folder that job paths (images, attachments) may point into; and how files
being written there are named."""

from __future__ import annotations

from pathlib import Path

from jobs.errors import JobInputError

TEMP_PREFIX = ".rqkit-tmp-"  # files being written (renamed into place when whole); sweeps leave them alone


def inside_media_root(path: str, media_root: Path, what: str) -> Path:
    """The real path of `path` (relative to the media root, or absolute), refused unless inside it."""
    if "\x00" in path:
        raise JobInputError(f"{what}: a path cannot hold a NUL character: {path!r}")
    resolved = (media_root / path).resolve()
    if not resolved.is_relative_to(media_root):
        raise JobInputError(f"{what}: {path} is outside the media root {media_root}")
    return resolved


def as_argument(typed: str, media_root: Path) -> str:
    """A path typed at the shell (relative to the current directory) as a job argument: relative to
    the media root when inside it, so that workers that mount it elsewhere agree."""
    absolute = Path(typed).resolve()
    return (
        absolute.relative_to(media_root).as_posix() if absolute.is_relative_to(media_root) else str(absolute)
    )
