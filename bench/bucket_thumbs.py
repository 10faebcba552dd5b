"""Thumbnails from and to an S3-compatible bucket against the local-disk figure, in one run.

The corpus of bench/thumbs.py (12 MP JPEGs, a few PNGs with alpha; 3 sizes each) is made into
thumbnails local folder -> local folder, then bucket -> bucket (a SeaweedFS `weed mini` of its own on
loopback, tests/s3.py), then again with everything up to date; each way in-process (the
make_thumbnails core in a loop) and through real `rq worker -c config.rq -w workers.ForkingWorker`
processes on the images queue with a redis-server of its own. S3 calls are counted by operation with
botocore's event hooks, in this process on the toolkit's client, in the workers on the boto3 session
their work-horses make their clients from (each call appends its name to a file).

Usage: .venv/bin/python -m bench.bucket_thumbs [--quick] [--images 60] [--rounds 3] [--workers 2]
       [--worker-class workers.InProcessWorker]
(run as a module from the repo root: it imports bench.thumbs and tests.s3)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from rq.job import Job

from bench.thumbs import CACHE, QUALITY, SIZES, make_corpus
from config import get_settings
from config.settings import PROJECT_ROOT
from jobs import objects, submit_many
from jobs.images import Places, ThumbnailSpec, make_thumbnails
from launcher.redis_server import RedisServer, free_port
from ops.outcomes import listening_workers
from tests.s3 import S3Store

MEDIA_BUCKET, THUMBS_BUCKET = "rqkit-bench-media", "rqkit-bench-thumbs"
OPERATIONS = ("HeadObject", "GetObject", "PutObject")  # the table's HEAD/GET/PUT
QUICK_IMAGES = 12
JOB_DEADLINE = 600.0  # seconds for one run of every job through the workers (a 100-image run takes 10)
# A worker as `rq worker -c config.rq -w workers.ForkingWorker images`, with one addition made before
# config.rq loads boto3: a hook on the session that every work-horse makes its client from, which
# appends each S3 call's name to a file (one small O_APPEND write: atomic across the horses).
COUNTING_WORKER = """
import os, runpy, sys
from jobs import objects
sink = os.open(sys.argv.pop(1), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def count(event_name, **_):
    os.write(sink, event_name.rsplit(".", 1)[-1].encode() + b"\\n")
objects.session().events.register("before-call.s3", count)
sys.argv[0] = "rq"
runpy.run_module("rq.cli", run_name="__main__")
"""


@dataclass
class Run:
    """One way over the corpus: wall seconds, each image's seconds, S3 calls by operation, and the CPU
    seconds the store spent meanwhile (it shares the machine's cores)."""

    way: str
    how: str
    images: int
    seconds: float
    each: list[float]
    calls: Counter[str]
    store_cpu: float


@dataclass
class Bench:
    """What every run needs: the corpus (paths relative to the media root), the Redis connection, the
    store, the temp folder, the S3 calls this process made so far."""

    paths: list[str]
    connection: Redis
    store: S3Store
    work: Path
    calls: Counter[str]
    workers: int
    worker_class: str


def use(env: dict[str, str]) -> Places:
    """Settings from `env` (as an operator sets them), for this process and the workers it starts."""
    os.environ.update(env)
    get_settings.cache_clear()
    return Places.from_settings(get_settings())


def count_calls(calls: Counter[str]) -> None:
    """Count each S3 call the toolkit's client makes in this process, by operation."""

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    objects.client(get_settings()).meta.events.register("before-call.s3", count)


def upload(bench: Bench, corpus: list[Path]) -> float:
    """Put the corpus into the media bucket with the store's own client: MB/s."""
    client = bench.store.client(timeout=60)
    start, total = time.perf_counter(), 0
    for path, key in zip(corpus, bench.paths, strict=True):
        data = path.read_bytes()
        client.put_object(Bucket=MEDIA_BUCKET, Key=f"media/{key}", Body=data)
        total += len(data)
    return total / 2**20 / (time.perf_counter() - start)


def in_process(bench: Bench, places: Places, way: str) -> Run:
    """The core in a loop, in this process."""
    spec = ThumbnailSpec(SIZES, "jpeg", QUALITY)
    before, each, cpu = Counter(bench.calls), [], store_cpu(bench.store)
    start = time.perf_counter()
    for path in bench.paths:
        began = time.perf_counter()
        make_thumbnails(path, places, spec, 10**9)
        each.append(time.perf_counter() - began)
    seconds = time.perf_counter() - start
    calls, cpu = bench.calls - before, store_cpu(bench.store) - cpu
    return Run(way, "in-process", len(bench.paths), seconds, each, calls, cpu)


def store_cpu(store: S3Store) -> float:
    """CPU seconds the store's process has used so far (Linux: /proc)."""
    assert store.process is not None
    fields = Path(f"/proc/{store.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def workers(bench: Bench, sink: Path | None) -> Iterator[None]:
    """`bench.workers` workers of `bench.worker_class` on the images queue, with the current settings,
    registered and idle; stopped (warm shutdown) at the end. With `sink`, each counts its S3 calls into
    that file."""
    rq = ["worker", "-c", "config.rq", "-w", bench.worker_class, "--quiet", "images"]
    command = (
        [sys.executable, "-c", COUNTING_WORKER, str(sink), *rq]
        if sink
        else [sys.executable, "-m", "rq.cli", *rq]
    )
    log = bench.work / "workers.log"
    with open(log, "ab") as out:
        running = [
            subprocess.Popen(command, cwd=PROJECT_ROOT, env=dict(os.environ), stdout=out, stderr=out)
            for _ in range(bench.workers)
        ]
    try:
        deadline = time.monotonic() + 60
        while len(listening_workers("images", bench.connection)) < bench.workers:
            if any(p.poll() is not None for p in running) or time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield
    finally:
        stop(running)


def stop(running: list[subprocess.Popen[bytes]]) -> None:
    """Warm shutdown of each worker (SIGTERM), SIGKILL for one that is still there after 30 s."""
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def through_workers(bench: Bench, way: str, sink: Path | None) -> tuple[Run, float]:
    """Enqueue every image (the registry's submit_many) to the idle workers and wait until all are done:
    the run (each image: its job from start to end), and the seconds the enqueue took."""
    before, cpu = calls_in(sink), store_cpu(bench.store)
    start = time.perf_counter()
    jobs, refused = submit_many(
        "thumbnail", [(p,) for p in bench.paths], {"sizes": list(SIZES), "format": "jpeg"}
    )
    enqueued = time.perf_counter() - start
    assert not refused, refused[:3]
    wait_ended([job.id for job in jobs], bench.connection)
    seconds = time.perf_counter() - start
    calls, cpu = calls_in(sink) - before, store_cpu(bench.store) - cpu
    done = Job.fetch_many([job.id for job in jobs], connection=bench.connection)
    failed = [
        f"{job.id}: {job.get_status()}: {job.latest_result()}" for job in done if job and not job.is_finished
    ]
    assert not failed, failed[:3]
    each = [
        (job.ended_at - job.started_at).total_seconds()
        for job in done
        if job and job.ended_at and job.started_at
    ]
    how = f"{bench.worker_class.rsplit('.', 1)[-1]} x{bench.workers}"
    return Run(way, how, len(jobs), seconds, each, calls, cpu), enqueued


def wait_ended(ids: list[str], connection: Redis) -> None:
    """Poll the jobs' statuses until every one has finished or failed (JOB_DEADLINE at most)."""
    deadline = time.monotonic() + JOB_DEADLINE
    while True:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(f"rq:job:{job_id}", "status")
            statuses = pipe.execute()
        if all(status in (b"finished", b"failed") for status in statuses):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not done after {JOB_DEADLINE:.0f} s: {Counter(statuses)}")
        time.sleep(0.02)


def calls_in(sink: Path | None) -> Counter[str]:
    """The S3 calls the workers counted into `sink` so far."""
    return Counter(sink.read_text().split()) if sink and sink.exists() else Counter()


@dataclass
class Enqueue:
    """What submit_many cost on the way in, for the bucket: seconds, and the S3 calls of its checks."""

    seconds: float
    calls: Counter[str]


def run_in_process(bench: Bench, local: dict[str, str], bucket: dict[str, str]) -> list[Run]:
    """Each way in this process: made from nothing, then again with everything up to date."""
    runs = []
    for way, env in (("local -> local", local), ("bucket -> bucket", bucket)):
        places = use(env)
        runs.append(in_process(bench, places, way))
        runs.append(in_process(bench, places, f"{way}, up to date"))
    return runs


def run_workers(bench: Bench, local: dict[str, str], bucket: dict[str, str]) -> tuple[list[Run], Enqueue]:
    """Each way through the workers, made from nothing, then again with everything up to date."""
    runs = []
    use(local)
    with workers(bench, None):
        for way in ("local -> local", "local -> local, up to date"):
            runs.append(through_workers(bench, way, None)[0])
    use(bucket)
    sink = bench.work / "worker-calls"
    with workers(bench, sink):
        before = Counter(bench.calls)
        run, seconds = through_workers(bench, "bucket -> bucket", sink)
        enqueue = Enqueue(seconds, bench.calls - before)
        runs.append(run)
        runs.append(through_workers(bench, "bucket -> bucket, up to date", sink)[0])
    return runs, enqueue


def empty_thumbnails(bench: Bench) -> None:
    shutil.rmtree(bench.work / "thumbs", ignore_errors=True)
    bench.store.empty(THUMBS_BUCKET)
    bench.connection.flushdb()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument(
        "--rounds", type=int, default=3, help="each way once per round; the table shows medians"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_IMAGES} images, one round: under a minute"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="workers.ForkingWorker", help="rq worker's -w")
    options = parser.parse_args()
    rounds = 1 if options.quick else options.rounds
    corpus = make_corpus(CACHE / "corpus", QUICK_IMAGES if options.quick else options.images)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = RedisServer(free_port(), work / "redis").start()
        store = S3Store(work / "s3")
        try:
            store.start()
            paths = [p.relative_to(CACHE).as_posix() for p in corpus]
            bench = Bench(
                paths,
                Redis.from_url(server.url),
                store,
                work,
                Counter(),
                options.workers,
                options.worker_class,
            )
            runs, enqueues, upload_rate = run_all(bench, corpus, server.url, rounds)
        finally:
            store.stop()
            server.stop()
    print_table(runs, corpus, rounds)
    print_notes(runs, enqueues, upload_rate)
    return 1 if any(run.calls["GetObject"] for run in runs if run.way.endswith("up to date")) else 0


def run_all(
    bench: Bench, corpus: list[Path], redis_url: str, rounds: int
) -> tuple[list[Run], list[Enqueue], float]:
    """Put the corpus into the bucket, then each round: every way in-process, then through the workers,
    each from empty thumbnail roots."""
    (bench.work / "none.toml").write_text("")
    common = {
        **bench.store.env,
        "REDIS_URL": redis_url,
        "RQKIT_CONFIG": str(bench.work / "none.toml"),
        "RQKIT_VAR_DIR": str(bench.work),
    }
    local = {**common, "RQKIT_MEDIA_ROOT": str(CACHE), "RQKIT_THUMBNAILS_DIR": str(bench.work / "thumbs")}
    bucket = {
        **common,
        "RQKIT_MEDIA_ROOT": f"s3://{MEDIA_BUCKET}/media/",
        "RQKIT_THUMBNAILS_DIR": f"s3://{THUMBS_BUCKET}/thumbs/",
    }
    use(bucket)
    count_calls(bench.calls)
    bench.store.bucket(MEDIA_BUCKET)
    bench.store.bucket(THUMBS_BUCKET)
    upload_rate = upload(bench, corpus)
    runs, enqueues = [], []
    for _ in range(rounds):
        empty_thumbnails(bench)
        runs += run_in_process(bench, local, bucket)
        empty_thumbnails(bench)
        worker_runs, enqueue = run_workers(bench, local, bucket)
        runs += worker_runs
        enqueues.append(enqueue)
    return runs, enqueues, upload_rate


def print_table(runs: list[Run], corpus: list[Path], rounds: int) -> None:
    """One line per way and run: the median of the rounds' rates (and their range), the median image."""
    count, jpegs = len(corpus), sum(p.suffix == ".jpg" for p in corpus)
    print(
        f"{count} sources, {jpegs} of them 12 MP JPEGs; 3 sizes each {SIZES}, JPEG q{QUALITY}; "
        f"{rounds} round(s), the median shown"
    )
    print(
        f"{'way':<30}{'run':<20}{'images/s':>9}{'range':>18}{'p50 ms':>8}{'vs local':>9}"
        f"{'store CPU':>10}{'S3 calls':>9}  HEAD/GET/PUT per image"
    )
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in sorted(runs, key=lambda run: (run.way.startswith("bucket"), run.way, run.how != "in-process")):
        groups.setdefault((run.way, run.how), []).append(run)
    rates = {
        key: statistics.median(run.images / run.seconds for run in group) for key, group in groups.items()
    }
    for (way, how), group in groups.items():
        rate, each = rates[way, how], [seconds for run in group for seconds in run.each]
        spread = [run.images / run.seconds for run in group]
        span = f"{min(spread):.1f} to {max(spread):.1f}"
        against = "" if way.endswith("date") else f"{rate / rates['local -> local', how]:.2f}x"
        line = f"{way:<30}{how:<20}{rate:>9.1f}{span:>18}{1000 * statistics.median(each):>8.1f}{against:>9}"
        if way.startswith("bucket"):
            images = sum(run.images for run in group)
            calls = sum((run.calls for run in group), Counter())
            split = "/".join(f"{calls[op] / images:.1f}" for op in OPERATIONS)
            cpu = 1000 * sum(run.store_cpu for run in group) / images
            line += f"{cpu:>7.1f} ms{sum(calls.values()) / images:>9.1f}  {split}"
        print(line)


def print_notes(runs: list[Run], enqueues: list[Enqueue], upload_rate: float) -> None:
    images = sum(run.images for run in runs if run.way == "bucket -> bucket" and run.how != "in-process")
    checks = sum((enqueue.calls for enqueue in enqueues), Counter())
    split = "/".join(f"{checks[op] / images:.1f}" for op in OPERATIONS)
    seconds = statistics.median(enqueue.seconds for enqueue in enqueues)
    print(
        f"enqueue of the bucket's jobs (submit_many): {seconds:.2f} s; "
        f"its checks: {split} HEAD/GET/PUT per image"
    )
    print(f"corpus put into the bucket at {upload_rate:.0f} MB/s (the store's own client, one PUT each)")
    gets = {how: 0 for how in ("in-process", "workers")}
    for run in runs:
        if run.way == "bucket -> bucket, up to date":
            gets["in-process" if run.how == "in-process" else "workers"] += run.calls["GetObject"]
    print(
        f"GETs while up to date (none expected): {gets['in-process']} in-process, "
        f"{gets['workers']} in the workers"
    )


if __name__ == "__main__":
    sys.exit(main())
