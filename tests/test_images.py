"""The thumbnail job on real image files: orientation, colour modes, idempotence, atomicity, bad input."""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin
from redis import Redis
from rq import Queue

from config import get_settings
from jobs import enqueue, submit
from jobs.errors import JobInputError
from jobs.images import Places, ThumbnailSpec, make_thumbnails
from ops.outcomes import wait_for
from tests.conftest import Media
from tests.pictures import INVERSE, oriented_jpeg, photo


def make(path: str, sizes: list[int] | None = None, fmt: str = "auto", quality: int = 85) -> dict[str, Any]:
    settings = get_settings()
    spec = ThumbnailSpec.build(sizes, fmt, settings)
    return make_thumbnails(
        path, Places.from_settings(settings), ThumbnailSpec(spec.sizes, fmt, quality), 10**8
    )


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(media: Media, orientation: int) -> None:
    oriented_jpeg(media.root / "photo.jpg", orientation)
    make("photo.jpg", [300])
    with Image.open(media.output(300, "photo.jpg.jpg")) as thumb:
        assert thumb.size == (300, 200)
        red, blue = thumb.getpixel((10, 10)), thumb.getpixel((290, 190))
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue


def test_sizes_come_from_one_decode_step_by_step_and_never_upscale(media: Media) -> None:
    photo(media.root / "wide.jpg", (1200, 900))
    report = make("wide.jpg", [1024, 256, 128, 2000])
    assert report["source"] == "wide.jpg" and report["skipped"] == {}
    sizes = {}
    for size in (2000, 1024, 256, 128):
        with Image.open(media.output(size, "wide.jpg.jpg")) as thumb:
            sizes[size] = thumb.size
    assert sizes == {2000: (1200, 900), 1024: (1024, 768), 256: (256, 192), 128: (128, 96)}


def test_outputs_mirror_the_source_tree(media: Media) -> None:
    (media.root / "albums" / "2026").mkdir(parents=True)
    photo(media.root / "albums" / "2026" / "sea.png")
    report = make("albums/2026/sea.png", [64])
    assert report["written"] == {"64": str(media.output(64, "albums/2026/sea.png.jpg"))}


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix", "out_mode"),
    [
        ("CMYK", "jpeg", "jpg", "RGB"),
        ("L", "jpeg", "jpg", "L"),
        ("1", "png", "png", "L"),
        ("LA", "png", "png", "RGBA"),
        ("RGBA", "webp", "webp", "RGBA"),
        ("P", "png", "png", "RGB"),
    ],
)
def test_colour_modes(media: Media, mode: str, fmt: str, suffix: str, out_mode: str) -> None:
    alpha = 128 if "A" in mode else 255
    source = Image.new("RGBA", (400, 300), (200, 120, 40, alpha)).convert("RGB" if alpha == 255 else "RGBA")
    source = source.convert(mode)
    source.save(media.root / f"in.{suffix}")
    make(f"in.{suffix}", [100], fmt)
    with Image.open(media.output(100, f"in.{suffix}.{suffix}")) as thumb:
        assert (thumb.mode, thumb.size) == (out_mode, (100, 75))


def test_alpha_is_kept_for_png_and_webp_and_flattened_on_white_for_jpeg(media: Media) -> None:
    picture = Image.new("RGBA", (200, 200), (255, 0, 0, 255))
    picture.paste((0, 0, 0, 0), (100, 0, 200, 200))  # right half fully transparent
    picture.save(media.root / "logo.png")
    for fmt, ext in (("png", "png"), ("webp", "webp"), ("jpeg", "jpg")):
        make("logo.png", [50], fmt)
        with Image.open(media.output(50, f"logo.png.{ext}")) as thumb:
            right = thumb.convert("RGBA").getpixel((45, 25))
            if fmt == "jpeg":
                assert thumb.mode == "RGB" and min(right[:3]) > 240, right
            else:
                assert thumb.mode == "RGBA" and right[3] < 10, right


def test_auto_format_is_png_for_alpha_and_jpeg_otherwise(media: Media) -> None:
    Image.new("RGBA", (50, 50)).save(media.root / "a.png")
    Image.new("RGB", (50, 50)).save(media.root / "b.png")
    assert make("a.png", [20])["written"]["20"].endswith("a.png.png")
    assert make("b.png", [20])["written"]["20"].endswith("b.png.jpg")


def test_a_palette_with_transparency_keeps_it(media: Media) -> None:
    picture = Image.new("P", (100, 100), 1)
    picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    picture.paste(0, (0, 0, 50, 100))
    picture.save(media.root / "sprite.png", transparency=0)
    make("sprite.png", [40])
    with Image.open(media.output(40, "sprite.png.png")) as thumb:
        assert thumb.mode == "RGBA"
        assert thumb.getpixel((5, 20))[3] == 0 and thumb.getpixel((35, 20)) == (255, 0, 0, 255)


def test_a_palette_is_converted_before_resizing_not_sampled(media: Media) -> None:
    checker = Image.new("P", (400, 400), 0)
    checker.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    for x in range(0, 400, 2):
        checker.paste(1, (x, 0, x + 1, 400))  # one-pixel stripes: nearest-neighbour gives black or white
    checker.save(media.root / "stripes.gif")
    make("stripes.gif", [100], "png")
    with Image.open(media.output(100, "stripes.gif.png")) as thumb:
        grey = thumb.convert("L").getpixel((50, 50))
    assert 100 < grey < 160, grey


def test_sixteen_bit_grey_is_scaled_not_clipped(media: Media) -> None:
    Image.new("I;16", (300, 200), 32768).save(media.root / "scan.png")
    make("scan.png", [100])
    with Image.open(media.output(100, "scan.png.jpg")) as thumb:
        assert thumb.mode == "L" and 120 < thumb.getpixel((50, 50)) < 136


def test_metadata_is_stripped(media: Media) -> None:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0)}  # GPS
    photo(media.root / "gps.jpg", exif=exif, comment=b"secret place")
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone")
    photo(media.root / "text.png", pnginfo=info)
    make("gps.jpg", [200])
    make("text.png", [200], "png")
    with Image.open(media.output(200, "gps.jpg.jpg")) as thumb:
        assert dict(thumb.getexif()) == {}
        assert b"secret" not in thumb.info.get("comment", b"")
    with Image.open(media.output(200, "text.png.png")) as thumb:
        assert "Author" not in thumb.info


def test_a_rerun_does_no_work_until_the_source_or_the_parameters_change(media: Media) -> None:
    source = photo(media.root / "cat.jpg")
    first = make("cat.jpg", [256, 128])
    assert sorted(first["written"]) == ["128", "256"]
    mtimes = [media.output(size, "cat.jpg.jpg").stat().st_mtime_ns for size in (256, 128)]
    again = make("cat.jpg", [256, 128])
    assert again["written"] == {} and sorted(again["skipped"]) == ["128", "256"]
    assert mtimes == [media.output(size, "cat.jpg.jpg").stat().st_mtime_ns for size in (256, 128)]
    assert sorted(make("cat.jpg", [256, 128], quality=60)["written"]) == ["128", "256"]
    mtimes = [media.output(size, "cat.jpg.jpg").stat().st_mtime_ns for size in (256, 128)]
    later = max(mtimes) + 1000  # the source edited after the thumbnails were made
    os.utime(source, ns=(later, later))
    assert sorted(make("cat.jpg", [256, 128], quality=60)["written"]) == ["128", "256"]
    assert sorted(make("cat.jpg", [512, 128], quality=60)["written"]) == ["512"]


def test_a_failed_write_leaves_no_partial_output(media: Media) -> None:
    photo(media.root / "dog.jpg")
    media.thumbs.mkdir()
    (media.thumbs / "128").write_text("a file where the 128 folder should be")
    with pytest.raises(JobInputError, match="thumbnail: 128 is not a folder"):
        make("dog.jpg", [1024, 256, 128])
    assert files_under(media.thumbs) == ["128"]


TIFF_HEADER_ONLY = b"II*\x00\x08\x00"  # an EXIF block cut off before its first directory's entry count


def exif_cut_short(fmt: str) -> bytes:
    """A picture whose EXIF block is only the TIFF header: Pillow's EXIF reader fails with struct.error."""
    stream = io.BytesIO()
    exif = (b"Exif\x00\x00" if fmt == "JPEG" else b"") + TIFF_HEADER_ONLY
    Image.new("RGB", (40, 30), "red").save(stream, fmt, exif=exif)
    return stream.getvalue()


def dds_of_unknown_pixel_format() -> bytes:
    """A 4x4 DDS texture whose pixel format flags (8) name no format: NotImplementedError on open."""
    header = struct.pack("<I3I3I11I", 124, 0x1007, 4, 4, 0, 0, 0, *[0] * 11)
    pixel_format = struct.pack("<8I", 32, 8, 0, 0, 0, 0, 0, 0)
    return b"DDS " + header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + bytes(64)


def blp_of_unknown_compression() -> bytes:
    """A 4x4 BLP1 texture with compression 2 (neither JPEG nor palette): BLPFormatError when decoded."""
    return b"BLP1" + struct.pack("<iIIIiI", 2, 0, 4, 4, 5, 0) + bytes(128)


GARBLED = {
    "exif.jpg": lambda: exif_cut_short("JPEG"),
    "exif.png": lambda: exif_cut_short("PNG"),
    "exif.webp": lambda: exif_cut_short("WEBP"),
    "texture.dds": dds_of_unknown_pixel_format,
    "texture.blp": blp_of_unknown_compression,
}


class TestBadInputFailsCleanly:
    """Each bad input is a failed job with a one-line reason, no output, and the worker goes on."""

    def run(self, media: Media, run_jobs: Any, connection: Redis, path: str) -> str:
        job = Queue("images", connection=connection).enqueue("jobs.images.thumbnail", path)
        good = enqueue("thumbnail", "good.jpg")
        run_jobs()
        assert wait_for(good, timeout=5).status == "finished"
        outcome = wait_for(job, timeout=5)
        assert outcome.status == "failed"
        assert not [f for f in files_under(media.thumbs) if "good.jpg" not in f]
        assert job.retries_left in (None, 0)
        return outcome.reason or ""

    @pytest.fixture(autouse=True)
    def good(self, media: Media) -> None:
        photo(media.root / "good.jpg", (120, 80))

    def test_missing_file(self, media: Media, run_jobs: Any, connection: Redis) -> None:
        assert (
            self.run(media, run_jobs, connection, "gone.jpg")
            == "JobInputError: thumbnail: no such file: gone.jpg"
        )

    def test_not_an_image(self, media: Media, run_jobs: Any, connection: Redis) -> None:
        (media.root / "notes.jpg").write_text("not a picture")
        assert (
            self.run(media, run_jobs, connection, "notes.jpg")
            == "JobInputError: thumbnail: not an image: notes.jpg"
        )

    def test_truncated_file(self, media: Media, run_jobs: Any, connection: Redis) -> None:
        data = photo(media.root / "full.jpg", (800, 600)).read_bytes()
        (media.root / "cut.jpg").write_bytes(data[: len(data) // 2])
        reason = self.run(media, run_jobs, connection, "cut.jpg")
        assert reason.startswith("JobInputError: thumbnail: cannot decode cut.jpg: image file is truncated")

    def test_corrupt_file(self, media: Media, run_jobs: Any, connection: Redis) -> None:
        data = bytearray(photo(media.root / "full.jpg", (800, 600)).read_bytes())
        data[len(data) // 3 : -10] = bytes((i * 37) % 256 for i in range(len(data) // 3, len(data) - 10))
        (media.root / "noise.jpg").write_bytes(data)
        reason = self.run(media, run_jobs, connection, "noise.jpg")
        assert (
            reason
            == "JobInputError: thumbnail: cannot decode noise.jpg: broken data stream when reading image file"
        )

    @pytest.mark.parametrize(
        ("name", "pillow_says"),
        [
            ("exif.jpg", "unpack requires a buffer of 4 bytes"),  # struct.error, reading the orientation
            ("exif.png", "unpack requires a buffer of 4 bytes"),
            ("exif.webp", "unpack requires a buffer of 4 bytes"),
            ("texture.dds", "Unknown pixel format flags 8"),  # NotImplementedError, on open
            (
                "texture.blp",
                "Unsupported BLP compression 5",
            ),  # BLPFormatError, decoding (sic: 5 is the encoding)
        ],
    )
    def test_garbled_headers_that_pillow_raises_other_errors_for(
        self, media: Media, run_jobs: Any, connection: Redis, name: str, pillow_says: str
    ) -> None:
        """Not OSError, SyntaxError or ValueError: the job still fails with its one-line error."""
        (media.root / name).write_bytes(GARBLED[name]())
        reason = self.run(media, run_jobs, connection, name)
        assert reason == f"JobInputError: thumbnail: cannot decode {name}: {pillow_says}"

    @pytest.mark.parametrize("pixels", [50_000, 100_000])  # Pillow warns under 2x its limit, raises above
    def test_decompression_bomb(
        self, media: Media, run_jobs: Any, connection: Redis, monkeypatch: pytest.MonkeyPatch, pixels: int
    ) -> None:
        monkeypatch.setenv("RQKIT_THUMBNAIL_MAX_PIXELS", str(pixels // 2 + 1000))
        Image.new("RGB", (pixels // 100, 100)).save(media.root / "bomb.png")
        reason = self.run(media, run_jobs, connection, "bomb.png")
        assert (
            reason
            == f"JobInputError: thumbnail: bomb.png has more pixels than the limit of {pixels // 2 + 1000:,}"
        )

    def test_a_path_outside_the_media_root(self, media: Media, run_jobs: Any, connection: Redis) -> None:
        photo(media.root.parent / "private.jpg")
        reason = self.run(media, run_jobs, connection, "../private.jpg")
        assert reason == f"JobInputError: thumbnail: ../private.jpg is outside the media root {media.root}"

    def test_a_symlink_out_of_the_media_root(self, media: Media, run_jobs: Any, connection: Redis) -> None:
        (media.root / "link.jpg").symlink_to(photo(media.root.parent / "private.jpg"))
        reason = self.run(media, run_jobs, connection, "link.jpg")
        assert (
            reason
            == "JobInputError: thumbnail: link.jpg is a symlink (symlinks under the media root are refused)"
        )


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("../private.jpg",), {}, "is outside the media root"),
        (("/etc/hostname",), {}, "is outside the media root"),
        (("gone.jpg",), {}, "no such file: gone.jpg"),
        (("",), {}, "PATH must be a path"),
        ((["a.jpg"],), {}, "PATH must be a path"),
        (("good.jpg",), {"sizes": [0]}, "a size must be a whole number from 1 to 8192, got 0"),
        (("good.jpg",), {"sizes": [100_000]}, "got 100000"),
        (("good.jpg",), {"sizes": [12.5]}, "got 12.5"),
        (("good.jpg",), {"sizes": []}, "sizes must be a non-empty list"),
        (("good.jpg",), {"sizes": 128}, "sizes must be a non-empty list"),
        (("good.jpg",), {"format": "gif"}, "format must be one of auto, jpeg, png, webp"),
    ],
)
def test_bad_arguments_are_refused_at_enqueue(
    media: Media, connection: Redis, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    photo(media.root / "good.jpg", (300, 200))
    with pytest.raises(JobInputError, match=message):
        submit("thumbnail", args, kwargs)
    assert Queue("images", connection=connection).count == 0


def test_a_thumbnail_is_not_made_of_a_thumbnail(media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", str(media.root / "thumbs"))
    photo(media.root / "cat.jpg", (300, 200))
    make("cat.jpg", [100])
    with pytest.raises(JobInputError, match="thumbnail: thumbs is the toolkit's own data"):
        submit("thumbnail", ("thumbs/100/cat.jpg.jpg",))


def test_the_job_reports_what_it_wrote_and_skipped(media: Media, run_jobs: Any, connection: Redis) -> None:
    photo(media.root / "cat.jpg")
    first = enqueue("thumbnail", "cat.jpg", sizes=[64, 32])
    second = enqueue("thumbnail", "cat.jpg", sizes=[64, 32])
    run_jobs()
    assert wait_for(first, timeout=5).result == {
        "source": "cat.jpg",
        "written": {"64": str(media.output(64, "cat.jpg.jpg")), "32": str(media.output(32, "cat.jpg.jpg"))},
        "skipped": {},
    }
    assert sorted(wait_for(second, timeout=5).result["skipped"]) == ["32", "64"]
    assert first.timeout == get_settings().thumbnail_timeout


def test_the_inverse_table_matches_pillow() -> None:
    # The test images are only as good as this table: check it against Pillow itself.
    from PIL import ImageOps

    for orientation, inverse in INVERSE.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture = Image.new("RGB", (3, 2))
        picture.putpixel((0, 0), (255, 0, 0))
        stored = picture.transpose(inverse)
        stored.info["exif"] = exif.tobytes()
        assert ImageOps.exif_transpose(stored).tobytes() == picture.tobytes(), orientation


def test_a_job_over_its_memory_cap_fails_and_the_worker_goes_on(
    media: Media, connection: Redis, start_worker: Any
) -> None:
    Image.new("RGB", (5000, 5000), (10, 20, 30)).save(
        media.root / "huge.png", compress_level=1
    )  # 75 MB decoded
    photo(media.root / "small.jpg", (200, 100))
    worker = start_worker("images", env={"RQKIT_THUMBNAIL_MEMORY_MB": "40"})
    heavy = enqueue("thumbnail", "huge.png")
    light = enqueue("thumbnail", "small.jpg")
    assert (
        wait_for(heavy, timeout=60).reason == "MemoryLimitError: memory limit: the job needed more than 40 MB"
    )
    assert wait_for(light, timeout=60).status == "finished"
    assert worker.poll() is None
    assert files_under(media.thumbs) == [f"{size}/small.jpg.jpg" for size in (1024, 128, 256)]


def test_a_garbled_output_in_the_way_is_made_again(media: Media) -> None:
    """An output that Pillow can't read (here a DDS it raises NotImplementedError for) is not up to date."""
    photo(media.root / "cat.jpg", (300, 200))
    in_the_way = media.output(64, "cat.jpg.jpg")
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_bytes(dds_of_unknown_pixel_format())  # newer than its source
    assert make("cat.jpg", [64])["written"] == {"64": str(in_the_way)}
    with Image.open(in_the_way) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (64, 43))


def test_outputs_are_readable_by_others_as_the_umask_allows(media: Media) -> None:
    photo(media.root / "shared.jpg", (300, 200))
    previous = os.umask(0o022)
    try:
        make("shared.jpg", [64])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(media.output(64, "shared.jpg.jpg").stat().st_mode) == 0o644


def test_a_cmyk_profile_does_not_follow_onto_the_rgb_output(media: Media) -> None:
    Image.new("CMYK", (300, 200), (0, 100, 200, 0)).save(
        media.root / "print.jpg", icc_profile=b"not a real profile"
    )
    make("print.jpg", [64])
    with Image.open(media.output(64, "print.jpg.jpg")) as thumb:
        assert thumb.mode == "RGB" and "icc_profile" not in thumb.info
