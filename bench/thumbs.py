"""Thumbnail benchmark: naive Pillow, the toolkit's core, end to end through rq workers, and pyvips.

Makes a corpus of large photos (12 MP JPEGs, a quarter with EXIF rotation, a few PNGs with alpha),
then prints thumbnails/second (one source image = its 3 sizes) for each way, the worker's peak RSS,
the quality against a full-decode LANCZOS reference, and the time to enqueue 10,000 files.
pyvips is installed into a throw-away venv (var/bench/vips-venv), never into the project.

Usage: .venv/bin/python bench/thumbs.py [--images 100] [--no-vips]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageStat
from redis import Redis

from config import get_settings
from config.settings import PROJECT_ROOT
from config.storage import S3Location
from jobs import submit_many
from jobs.images import Places, ThumbnailSpec, make_thumbnails
from launcher.redis_server import RedisServer, free_port
from ops.outcomes import wait_for_all

SIZES = (1024, 256, 128)
QUALITY = 85
PHOTO = (4000, 3000)
ORIENTATION = 0x0112
CACHE = PROJECT_ROOT / "var" / "bench"
VIPS_SCRIPT = """
import json, os, sys, time
import pyvips
sources, out, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
paths = sorted(os.path.join(sources, name) for name in os.listdir(sources))
seconds = {}
start = time.perf_counter()
for i, path in enumerate(paths):  # the documented way: thumbnail() from the file, once per size
    for size in sizes:
        thumb = pyvips.Image.thumbnail(path, size)
        thumb.write_to_file(os.path.join(out, f"a{i}-{size}.jpg"), Q=85, keep="none")
seconds["per size"] = time.perf_counter() - start
start = time.perf_counter()
for i, path in enumerate(paths):  # one decode, like ours: the largest in memory, the rest from it
    big = pyvips.Image.thumbnail(path, sizes[0]).copy_memory()
    for size in sizes:
        picture = big if size == sizes[0] else big.thumbnail_image(size)
        picture.write_to_file(os.path.join(out, f"b{i}-{size}.jpg"), Q=85, keep="none")
seconds["one decode"] = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "version": pyvips.__version__}))
"""


def make_photo(seed: int) -> Image.Image:
    """A 12 MP photo-like picture: noise over gradients, slightly blurred (about 3 MB as JPEG q90)."""
    noise = Image.effect_noise(PHOTO, 30 + seed)
    gradient = Image.linear_gradient("L").rotate(seed * 37).resize(PHOTO)
    red = Image.blend(noise, gradient, 0.5)
    green = Image.blend(
        noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient.transpose(Image.Transpose.ROTATE_180), 0.6
    )
    return Image.merge("RGB", (red, green, gradient)).filter(ImageFilter.GaussianBlur(0.7))


def make_corpus(folder: Path, count: int) -> list[Path]:
    """`count` sources: JPEGs (every 4th rotated by EXIF) and one PNG with alpha in ten. Cached."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [make_photo(seed) for seed in range(4)] if not any(folder.iterdir()) else []
    paths = []
    for i in range(count):
        if i % 10 == 9:
            path = folder / f"{i:03}.png"
            if not path.exists():
                picture = (bases[i % 4] if bases else make_photo(i % 4)).resize((2000, 1500)).convert("RGBA")
                picture.putalpha(Image.linear_gradient("L").resize((2000, 1500)))
                picture.save(path, compress_level=6)
        else:
            path = folder / f"{i:03}.jpg"
            if not path.exists():
                exif = Image.Exif()
                exif[ORIENTATION] = (1, 6, 1, 8)[i % 4]
                (bases[i % 4] if bases else make_photo(i % 4)).save(path, "JPEG", quality=90, exif=exif)
        paths.append(path)
    return paths


def naive(paths: list[Path], out: Path) -> None:
    """(a) What most code does: full decode, then LANCZOS from the full image for every size."""
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
            for size in SIZES:
                copy = upright.copy()
                copy.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=None)
                copy.save(out / f"{i}-{size}.jpg", quality=QUALITY)


def relative(path: Path, places: Places) -> str:
    """An image's path as the thumbnail job takes it: relative to the media root."""
    return path.relative_to(local(places.media_root)).as_posix()


def local(location: Path | S3Location) -> Path:
    """This benchmark's roots are folders (bench/bucket_thumbs.py is the bucket's)."""
    assert isinstance(location, Path), location
    return location


def core(paths: list[Path], places: Places) -> None:
    """(b) The toolkit's core function in a loop."""
    spec = ThumbnailSpec(SIZES, "jpeg", QUALITY)
    for path in paths:
        make_thumbnails(relative(path, places), places, spec, 10**9)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


RSS_WRAPPER = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def through_workers(
    paths: list[Path], places: Places, workers: int, connection: Redis, worker_class: str = "rq.Worker"
) -> tuple[float, float, float]:
    """(c) Enqueue everything, then `rq worker --burst` (of `worker_class`) processes until done: the
    seconds from the first job's start to the last one's end (RQ's own stamps: a worker's start-up left
    out, as in peers.py), the seconds from the processes' start, and peak RSS in MB of a worker with its
    work-horses (measured by a small parent, so that ours does not count)."""
    shutil.rmtree(local(places.thumbs_root), ignore_errors=True)
    connection.flushdb()
    kwargs = {"sizes": list(SIZES), "format": "jpeg"}
    jobs, refused = submit_many("thumbnail", [(relative(p, places),) for p in paths], kwargs)
    assert not refused, refused
    worker = ["-m", "rq.cli", "worker", "-c", "config.rq", "-w", worker_class, "--burst", "--quiet", "images"]
    command = [sys.executable, "-c", RSS_WRAPPER, sys.executable, *worker]
    start = time.perf_counter()
    running = [
        subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True) for _ in range(workers)
    ]
    peaks = [int(process.communicate()[0]) for process in running]
    seconds = time.perf_counter() - start
    outcomes = wait_for_all(jobs, progress=lambda n: None)
    assert all(o.status == "finished" for o in outcomes), [
        o.reason for o in outcomes if o.status != "finished"
    ][:3]
    for job in jobs:
        job.refresh()
    drain = max(job.ended_at for job in jobs) - min(job.started_at for job in jobs)
    return drain.total_seconds(), seconds, max(peaks) / 1024


def vips(paths: list[Path], out: Path) -> tuple[dict[str, float], str] | None:
    """(d) pyvips' thumbnail, one thread, from a throw-away venv; None if it cannot be installed."""
    venv = CACHE / "vips-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "pyvips[binary]"], capture_output=True
        )
        if installed.returncode:
            return None
    sources = out / "sources"
    sources.mkdir()
    for path in paths:
        os.symlink(path, sources / path.name)  # a hard link would make the job refuse the corpus meanwhile
    env = dict(os.environ, VIPS_CONCURRENCY="1")
    done = subprocess.run(
        [str(python), "-c", VIPS_SCRIPT, str(sources), str(out), ",".join(map(str, SIZES))],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        return None
    report = json.loads(done.stdout)
    return report["seconds"], report["version"]


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB (over 40: no visible difference)."""
    mse = sum(value**2 for value in ImageStat.Stat(ImageChops.difference(a, b)).rms) / 3
    return math.inf if mse == 0 else 20 * math.log10(255 / math.sqrt(mse))


def quality(paths: list[Path], places: Places) -> float:
    """The lowest PSNR of our 1024 output against full decode + LANCZOS, over a few JPEGs."""
    worst = math.inf
    for path in [p for p in paths if p.suffix == ".jpg"][:4]:
        with Image.open(path) as image:
            reference = ImageOps.exif_transpose(image).convert("RGB")
        reference.thumbnail((SIZES[0], SIZES[0]), Image.Resampling.LANCZOS, reducing_gap=None)
        with Image.open(local(places.thumbs_root) / "1024" / f"{relative(path, places)}.jpg") as ours:
            worst = min(worst, psnr(reference, ours.convert("RGB")))
    return worst


def enqueue_many_files(folder: Path, count: int) -> float:
    """Seconds for `python cli.py thumbnails DIR` over `count` small image files (process start included)."""
    folder.mkdir()
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "JPEG")
    for i in range(count):  # copies: the job refuses a source with other hard links
        (folder / f"{i}.jpg").write_bytes(tiny.getvalue())
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "cli.py", "thumbnails", str(folder), "--json"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    assert json.loads(done.stdout)["enqueued"] == count, done.stderr[-500:]
    return seconds


@dataclass
class Results:
    naive: float = 0.0
    core: float = 0.0
    rerun: float = 0.0
    one_worker: float = 0.0
    one_cold: float = 0.0  # the same, from the worker process's start
    two_workers: float = 0.0
    one_batch: float = 0.0
    rss_mb: float = 0.0
    vips: tuple[dict[str, float], str] | None = None
    psnr: float = 0.0
    enqueue: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--no-vips", action="store_true")
    options = parser.parse_args()
    paths = make_corpus(CACHE / "corpus", options.images)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = RedisServer(free_port(), work / "redis").start()
        (work / "none.toml").write_text("")
        os.environ.update(
            REDIS_URL=server.url,
            RQKIT_CONFIG=str(work / "none.toml"),
            RQKIT_MEDIA_ROOT=str(CACHE),
            RQKIT_THUMBNAILS_DIR=str(work / "thumbs"),
            RQKIT_VAR_DIR=str(work),
        )
        get_settings.cache_clear()
        places = Places.from_settings(get_settings())
        try:
            results = run_all(paths, places, work, Redis.from_url(server.url), not options.no_vips)
        finally:
            server.stop()
    print_table(results, paths)


def run_all(paths: list[Path], places: Places, work: Path, connection: Redis, with_vips: bool) -> Results:
    results = Results()
    (work / "naive").mkdir()
    results.naive = timed(lambda: naive(paths, work / "naive"))
    shutil.rmtree(local(places.thumbs_root), ignore_errors=True)
    results.core = timed(lambda: core(paths, places))
    results.psnr = quality(paths, places)
    results.rerun = timed(lambda: core(paths, places))
    results.one_worker, results.one_cold, results.rss_mb = through_workers(paths, places, 1, connection)
    results.two_workers, _, _ = through_workers(paths, places, 2, connection)
    results.one_batch, _, _ = through_workers(paths, places, 1, connection, "workers.BatchWorker")
    if with_vips:
        (work / "vips").mkdir()
        results.vips = vips(paths, work / "vips")
    connection.flushdb()
    many = local(places.media_root) / "many"
    shutil.rmtree(many, ignore_errors=True)
    try:
        results.enqueue = enqueue_many_files(many, 10_000)
    finally:
        shutil.rmtree(many, ignore_errors=True)
    return results


def print_table(results: Results, paths: list[Path]) -> None:
    count, jpegs = len(paths), sum(p.suffix == ".jpg" for p in paths)
    print(
        f"{count} sources, {jpegs} of them {PHOTO[0] * PHOTO[1] / 1e6:.0f} MP JPEGs; 3 sizes each ({SIZES})"
    )
    print(f"{'way':<44}{'images/s':>10}{'ms/image':>10}{'vs core':>9}")
    lines = [
        ("(a) naive Pillow loop (full decode)", results.naive),
        ("(b) toolkit core loop", results.core),
        ("(c) rq worker x1, first start to last end", results.one_worker),
        ("(c) rq worker x1, from the process's start", results.one_cold),
        ("(c) rq worker x2, first start to last end", results.two_workers),
        ("(c) BatchWorker x1 (100 jobs a horse), same", results.one_batch),
    ]
    if results.vips:
        seconds, version = results.vips
        lines.append((f"(d) pyvips {version} thumbnail per size, 1 thread", seconds["per size"]))
        lines.append((f"(d) pyvips {version}, one decode, 1 thread", seconds["one decode"]))
    for name, seconds in lines:
        rate = count / seconds
        print(f"{name:<44}{rate:>10.1f}{1000 / rate:>10.1f}{results.core / seconds:>8.2f}x")
    print(f"rerun with everything up to date: {1000 * results.rerun / count:.2f} ms/image")
    print(f"worker peak RSS, with its work-horses: {results.rss_mb:.0f} MB")
    print(f"python cli.py thumbnails DIR over 10,000 images, process start included: {results.enqueue:.1f} s")
    print(f"1024 px output vs full decode + LANCZOS: PSNR {results.psnr:.1f} dB (worst of 4 JPEGs)")


if __name__ == "__main__":
    main()
