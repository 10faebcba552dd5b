"""Thumbnails: bounded, upright, metadata-free resizes of an image, several sizes from one decode."""

from __future__ import annotations

import io
import logging
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError
from rq.timeouts import BaseTimeoutException

from config import Settings, get_settings
from jobs.errors import JobInputError, ToolkitError
from jobs.media import TEMP_PREFIX, inside_media_root
from jobs.runtime import memory_cap, retry_only_transient

logger = logging.getLogger(__name__)

Image.init()  # register every format plugin now, so that each forked work-horse inherits them

FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}
MAX_SIZE = 8192
VERSION = 1  # part of every output's marker: bump it when the output changes, and reruns regenerate
REDUCING_GAP = 3.0  # Pillow's reduce() first, then LANCZOS: near a full LANCZOS, much faster
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"})
# What decoding a hostile file raises is open-ended: besides OSError, SyntaxError and ValueError, Pillow's
# plugins let struct.error (a short EXIF block), NotImplementedError (an unknown DDS or BLP variant) and
# others through. Any exception while decoding is the file's fault, except these, which keep their meaning:
# the toolkit's own errors, the memory cap's MemoryError and RQ's time-out.
NOT_THE_FILES_FAULT = (ToolkitError, MemoryError, BaseTimeoutException)


@dataclass(frozen=True)
class ThumbnailSpec:
    """What to make: sizes (long side, largest first), format, quality."""

    sizes: tuple[int, ...]
    format: str
    quality: int

    @classmethod
    def build(cls, sizes: list[int] | None, format: str | None, settings: Settings) -> ThumbnailSpec:
        check_spec(sizes, format)
        chosen = sizes or list(settings.thumbnail_sizes)
        return cls(
            tuple(sorted(set(chosen), reverse=True)),
            format or settings.thumbnail_format,
            settings.thumbnail_quality,
        )

    def marker(self, fmt: str) -> str:
        return f"rqkit-thumbnail v{VERSION} {fmt} q{self.quality}"


@dataclass(frozen=True)
class Places:
    """The media root that sources must live under, and the thumbnails root that mirrors it."""

    media_root: Path
    thumbs_root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Places:
        return cls(settings.media_root.resolve(), settings.thumbnails_root.resolve())

    def source(self, path: str) -> Path:
        """The source's real path, refused unless it lies inside the media root."""
        resolved = inside_media_root(path, self.media_root, "thumbnail")
        if resolved.is_relative_to(self.thumbs_root):
            raise JobInputError(f"thumbnail: {path} is itself a thumbnail")
        return resolved

    def relative(self, source: Path) -> str:
        return source.relative_to(self.media_root).as_posix()

    def outputs(self, source: Path, spec: ThumbnailSpec, image: Image.Image) -> dict[int, Path]:
        """<thumbs>/<size>/<path relative to the media root>.<ext>, for each size."""
        ext = FORMATS[output_format(spec.format, image)][1]
        return {size: self.thumbs_root / str(size) / f"{self.relative(source)}.{ext}" for size in spec.sizes}


def check_spec(sizes: object, format: object) -> None:
    """Refuse sizes and formats that make no sense, before anything is decoded."""
    if sizes is not None:
        if not isinstance(sizes, list) or not sizes:
            raise JobInputError(f"thumbnail: sizes must be a non-empty list, got {sizes!r}")
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
                raise JobInputError(
                    f"thumbnail: a size must be a whole number from 1 to {MAX_SIZE}, got {size!r}"
                )
    if format is not None and format not in (*FORMATS, "auto"):
        raise JobInputError(f"thumbnail: format must be one of auto, {', '.join(FORMATS)}; got {format!r}")


def check_thumbnail(path: object, sizes: object = None, format: object = None) -> None:
    """Enqueue-time check: a path to an existing file inside the media root, sane sizes and format."""
    if not isinstance(path, str) or not path:
        raise JobInputError(f"thumbnail: PATH must be a path, got {path!r}")
    check_spec(sizes, format)
    source = Places.from_settings(get_settings()).source(path)
    if not source.is_file():
        raise JobInputError(f"thumbnail: no such file: {path}")


@retry_only_transient
def thumbnail(path: str, sizes: list[int] | None = None, format: str | None = None) -> dict[str, Any]:
    """Job: make the thumbnails of one image; report what was written and what was already up to date."""
    settings = get_settings()
    spec = ThumbnailSpec.build(sizes, format, settings)
    with memory_cap(settings.thumbnail_memory_mb):
        report = make_thumbnails(path, Places.from_settings(settings), spec, settings.thumbnail_max_pixels)
    logger.info("%s: wrote %d, up to date %d", path, len(report["written"]), len(report["skipped"]))
    return report


def make_thumbnails(path: str, places: Places, spec: ThumbnailSpec, max_pixels: int) -> dict[str, Any]:
    """The core: decode once, write the missing or stale sizes atomically, skip the rest."""
    source = places.source(path)
    with open_image(source, max_pixels, path) as image:
        fmt = output_format(spec.format, image)
        marker = spec.marker(fmt)
        outputs = places.outputs(source, spec, image)
        mtime = source.stat().st_mtime_ns
        stale = [size for size in spec.sizes if not up_to_date(outputs[size], mtime, marker)]
        rendered = render(image, stale) if stale else {}
    write_all({outputs[size]: picture for size, picture in rendered.items()}, fmt, spec.quality, marker)
    return {
        "source": places.relative(source),
        "written": {str(size): str(outputs[size]) for size in stale},
        "skipped": {str(size): str(outputs[size]) for size in spec.sizes if size not in stale},
    }


@contextmanager
def open_image(source: Path, max_pixels: int, name: str) -> Iterator[Image.Image]:
    """Open the source lazily, turning every way a file can be bad into a one-line JobInputError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to 2x its limit
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            with Image.open(source) as image:
                yield image
        except FileNotFoundError:
            raise JobInputError(f"thumbnail: no such file: {name}") from None
        except UnidentifiedImageError:
            raise JobInputError(f"thumbnail: not an image: {name}") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise JobInputError(
                f"thumbnail: {name} has more pixels than the limit of {max_pixels:,}"
            ) from None
        except NOT_THE_FILES_FAULT:
            raise
        except Exception as exc:  # kept as the cause: if it is a bug of ours, the traceback shows where
            raise JobInputError(f"thumbnail: cannot decode {name}: {one_line(exc)}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def one_line(exc: Exception) -> str:
    """The exception's message on one line, or its type if it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def output_format(requested: str, image: Image.Image) -> str:
    """The format to write: `auto` is png for sources with alpha, jpeg otherwise."""
    if requested != "auto":
        return requested
    return "png" if has_alpha(image) else "jpeg"


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def is_up_to_date(path: str, places: Places, spec: ThumbnailSpec, max_pixels: int) -> bool:
    """Whether every output of `path` is already up to date (False if in any doubt: the job will tell)."""
    try:
        source = places.source(path)
        with open_image(source, max_pixels, path) as image:
            marker, outputs = (
                spec.marker(output_format(spec.format, image)),
                places.outputs(source, spec, image),
            )
        mtime = source.stat().st_mtime_ns
        return all(up_to_date(output, mtime, marker) for output in outputs.values())
    except (OSError, ToolkitError):
        return False


def needing_thumbnails(
    paths: Iterable[Path], places: Places, spec: ThumbnailSpec, max_pixels: int
) -> list[str]:
    """The media-root-relative paths, among `paths`, of the images whose thumbnails are missing or stale."""
    relative = (places.relative(path) for path in paths)
    return [path for path in relative if not is_up_to_date(path, places, spec, max_pixels)]


def up_to_date(output: Path, source_mtime_ns: int, marker: str) -> bool:
    """An output newer than its source, made with the same parameters (its marker), needs no work."""
    try:
        if output.stat().st_mtime_ns <= source_mtime_ns:
            return False
        with Image.open(output) as existing:
            return read_marker(existing) == marker
    except NOT_THE_FILES_FAULT:
        raise
    except Exception:  # missing, unreadable or not what we wrote: make it again
        return False


def render(image: Image.Image, sizes: list[int]) -> dict[int, Image.Image]:
    """Decode once, shrink for the largest size, turn upright, then step down size by size."""
    if image.format == "JPEG":
        image.draft(None, fit(image.size, sizes[0]))  # decode at 1/2, 1/4 or 1/8 scale (before any transpose)
    picture = normalize_mode(image)
    pictures: dict[int, Image.Image] = {}
    for size in sizes:
        target = fit(picture.size, size)  # the bounding box is square: the same before and after turning
        if target != picture.size:
            picture = picture.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        elif picture is image:
            picture = image.copy()  # outlives the source file, which closes before the outputs are written
        if not pictures:
            ImageOps.exif_transpose(picture, in_place=True)  # on the shrunk picture: fewer pixels to move
        pictures[size] = picture
    return pictures


def fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """`size` scaled down so that its long side is at most `longest` (never scaled up)."""
    width, height = size
    scale = longest / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def normalize_mode(image: Image.Image) -> Image.Image:
    """L, RGB or RGBA: palettes before resizing (else nearest-neighbour), 16-bit scaled, CMYK to RGB."""
    mode = image.mode
    if mode.startswith("I"):  # 16-bit (or 32-bit integer) grey: scale 0..65535 to 0..255, don't clip
        return image.convert("I").point(lambda value: value / 256).convert("L")
    if mode == "CMYK":
        return cmyk_to_rgb(image)
    if has_alpha(image):
        return image if mode == "RGBA" else image.convert("RGBA")
    if mode in ("L", "RGB"):
        return image
    return image.convert("L" if mode in ("1", "F") else "RGB")


def cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Through the embedded CMYK profile to sRGB when it is usable; the CMYK profile never follows."""
    profile = image.info.get("icc_profile")
    converted = None
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except (ImageCms.PyCMSError, OSError):
            converted = None
    rgb = converted or image.convert("RGB")
    rgb.info.pop("icc_profile", None)
    return rgb


def flatten(picture: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite on white."""
    if picture.mode != "RGBA":
        return picture
    background = Image.new("RGB", picture.size, "white")
    background.paste(picture, mask=picture.getchannel("A"))
    return background


def write_all(pictures: dict[Path, Image.Image], fmt: str, quality: int, marker: str) -> None:
    """Write every output to a temp file beside it, then rename them all: no partial set on failure."""
    temps: dict[Path, Path] = {}
    try:
        for output, picture in pictures.items():
            output.parent.mkdir(parents=True, exist_ok=True)
            temps[output] = output.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            with open(temps[output], "xb") as stream:  # not mkstemp: its 0600 would keep a web server out
                save(picture, stream, fmt, quality, marker)
        for output, temp in temps.items():
            os.replace(temp, output)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def save(picture: Image.Image, stream: Any, fmt: str, quality: int, marker: str) -> None:
    """Encode without the source's metadata (EXIF can carry GPS): only the colour profile and our marker."""
    options: dict[str, Any] = {}
    icc = picture.info.get("icc_profile")
    if icc:
        options["icc_profile"] = icc
    if fmt == "jpeg":
        picture = flatten(picture)
        options.update(quality=quality, comment=marker.encode())
    elif fmt == "png":
        text = PngImagePlugin.PngInfo()
        text.add_text("rqkit", marker)
        options["pnginfo"] = text
    else:
        options.update(quality=quality, xmp=marker.encode())
    kept, picture.info = picture.info, {}
    try:
        picture.save(stream, FORMATS[fmt][0], **options)
    finally:
        picture.info = kept


def read_marker(image: Image.Image) -> str:
    raw = image.info.get("comment") or image.info.get("rqkit") or image.info.get("xmp") or b""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def find_images(root: Path, recursive: bool, skip: Path) -> Iterator[Path]:
    """Image files under `root` by suffix, in a stable order, skipping hidden folders and `skip`."""
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = (
            sorted(d for d in dirnames if not d.startswith(".") and folder / d != skip) if recursive else []
        )
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield folder / name
