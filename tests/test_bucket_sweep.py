"""The cache sweep of a bucket prefix on a real S3-compatible store (SeaweedFS on loopback): age on the
store's clock, a size cap oldest first, a dry run, nothing outside the prefix or hidden, DeleteObjects
batches, a store that is down or refuses, and the CLI. Objects are made old by letting the store's own
clock run on past them: its LastModified is set at PUT."""

from __future__ import annotations

import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from redis import Redis
from rq import Queue

from cli import cli
from config import get_settings
from jobs import enqueue
from jobs.errors import JobInputError, UpstreamError
from jobs.maintenance import sweep_cache
from jobs.objects import client
from ops.outcomes import wait_for
from tests.conftest import BUCKET, BucketMedia, fresh_clients
from tests.s3 import S3Store
from tests.s3_proxy import s3_proxy

DAY = 86400


@functools.cache
def s3(store: S3Store) -> Any:
    """One client of the store for the tests' own requests (a client costs a tenth of a second)."""
    return store.client()


def store_time(store: S3Store, bucket: str = BUCKET) -> datetime:
    """The store's clock: the Date of its reply to a listing."""
    reply = s3(store).list_objects_v2(Bucket=bucket, MaxKeys=1)
    return parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])


def wait_for_store_time(store: S3Store, moment: datetime) -> None:
    """Until the store's clock reads `moment` or later (it ticks in whole seconds)."""
    deadline = time.monotonic() + 30
    while store_time(store) < moment:
        assert time.monotonic() < deadline, f"the store's clock never reached {moment}"
        time.sleep(0.1)


def put(store: S3Store, key: str, size: int, bucket: str = BUCKET) -> datetime:
    """An object of `size` bytes; its LastModified."""
    s3(store).put_object(Bucket=bucket, Key=key, Body=b"x" * size)
    return s3(store).head_object(Bucket=bucket, Key=key)["LastModified"]


def put_only(store: S3Store, key: str) -> None:
    """A one-byte object, without asking for its LastModified."""
    s3(store).put_object(Bucket=BUCKET, Key=key, Body=b"x")


def keys(store: S3Store, prefix: str, bucket: str = BUCKET) -> list[str]:
    pages = s3(store).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [entry["Key"] for page in pages for entry in page.get("Contents", [])]


def targets(monkeypatch: pytest.MonkeyPatch, **table: dict[str, Any]) -> None:
    monkeypatch.setenv("RQKIT_CACHE_TARGETS", json.dumps(table))
    get_settings.cache_clear()


def sweep(target: str, dry_run: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = sweep_cache(target, dry_run=dry_run)["targets"][0]
    return report


def figures(report: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(report[name] for name in names)


def precious(bucket_media: BucketMedia) -> list[str]:
    """Old objects a sweep of the thumbnails prefix must leave: a sibling prefix, the test's own level,
    the bucket's root, and hidden names inside the prefix."""
    test = bucket_media.thumbs.removesuffix("thumbs/")
    return [
        f"{test}thumbs-old/keep.jpg",
        f"{test}keep.jpg",
        f"{test.rstrip('/')}-root.jpg",
        f"{bucket_media.thumbs}.hidden/keep.jpg",
        f"{bucket_media.thumbs}b/.partial.jpg",
    ]


def test_bucket_sweep_by_age_then_by_size_oldest_first(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    # Given: the default thumbnails target (kind disk, no path) on a bucket; two objects, and those a
    # sweep must never touch, made 6 s old on the store's clock; then two 1,000-byte objects, and a
    # second later four more, whose keys sort before the older two.
    store, thumbs = bucket_media.store, bucket_media.thumbs
    for key in precious(bucket_media):
        put(store, key, 100)
    written = [put(store, f"{thumbs}a/old.jpg", 100), put(store, f"{thumbs}empty-soon/only.jpg", 100)]
    wait_for_store_time(store, max(written) + timedelta(seconds=6))
    older = [put(store, f"{thumbs}b/{i}.jpg", 1000) for i in (4, 5)]
    wait_for_store_time(store, max(older) + timedelta(seconds=1))
    for i in range(4):
        put(store, f"{thumbs}b/{i}.jpg", 1000)
    # 5 s: past the first two (6 s and more), not the recent six, if the sweeps start within 5 s.
    targets(monkeypatch, thumbnails={"max_age_days": 5 / DAY, "max_size_mb": 4000 / 2**20})
    before = keys(store, "")

    # When: a dry run, then a sweep
    dry = sweep("thumbnails", dry_run=True)
    assert keys(store, "") == before
    report = sweep("thumbnails")

    # Then: the same figures; the two old ones and the two oldest recent ones gone, not the first by key
    assert figures(dry, "deleted", "bytes_freed", "would_delete", "would_free_bytes") == (0, 0, 4, 2200)
    assert figures(dry, "examined", "status", "batches") == (8, "dry run", 0)
    assert figures(report, "deleted", "bytes_freed", "examined", "batches") == (4, 2200, 8, 1)
    assert figures(report, "status", "folders_removed") == ("done", 0) and "would_delete" not in report
    assert keys(store, thumbs) == sorted(
        [f"{thumbs}.hidden/keep.jpg", f"{thumbs}b/.partial.jpg", *(f"{thumbs}b/{i}.jpg" for i in range(4))]
    )
    assert all(key in keys(store, "") for key in precious(bucket_media))


def test_a_size_cap_alone_keeps_the_newest_and_nothing_is_aged(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    store, url = bucket_media.store, f"s3://{BUCKET}/{bucket_media.thumbs}"
    first = put(store, f"{bucket_media.thumbs}z.bin", 300)
    wait_for_store_time(store, first + timedelta(seconds=1))
    for name in "abc":
        put(store, f"{bucket_media.thumbs}{name}.bin", 300)
    targets(monkeypatch, cap={"kind": "s3", "url": url, "max_size_mb": 600 / 2**20})
    assert (sweep("cap", dry_run=True)["would_delete"], sweep("cap")["deleted"]) == (2, 2)
    assert keys(store, bucket_media.thumbs) == [f"{bucket_media.thumbs}{name}.bin" for name in "bc"]
    targets(monkeypatch, cap={"kind": "s3", "url": url, "max_size_mb": 1})  # under the cap: no second listing
    assert (sweep("cap")["deleted"], len(keys(store, bucket_media.thumbs))) == (0, 2)


def calls_of(operation: str) -> list[int]:
    """The number of keys in each of the toolkit client's requests of one kind (boto3's event hooks)."""
    seen: list[int] = []
    client(get_settings()).meta.events.register(
        f"provide-client-params.s3.{operation}",
        lambda params, **_: seen.append(len(params["Delete"]["Objects"])),
    )
    return seen


@pytest.mark.slow
def test_2500_objects_go_in_batches_of_1000_and_the_sibling_prefix_stays(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    store, cache = bucket_media.store, bucket_media.thumbs.replace("thumbs/", "cache/")
    sibling = cache.replace("cache/", "cache-old/")
    with ThreadPoolExecutor(8) as pool:  # a client is safe to share between threads
        list(pool.map(lambda i: put_only(store, f"{cache}{i}.bin"), range(2500)))
    put(store, f"{sibling}keep.bin", 10)
    wait_for_store_time(store, store_time(store) + timedelta(seconds=2))
    url = f"s3://{BUCKET}/{cache}"
    targets(monkeypatch, cache={"kind": "s3", "url": url, "max_size_mb": 1000 / 2**20})
    assert sweep("cache", dry_run=True)["would_free_bytes"] == 1500  # the cap's heap over 2,500
    targets(monkeypatch, cache={"kind": "s3", "url": url, "max_age_days": 1 / DAY})
    requests = calls_of("DeleteObjects")
    report = sweep("cache")
    assert figures(report, "examined", "deleted", "bytes_freed") == (2500, 2500, 2500)
    assert (sorted(requests), report["batches"]) == ([500, 1000, 1000], 3)
    assert keys(store, cache) == [] and keys(store, sibling) == [f"{sibling}keep.bin"]


@pytest.mark.slow
def test_a_store_that_is_down_fails_the_job_with_its_reason_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    store = S3Store(tmp_path / "s3")
    store.start()
    try:
        s3(store).create_bucket(Bucket="down")
        written = [put(store, f"thumbs/{i}.jpg", 10, "down") for i in range(3)]
        for name, value in {**store.env, "RQKIT_S3_MAX_ATTEMPTS": "1", "RQKIT_S3_TIMEOUT": "2"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", "s3://down/thumbs/")
        targets(monkeypatch, thumbnails={"max_age_days": 1 / DAY})
        fresh_clients()
        job = enqueue("sweep-cache", "thumbnails")  # settings are checked; the store is not asked
        store.stop()
        run_jobs()
        job.refresh()
        # transient: rerun at once, then later
        assert job.get_status() == "scheduled" and job.retries_left == 0
        Queue("maintenance", connection=connection).enqueue_job(job)  # the retry due in a minute: now
        run_jobs()
        outcome = wait_for(job, timeout=10)
        assert outcome.status == "failed"
        assert outcome.reason.startswith("UpstreamError: cache target 'thumbnails': s3://down/thumbs/: ")
        assert "Could not connect" in outcome.reason and "\n" not in outcome.reason
        store.start()
        assert keys(store, "", "down") == [f"thumbs/{i}.jpg" for i in range(3)]
        assert max(written) < store_time(store, "down") - timedelta(seconds=1)  # old enough, had it been up
    finally:
        store.stop()
        fresh_clients()


def test_a_refused_delete_is_a_transient_error_and_the_objects_stay(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    written = [put(bucket_media.store, f"{bucket_media.thumbs}{i}.jpg", 10) for i in range(3)]
    wait_for_store_time(bucket_media.store, max(written) + timedelta(seconds=2))
    targets(monkeypatch, thumbnails={"max_age_days": 1 / DAY})
    with s3_proxy(bucket_media.store.port) as (port, faults):
        monkeypatch.setenv("RQKIT_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("RQKIT_S3_MAX_ATTEMPTS", "1")
        get_settings.cache_clear()
        faults.fail = {"POST": {1}}  # DeleteObjects is a POST
        with pytest.raises(UpstreamError, match=r"^cache target 'thumbnails': s3://.*503 ServiceUnavailable"):
            sweep("thumbnails")
        assert len(keys(bucket_media.store, bucket_media.thumbs)) == 3
        assert sweep("thumbnails")["deleted"] == 3  # the rerun
    assert keys(bucket_media.store, bucket_media.thumbs) == []


def test_a_bucket_target_that_holds_the_media_root_is_refused(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    above = bucket_media.media.removesuffix("media/")
    bucket_media.put("photo.jpg", b"a source")
    targets(monkeypatch, wide={"kind": "s3", "url": f"s3://{BUCKET}/{above}", "max_size_mb": 0.0})
    reason = (
        rf"^cache target 'wide': s3://{BUCKET}/{above} holds the media root .*: a sweep would delete media$"
    )
    for attempt in (
        lambda: enqueue("sweep-cache", "wide"),
        lambda: enqueue("sweep-cache"),
        lambda: sweep("wide"),
    ):
        with pytest.raises(JobInputError, match=reason):
            attempt()
    assert keys(bucket_media.store, bucket_media.media) == [f"{bucket_media.media}photo.jpg"]


def test_the_cli_sweeps_the_thumbnails_bucket_on_a_real_worker_and_prints_the_report(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis, start_worker: Any
) -> None:
    written = put(bucket_media.store, f"{bucket_media.thumbs}128/old.jpg.jpg", 10)
    wait_for_store_time(bucket_media.store, written + timedelta(seconds=2))
    targets(monkeypatch, thumbnails={"max_age_days": 1 / DAY})
    start_worker("maintenance")  # `rq worker -c config.rq`: the sweep runs in a forked work-horse
    runner = CliRunner()
    dry = runner.invoke(cli, ["enqueue", "sweep-cache", "thumbnails", "--dry-run", "--wait"])
    assert dry.exit_code == 0, dry.output
    line, outcome = dry.stdout.splitlines()
    assert line.startswith('sweep-cache "thumbnails" dry_run=true: finished as job ')
    report = json.loads(outcome.removeprefix("finished: "))["targets"][0]
    assert figures(report, "target", "would_delete", "would_free_bytes") == ("thumbnails", 1, 10)
    done = runner.invoke(cli, ["enqueue", "sweep-cache", "--wait", "--json"])  # every target
    assert done.exit_code == 0, done.output
    (swept,) = json.loads(done.stdout)["result"]["targets"]
    assert swept.pop("seconds") >= 0 and swept.pop("longest_step_ms") > 0  # the one DeleteObjects
    assert swept == {
        "target": "thumbnails",
        "dry_run": False,
        "examined": 1,
        "deleted": 1,
        "batches": 1,
        "bytes_freed": 10,
        "folders_removed": 0,
        "status": "done",
    }
    assert keys(bucket_media.store, bucket_media.thumbs) == []


def test_a_host_clock_running_ahead_of_the_store_deletes_nothing_early(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    for i in range(3):
        put(bucket_media.store, f"{bucket_media.thumbs}{i}.jpg", 10)
    targets(monkeypatch, thumbnails={"max_age_days": 5 / (24 * 60)})  # 5 minutes
    # This host's clock 10 minutes ahead (S3 signatures allow 15): by it, every object is past 5 minutes.
    with freeze_time(timedelta(minutes=10), tick=True):
        report = sweep("thumbnails")
    assert (report["examined"], report["deleted"]) == (3, 0)
    assert len(keys(bucket_media.store, bucket_media.thumbs)) == 3
