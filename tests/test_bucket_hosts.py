"""Thumbnails of a bucket prefix made by real `rq worker`s (ForkingWorkers): two hosts (hostnames of their
own, in UTS namespaces) working the same images at once, and a store that goes down mid-batch and comes
back. Every image ends with its whole set of sizes, and nothing else is under the thumbnails prefix."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis

from config.rq_classes import ENDED, Job, Queue, Worker
from config.settings import PROJECT_ROOT
from jobs import submit_many
from jobs.image_places import RECORD, read_record
from tests.conftest import BUCKET, BucketMedia
from tests.netns import AS_HOST
from tests.s3 import S3Store
from tests.s3_proxy import s3_proxy
from tests.support import run_json, wait_until

WORKER = ("-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.ForkingWorker")
HOSTS = ("host1", "host2")
FINAL = {status.value for status in ENDED} | {"missing"}  # a job in one of these will not change


@dataclass(frozen=True)
class Shape:
    """A kind of source image, and what each of the default sizes (128, 256, 1024) must make of it."""

    size: tuple[int, int]
    mode: str
    format: str  # the source's, and its outputs': png for a source with alpha, else jpeg
    outputs: dict[int, tuple[int, int]]

    @property
    def suffix(self) -> str:
        """Of the source's name, and added to it for its outputs' names."""
        return "png" if self.format == "png" else "jpg"


SHAPES = (
    Shape((1600, 1200), "RGB", "jpeg", {1024: (1024, 768), 256: (256, 192), 128: (128, 96)}),
    Shape((900, 1800), "RGB", "jpeg", {1024: (512, 1024), 256: (128, 256), 128: (64, 128)}),
    Shape((800, 600), "RGBA", "png", {1024: (800, 600), 256: (256, 192), 128: (128, 96)}),
    Shape((2000, 500), "L", "jpeg", {1024: (1024, 256), 256: (256, 64), 128: (128, 32)}),
)


def put_images(bucket: BucketMedia, count: int) -> dict[str, Shape]:
    """`count` images under shoot/ (every third one a folder deeper), each a colour of its own."""
    images = {}
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        path = f"shoot/{'day2/' if index % 3 == 0 else ''}{index:02d}.{shape.suffix}"
        colour = {"RGB": (index * 6, 90, 200), "RGBA": (index * 6, 200, 10, 128), "L": index * 6}[shape.mode]
        stream = io.BytesIO()
        Image.new(shape.mode, shape.size, colour).save(stream, shape.format.upper())
        bucket.put(path, stream.getvalue())
        images[path] = shape
    return images


def check_thumbnails(bucket: BucketMedia, images: dict[str, Shape]) -> None:
    """Every image has every size: a valid image of the right dimensions, content type and record (in
    its metadata and in the image) of this very source; and the thumbnails prefix holds nothing else."""
    expected = []
    for path, shape in images.items():
        etag = bucket.head(bucket.media + path)["ETag"].strip('"')
        record = f"rqkit-thumbnail v2 {shape.format} q85 source etag {etag}"
        for size, dimensions in shape.outputs.items():
            key = bucket.output(size, f"{path}.{shape.suffix}")
            head = bucket.head(key)
            with Image.open(io.BytesIO(bucket.get(key))) as thumb:
                thumb.load()
                found = (head["ContentType"], head["Metadata"].get(RECORD), thumb.format, thumb.size)
                assert found == (f"image/{shape.format}", record, shape.format.upper(), dimensions), key
                assert read_record(thumb) == record, key
            expected.append(key)
    assert sorted(bucket.keys(bucket.thumbs)) == sorted(expected)


def statuses(connection: Redis, ids: list[str]) -> Counter[str]:
    """How many of the jobs are in each status ("missing" for one that is gone)."""
    jobs = Job.fetch_many(ids, connection=connection)
    return Counter(job.get_status(refresh=False).value if job else "missing" for job in jobs)


def settle(connection: Redis, ids: list[str], allowed: set[str], timeout: float) -> Counter[str]:
    """Wait until every job's status is one of `allowed`; their counts. Fails with the counts after
    `timeout` s, or as soon as a job has ended otherwise (failed, say)."""
    start = time.monotonic()
    while not set(counts := statuses(connection, ids)) <= allowed:
        if time.monotonic() - start > timeout or set(counts) & (FINAL - allowed):
            waited = time.monotonic() - start
            raise AssertionError(f"{len(ids)} jobs: {dict(counts)} after {waited:.0f} s, not all {allowed}")
        time.sleep(0.2)
    return counts


def hosts_of_workers(connection: Redis) -> list[tuple[str, str]]:
    """Each registered worker's hostname and state, in order."""
    return sorted((worker.hostname or "", worker.get_state()) for worker in Worker.all(connection=connection))


@pytest.fixture
def on_host(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python ARGS` from the repo root under a hostname of its own (a UTS namespace: root only),
    in this process's environment (the bucket's settings with it), its output in tmp_path/<hostname>.log;
    killed with its children at the end."""
    if os.geteuid() != 0:
        pytest.skip("a hostname of a process's own needs a UTS namespace: root only (CI runs as root)")
    if shutil.which("unshare") is None:
        pytest.skip("unshare not found (util-linux)")
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:  # root, but in a container that may not make namespaces
        pytest.skip(f"unshare --uts refused here: {probe.stderr.strip()}")
    started: list[subprocess.Popen[bytes]] = []

    def start(hostname: str, *args: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{hostname}.log", "ab") as log:
            process = subprocess.Popen(
                ["unshare", "--uts", "sh", "-c", AS_HOST, hostname, sys.executable, *args],
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_two_hosts_on_one_prefix_make_every_size_of_every_image(
    bucket_media: BucketMedia, connection: Redis, on_host: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given 40 images, and a ForkingWorker on each of two hosts, both idle
    images = put_images(bucket_media, 40)
    for hostname in HOSTS:
        on_host(hostname, *WORKER, "images")
    idle = [(hostname, "idle") for hostname in HOSTS]
    wait_until(lambda: hosts_of_workers(connection) == idle, 60, "an idle worker on each host")
    # When 10 images are enqueued twice in a row (each pair taken by both hosts at once), then the
    # thumbnails command enqueues every image not yet up to date
    twice = [(path,) for path in list(images)[:10] for _ in range(2)]
    pairs = submit_many("thumbnail", twice)
    assert pairs.refused == []
    summary = run_json("thumbnails", "shoot", "--recursive")
    assert summary["images"] == 40 and summary["refused"] == []
    assert summary["enqueued"] + summary["up_to_date"] == 40
    total = len(twice) + summary["enqueued"]
    queue = Queue("images", connection=connection)
    ran = (queue.finished_job_registry, queue.failed_job_registry)
    wait_until(lambda: sum(len(registry) for registry in ran) == total, 60, f"{total} jobs to end", every=0.2)

    # Then every job finished, on both hosts, and every image has its whole set
    assert queue.failed_job_registry.get_job_ids() == []
    ids = queue.finished_job_registry.get_job_ids()
    assert statuses(connection, ids) == {"finished": total}
    hosts = {worker.name: worker.hostname for worker in Worker.all(connection=connection)}
    ran_on = Counter(hosts.get(job.worker_name or "", "?") for job in Job.fetch_many(ids, connection))
    assert set(ran_on) == set(HOSTS), ran_on
    check_thumbnails(bucket_media, images)
    assert run_json("thumbnails", "shoot", "--recursive") == {
        "images": 40,
        "enqueued": 0,
        "up_to_date": 40,
        "refused": [],
    }


class TestAStoreThatGoesDown:
    """A store stopped mid-batch and started again: the session's store is shared, so these tests get
    one of their own (the bucket_media fixture takes this class's s3_store)."""

    @pytest.fixture
    def s3_store(self, tmp_path: Path) -> Iterator[S3Store]:
        store = S3Store(tmp_path / "s3")
        store.start()
        store.bucket(BUCKET)
        yield store
        store.stop()

    @pytest.mark.slow
    @pytest.mark.timeout(300)
    def test_jobs_cut_off_by_the_store_are_retried_once_it_is_back_and_end_with_whole_sets(
        self,
        s3_store: S3Store,
        bucket_media: BucketMedia,
        connection: Redis,
        processes: Callable[..., subprocess.Popen[bytes]],
        tmp_path: Path,
    ) -> None:
        # Given 24 queued thumbnail jobs, and a worker (with RQ's scheduler, for the retries) that reaches
        # the store through a proxy failing one PUT of the second job (the fifth PUT) and the DeleteObjects
        # that would take back those written: as if the store had gone meanwhile, part of a set is left
        images = put_images(bucket_media, 24)
        submitted = submit_many("thumbnail", [(path,) for path in images])
        ids = list(submitted.jobs.ids)
        assert len(ids) == 24 and submitted.refused == []
        cut_short = list(images)[1]
        with s3_proxy(s3_store.port) as (port, faults):
            faults.fail = {"PUT": {5}, "POST": {1}}
            # One try per request: a job meets the store's absence at once, not after boto3's back-off
            env = {"RQKIT_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "RQKIT_S3_MAX_ATTEMPTS": "1"}
            worker = processes(*WORKER, "--with-scheduler", "images", env=env, log=tmp_path / "worker.log")
            wait_until(lambda: statuses(connection, ids)["finished"] >= 2, 60, "2 jobs finished", every=0.02)

            # When the store goes away mid-batch (the worker and its horse frozen meanwhile, so that some
            # jobs are left to meet it), then comes back once every job left has failed twice
            os.killpg(worker.pid, signal.SIGSTOP)
            try:
                s3_store.stop()
            finally:
                os.killpg(worker.pid, signal.SIGCONT)
            counts = settle(connection, ids, {"finished", "scheduled"}, 60)
            scheduled = [job for job in Job.fetch_many(ids, connection) if job and job.is_scheduled]
            assert len(scheduled) == counts["scheduled"] > 0 and ids[1] in {job.id for job in scheduled}
            assert {job.retries_left for job in scheduled} == {0}  # rerun at once, then a minute later
            s3_store.start()
            left = [key for key in bucket_media.keys(bucket_media.thumbs) if cut_short in key]
            assert 0 < len(left) < 3, left  # a partial set, through the outage
            # The retries are due within the minute: made due now, as if it had passed (the worker's
            # scheduler still moves them to the queue)
            registry, now = Queue("images", connection=connection).scheduled_job_registry, datetime.now(UTC)
            for job in scheduled:
                assert 0 < (registry.get_scheduled_time(job) - now).total_seconds() <= 60, job.id
                registry.schedule(job, now)

            # Then each job runs again when its retry is due, and ends finished with every size written
            assert settle(connection, ids, {"finished"}, 150) == {"finished": 24}
            check_thumbnails(bucket_media, images)
            assert worker.poll() is None  # and the worker lived through it all
