"""Real image files for the thumbnail tests, made with Pillow."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# Pillow's exif_transpose applies these for orientations 2..8; saving the inverse makes the file
# display as the upright picture once the orientation is applied.
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
ORIENTATION = 0x0112


def upright(width: int = 600, height: int = 400) -> Image.Image:
    """Landscape, blue, with a red block in the top-left corner: any wrong turn or flip shows."""
    picture = Image.new("RGB", (width, height), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, width // 3, height // 3))
    return picture


def oriented_jpeg(path: Path, orientation: int) -> Path:
    """A JPEG that looks like `upright()` once its EXIF orientation is applied."""
    stored = upright().transpose(INVERSE[orientation]) if orientation in INVERSE else upright()
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored.save(path, "JPEG", exif=exif, quality=95)
    return path


def photo(path: Path, size: tuple[int, int] = (1200, 900), **save: object) -> Path:
    """A smooth gradient photo-like picture, saved in the format the suffix says."""
    gradient = Image.linear_gradient("L").resize(size)
    picture = Image.merge(
        "RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90).resize(size), gradient)
    )
    picture.save(path, **save)
    return path
