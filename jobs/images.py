"""Thumbnails: bounded, upright, metadata-free resizes of an image, several sizes from one decode."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from config import Settings, get_settings
from jobs import objects
from jobs.errors import JobInputError, ToolkitError
from jobs.files import Names
from jobs.image_places import NOT_THE_FILES_FAULT, Places
from jobs.runtime import memory_cap, retry_only_transient

logger = logging.getLogger(__name__)

Image.init()  # register every format plugin now, so that each forked work-horse inherits them

FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}  # Pillow's names
MAX_SIZE = 8192
VERSION = 2  # part of every output's record: bump it when the output changes, and reruns regenerate
REDUCING_GAP = 2.0  # Pillow's reduce() by a whole factor first, then LANCZOS over the last 2x to 4x


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

    def record(self, fmt: str, version: str) -> str:
        """What an output records of how it was made: parameters and the source's version (ASCII)."""
        return f"rqkit-thumbnail v{VERSION} {fmt} q{self.quality} source {version}"

    def formats(self) -> tuple[str, ...]:
        """The formats the outputs may have before the source is decoded (auto: jpeg or png)."""
        return ("jpeg", "png") if self.format == "auto" else (self.format,)


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
    """Enqueue-time check: a source the job may read under the media root, outputs it may write,
    sane sizes and format."""
    if not isinstance(path, str) or not path:
        raise JobInputError(f"thumbnail: PATH must be a path, got {path!r}")
    check_spec(sizes, format)
    settings = get_settings()
    spec = ThumbnailSpec.build(cast("list[int] | None", sizes), cast("str | None", format), settings)
    places = Places.from_settings(settings)
    names = places.source(path)
    with places.opened(names):
        places.check_output_folders(names, spec.sizes)


def warm_up(settings: Settings) -> None:
    """With a bucket for media or thumbnails, boto3 loaded before the worker forks (for the email
    job's attachments too: one session per process)."""
    if objects.uses_buckets(settings):
        objects.warm_up(settings)


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
    """The core: if every output records this source version and these parameters, nothing is read;
    else decode once and write the missing or stale sizes, all or none. Local files are reached from
    their roots' descriptors, never through a symlink."""
    names = places.source(path)
    with places.opened(names) as source:
        stale = {fmt: stale_for(places, names, spec, fmt, source.version) for fmt in spec.formats()}
        done = [fmt for fmt, sizes in stale.items() if not sizes]
        if done:
            fmt, rendered = done[0], {}
        else:
            with open_image(source.content(), max_pixels, path) as image:
                fmt = output_format(spec.format, image)
                rendered = render(image, stale[fmt])
    record = spec.record(fmt, source.version)
    outputs = places.outputs(names, spec.sizes, fmt)
    encoded = {
        outputs[size]: encode(picture, fmt, spec.quality, record) for size, picture in rendered.items()
    }
    places.write(encoded, fmt, record)
    shown = {size: places.shown(output) for size, output in outputs.items()}
    return {
        "source": "/".join(names),
        "written": {str(size): shown[size] for size in rendered},
        "skipped": {str(size): shown[size] for size in spec.sizes if size not in rendered},
    }


def stale_for(places: Places, names: Names, spec: ThumbnailSpec, fmt: str, version: str) -> list[int]:
    """The sizes, largest first, that need making if the outputs are to be `fmt`."""
    return places.stale_sizes(places.outputs(names, spec.sizes, fmt), spec.record(fmt, version))


@contextmanager
def open_image(source: BinaryIO, max_pixels: int, name: str) -> Iterator[Image.Image]:
    """Open the source lazily, turning every way a file can be bad into a one-line JobInputError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to 2x its limit
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            with Image.open(source) as image:
                yield image
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


def is_up_to_date(path: str, places: Places, spec: ThumbnailSpec) -> bool:
    """Whether every output of `path` is already up to date, read from the outputs' records alone
    (False if in any doubt: the job will tell)."""
    try:
        names = places.source(path)
        with places.opened(names) as source:
            return any(not stale_for(places, names, spec, fmt, source.version) for fmt in spec.formats())
    except (OSError, ToolkitError):
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
            picture = shrink(picture, target)
        elif picture is image:
            picture = image.copy()  # outlives the source file, which closes before the outputs are written
        if not pictures:
            ImageOps.exif_transpose(picture, in_place=True)  # on the shrunk picture: fewer pixels to move
        pictures[size] = picture
    return pictures


def shrink(picture: Image.Image, target: tuple[int, int]) -> Image.Image:
    """HAMMING where the ratio is under 2 (as a JPEG's draft scale leaves it): half LANCZOS's time,
    within 0.1 dB of it; else LANCZOS after reduce()."""
    if max(picture.size) < 2 * max(target):
        return picture.resize(target, Image.Resampling.HAMMING)
    return picture.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


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


def encode(picture: Image.Image, fmt: str, quality: int, record: str) -> bytes:
    """Encode without the source's metadata (EXIF can carry GPS): only the colour profile and our
    record of how it was made."""
    options: dict[str, Any] = {}
    icc = picture.info.get("icc_profile")
    if icc:
        options["icc_profile"] = icc
    if fmt == "jpeg":
        picture = flatten(picture)
        options.update(quality=quality, comment=record.encode())
    elif fmt == "png":
        text = PngImagePlugin.PngInfo()
        text.add_text("rqkit", record)
        options["pnginfo"] = text
    else:
        options.update(quality=quality, xmp=record.encode())
    kept, picture.info = picture.info, {}
    stream = io.BytesIO()
    try:
        picture.save(stream, FORMATS[fmt], **options)
    finally:
        picture.info = kept
    return stream.getvalue()
