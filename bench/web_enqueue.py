"""Web enqueue benchmark: how long an example app's upload request takes (the POST of a real image, its
file saved and its thumbnail job enqueued through rqkit.Toolkit, the 303 back), with the one worker on
`images` busy all along, so no request waits for a thumbnail.

Starts a private redis-server on a free loopback port, `rq worker -c config.rq -w workers.ForkingWorker
images` kept busy by a `sleep` job, and each example (examples/flask_app, examples/django_site) under its
framework's development server and under waitress, as its README runs them (tests/web_apps.py). A
client in this process GETs the upload form once (cookies, CSRF token), sends a few uploads to warm up,
then times N one after the other, of a small picture and of a phone-sized photo. The first row is the
Toolkit's enqueue call alone, from this process, for comparison.
Usage: .venv/bin/python -m bench.web_enqueue [--requests 200]   (from the repo root)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import httpx
from PIL import Image
from redis import Redis

from config import get_settings
from config.settings import PROJECT_ROOT
from jobs import submit
from launcher.redis_server import RedisServer, free_port
from rqkit import Toolkit
from tests.pictures import photo
from tests.web_apps import EXAMPLES, serving

UPLOAD = {"flask": "/upload", "django": "/upload/"}
DEVELOPMENT = {
    "flask": f"flask run (Werkzeug {version('werkzeug')})",
    "django": f"manage.py runserver (Django {version('django')})",
}
WAITRESS = f"waitress-serve (waitress {version('waitress')})"
WARM_UP = 10
TOKEN = re.compile(r'name="(csrf_token|csrfmiddlewaretoken)" value="([^"]+)"')


def timed(call: Callable[[], object], count: int) -> list[float]:
    """Milliseconds per call, after WARM_UP calls left out."""
    took = []
    for _ in range(WARM_UP + count):
        start = time.perf_counter()
        call()
        took.append((time.perf_counter() - start) * 1000)
    return took[WARM_UP:]


def timed_uploads(url: str, form: str, picture: bytes, count: int) -> list[float]:
    """Milliseconds per upload request (the form at path `form`), each answered 303 to the job's page."""
    with httpx.Client(base_url=url, timeout=30) as client:
        found = TOKEN.search(client.get(form).text)
        assert found, f"no CSRF token in {url}{form}"
        field, token = found.groups()

        def upload() -> None:
            files = {"picture": ("photo.jpg", picture, "image/jpeg")}
            answer = client.post(form, data={field: token}, files=files)
            assert answer.status_code == 303 and "/jobs/" in answer.headers["location"], answer.text[:500]

        return timed(upload, count)


def phone_photo(path: Path) -> Path:
    """A 4000x3000 JPEG of a gradient with grain, about as big as a phone's photo (some 3 MiB)."""
    size = (4000, 3000)
    grain = Image.effect_noise(size, 24)
    across = Image.linear_gradient("L").resize(size)
    down = across.transpose(Image.Transpose.ROTATE_90).resize(size)
    bands = (Image.blend(across, grain, 0.3), Image.blend(down, grain, 0.3), across)
    Image.merge("RGB", bands).save(path, "JPEG", quality=90)
    return path


def start_busy_worker(log: Path) -> subprocess.Popen[bytes]:
    """The worker on `images`, started on a `sleep 3600` it will still be running at the end."""
    busy = submit("sleep", (3600,), queue="images").job
    command = [sys.executable, "-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.ForkingWorker"]
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [*command, "images"],
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while busy.get_status(refresh=True) != "started":
        if time.monotonic() > deadline or worker.poll() is not None:
            raise SystemExit(f"the worker did not start its sleep job: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return worker


def machine(connection: Redis) -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    load = " ".join(f"{figure:.1f}" for figure in os.getloadavg())
    return (
        f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, "
        f"redis-server {connection.info('server')['redis_version']}; load average {load} at the end"
    )


def measure(work: Path, count: int) -> dict[tuple[str, str, str], list[float]]:
    """Milliseconds per call, by (app, server, picture)."""
    pictures = {
        f"{len(data) // 1024} KiB": data
        for data in (photo(work / "small.jpg").read_bytes(), phone_photo(work / "phone.jpg").read_bytes())
    }
    with Toolkit() as toolkit:
        (work / "media" / "uploads").mkdir()
        (work / "media" / "uploads" / "small.jpg").write_bytes(next(iter(pictures.values())))
        results = {
            ("-", "Toolkit.enqueue alone", "-"): timed(
                lambda: toolkit.enqueue("thumbnail", "uploads/small.jpg"), count
            )
        }
    for name in EXAMPLES:
        for waitress, server_name in ((False, DEVELOPMENT[name]), (True, WAITRESS)):
            with serving(name, work / f"{name}-{waitress}.log", waitress) as url:
                for size, data in pictures.items():
                    results[name, server_name, size] = timed_uploads(url, UPLOAD[name], data, count)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    count = parser.parse_args().requests
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for folder in ("media", "var"):
            (work / folder).mkdir()
        server = RedisServer(free_port(), work / "redis").start()
        (work / "none.toml").write_text("")
        os.environ.update(
            REDIS_URL=server.url,
            RQKIT_CONFIG=str(work / "none.toml"),
            RQKIT_VAR_DIR=str(work / "var"),
            RQKIT_MEDIA_ROOT=str(work / "media"),
            RQKIT_THUMBNAILS_DIR=str(work / "thumbs"),
        )
        get_settings.cache_clear()
        connection = Redis.from_url(server.url)
        worker = start_busy_worker(work / "worker.log")
        try:
            results = measure(work, count)
            queued = connection.llen("rq:queue:images")
            about = machine(connection)
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            server.stop()
    print(about)
    print(f"{count} calls per row, one by one, after {WARM_UP} to warm up; the worker busy throughout")
    print(f"{'app':<8}{'server':<38}{'picture':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for (name, server_name, size), took in results.items():
        cuts = statistics.quantiles(took, n=100, method="inclusive")
        figures = "".join(f"{figure:>9.1f}" for figure in (cuts[49], cuts[89], cuts[98], max(took)))
        print(f"{name:<8}{server_name:<38}{size:>10}{figures}")
    sent = len(results) * (count + WARM_UP)
    print(f"thumbnail jobs still queued behind the busy worker at the end: {queued} of {sent}")


if __name__ == "__main__":
    main()
