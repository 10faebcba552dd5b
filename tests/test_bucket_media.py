"""Media and thumbnails in a bucket of a real S3-compatible store (SeaweedFS on loopback): the thumbnail
job, reruns that download nothing, confinement, attachments, a store that fails, and the CLI."""

from __future__ import annotations

import io
import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from redis import Redis
from rq import Queue

from cli import cli
from config import get_settings
from jobs import enqueue
from jobs.errors import JobInputError, UpstreamError
from jobs.image_places import RECORD
from jobs.images import Places, ThumbnailSpec, make_thumbnails
from jobs.media import media_tree, read_files
from jobs.objects import client
from launcher.redis_server import free_port
from ops.outcomes import wait_for
from tests.conftest import BUCKET, BucketMedia, Media, fresh_clients
from tests.s3_proxy import s3_proxy
from tests.smtp_servers import smtp_server


def jpeg(size: tuple[int, int] = (800, 600), colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    stream = io.BytesIO()
    Image.new("RGB", size, colour).save(stream, "JPEG")
    return stream.getvalue()


def png_with_alpha(size: tuple[int, int] = (400, 300)) -> bytes:
    stream = io.BytesIO()
    Image.new("RGBA", size, (10, 200, 10, 128)).save(stream, "PNG")
    return stream.getvalue()


def make(path: str, sizes: list[int] | None = None, fmt: str = "auto") -> dict[str, Any]:
    settings = get_settings()
    spec = ThumbnailSpec.build(sizes, fmt, settings)
    return make_thumbnails(path, Places.from_settings(settings), ThumbnailSpec(spec.sizes, fmt, 85), 10**8)


def calls_of(operation: str) -> list[str]:
    """Count the toolkit client's requests of one kind (boto3's own event hooks: nothing replaced)."""
    seen: list[str] = []
    client(get_settings()).meta.events.register(
        f"before-call.s3.{operation}", lambda params, **_: seen.append(params["url_path"])
    )
    return seen


def test_thumbnails_from_and_to_the_bucket_carry_type_and_record(bucket_media: BucketMedia) -> None:
    bucket_media.put("photos/cat.jpg", jpeg())
    report = make("photos/cat.jpg", [256, 128])
    assert report["source"] == "photos/cat.jpg" and report["skipped"] == {}
    etag = bucket_media.head(bucket_media.media + "photos/cat.jpg")["ETag"].strip('"')
    for size, shape in ((256, (256, 192)), (128, (128, 96))):
        key = bucket_media.output(size, "photos/cat.jpg.jpg")
        assert report["written"][str(size)] == f"s3://{BUCKET}/{key}"
        head = bucket_media.head(key)
        assert head["ContentType"] == "image/jpeg"
        assert head["Metadata"][RECORD] == f"rqkit-thumbnail v2 jpeg q85 source etag {etag}"
        with Image.open(io.BytesIO(bucket_media.get(key))) as thumb:
            assert thumb.size == shape and thumb.format == "JPEG"
            assert thumb.info["comment"].decode() == head["Metadata"][RECORD]


def test_a_rerun_skips_what_is_up_to_date_without_downloading_the_source(bucket_media: BucketMedia) -> None:
    bucket_media.put("a.jpg", jpeg())
    make("a.jpg", [64, 32])
    gets, puts = calls_of("GetObject"), calls_of("PutObject")
    again = make("a.jpg", [64, 32])
    assert again["written"] == {} and set(again["skipped"]) == {"64", "32"}
    assert gets == [] and puts == []
    bucket_media.put("a.jpg", jpeg(colour=(0, 0, 255)))  # a new version: made again, from one GET
    third = make("a.jpg", [64, 32])
    assert set(third["written"]) == {"64", "32"} and len(gets) == 1 and len(puts) == 2
    with Image.open(io.BytesIO(bucket_media.get(bucket_media.output(64, "a.jpg.jpg")))) as thumb:
        assert thumb.convert("RGB").getpixel((5, 5))[2] > 200


def test_auto_format_gives_png_for_alpha_and_other_parameters_make_it_again(
    bucket_media: BucketMedia,
) -> None:
    bucket_media.put("logo.png", png_with_alpha())
    make("logo.png", [100])
    key = bucket_media.output(100, "logo.png.png")
    assert bucket_media.head(key)["ContentType"] == "image/png"
    assert make("logo.png", [100])["written"] == {}
    assert set(make("logo.png", [100], fmt="webp")["written"]) == {"100"}
    assert bucket_media.head(bucket_media.output(100, "logo.png.webp"))["ContentType"] == "image/webp"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../escape.jpg", "outside the media root"),
        ("/etc/passwd", "outside the media root"),
        (f"s3://{BUCKET}/elsewhere/a.jpg", "outside the media root"),
        ("s3://other-bucket/a.jpg", "outside the media root"),
        (".hidden/a.jpg", "hidden files and folders"),
        ("missing.jpg", "no such object"),
        ("notes.jpg", "not an image"),
    ],
)
def test_bad_sources_fail_with_their_reason(bucket_media: BucketMedia, path: str, reason: str) -> None:
    bucket_media.put("notes.jpg", b"plain text, not a picture")
    with pytest.raises(JobInputError, match=reason):
        make(path)


def test_the_thumbnails_prefix_is_never_a_source(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thumbnails inside the media prefix (one bucket for both) are the toolkit's own data."""
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", f"s3://{BUCKET}/{bucket_media.media}thumbs")
    bucket_media.put("thumbs/256/x.jpg.jpg", jpeg())
    with pytest.raises(JobInputError, match="the toolkit's own data"):
        make("thumbs/256/x.jpg.jpg")
    with pytest.raises(JobInputError, match="the toolkit's own data"):
        make(f"s3://{BUCKET}/{bucket_media.media}thumbs/../thumbs/256/x.jpg.jpg")


def test_credentials_the_store_refuses_fail_at_once_and_are_never_shown(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket_media.put("cat.jpg", jpeg())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    fresh_clients()
    with pytest.raises(JobInputError) as refused:
        make("cat.jpg")
    assert "cat.jpg: the store answered 403 Forbidden" in str(refused.value)
    assert "wrong-secret-value" not in str(refused.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    fresh_clients()
    with pytest.raises(JobInputError, match="403 Forbidden"):
        enqueue("thumbnail", "cat.jpg")


def test_a_source_over_the_memory_limit_is_refused_before_it_is_downloaded(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_THUMBNAIL_MEMORY_MB", "1")
    bucket_media.put("big.jpg", b"\xff" * (2 * 2**20))
    gets = calls_of("GetObject")
    with pytest.raises(JobInputError, match="over the 1 MB memory limit"):
        make("big.jpg")
    assert gets == []


def test_local_sources_to_bucket_thumbnails_and_back(
    bucket_media: BucketMedia, media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each root is a folder or a bucket prefix, whatever the other is."""
    Image.new("RGB", (300, 200), "red").save(media.root / "local.jpg")
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", f"s3://{BUCKET}/{bucket_media.thumbs}")
    assert set(make("local.jpg", [50])["written"]) == {"50"}
    assert bucket_media.head(bucket_media.output(50, "local.jpg.jpg"))["ContentType"] == "image/jpeg"
    assert make("local.jpg", [50])["written"] == {}

    monkeypatch.setenv("RQKIT_MEDIA_ROOT", f"s3://{BUCKET}/{bucket_media.media}")
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", str(media.thumbs))
    get_settings.cache_clear()
    bucket_media.put("remote.jpg", jpeg())
    assert set(make("remote.jpg", [50])["written"]) == {"50"}
    with Image.open(media.output(50, "remote.jpg.jpg")) as thumb:
        assert thumb.size == (50, 38)
    assert make("remote.jpg", [50])["written"] == {}


def test_attachments_come_from_the_bucket_within_the_size_limit(bucket_media: BucketMedia) -> None:
    bucket_media.put("invoices/march.pdf", b"%PDF-1.4 march")
    bucket_media.put("huge.bin", b"\0" * (2 * 2**20 + 1))
    tree = media_tree(get_settings(), "email: attachment")
    assert read_files(["invoices/march.pdf"], tree, 20, 2) == [("march.pdf", b"%PDF-1.4 march")]
    with pytest.raises(JobInputError, match="huge.bin is over 2 MB"):
        read_files(["huge.bin"], tree, 20, 2)
    with pytest.raises(JobInputError, match="no such object"):
        read_files(["invoices/april.pdf"], tree, 20, 2)
    with pytest.raises(JobInputError, match="outside the media root"):
        read_files(["../secret.txt"], tree, 20, 2)


def test_an_email_goes_with_its_attachment_from_the_bucket(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    bucket_media.put("invoices/march.pdf", b"%PDF-1.4 march")
    with smtp_server("none") as server:
        monkeypatch.setenv("RQKIT_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("RQKIT_SMTP_PORT", str(server.port))
        monkeypatch.setenv("RQKIT_SMTP_SECURITY", "none")
        get_settings.cache_clear()
        job = enqueue(
            "email", ["ann@example.com"], "March", text="Attached", attachments=["invoices/march.pdf"]
        )
        run_jobs()
        assert wait_for(job, timeout=10).status == "finished"
        [(_, raw)] = server.handler.received
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    [attached] = list(message.iter_attachments())
    assert (attached.get_filename(), attached.get_content()) == ("march.pdf", b"%PDF-1.4 march")


def test_an_error_on_the_second_put_leaves_no_output_and_the_retry_writes_all(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All sizes or none: a PUT that fails takes back those written before it; the job's error is
    transient (an UpstreamError, retried), and the next run writes the whole set."""
    bucket_media.put("set.jpg", jpeg())
    with s3_proxy(bucket_media.store.port) as (port, faults):
        monkeypatch.setenv("RQKIT_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("RQKIT_S3_MAX_ATTEMPTS", "1")
        faults.fail = {"PUT": {2}}
        with pytest.raises(UpstreamError, match="503 ServiceUnavailable"):
            make("set.jpg", [300, 200, 100])
        assert bucket_media.keys(bucket_media.thumbs) == []
        assert set(make("set.jpg", [300, 200, 100])["written"]) == {"300", "200", "100"}
    assert len(bucket_media.keys(bucket_media.thumbs)) == 3


def test_taking_back_a_failed_set_leaves_what_another_job_wrote_meanwhile(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs on one image: the one whose PUT fails deletes only its own writes, never the same
    keys the other job has written since."""
    bucket_media.put("pair.jpg", jpeg())
    theirs = bucket_media.output(300, "pair.jpg.jpg")

    def note_the_path(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["path"] = params["url_path"]

    def other_job_writes_after_ours(context: dict[str, Any], **_: Any) -> None:
        if context["path"].endswith("/300/pair.jpg.jpg"):
            bucket_media.store.client().put_object(Bucket=BUCKET, Key=theirs, Body=b"the other job's")

    with s3_proxy(bucket_media.store.port) as (port, faults):
        monkeypatch.setenv("RQKIT_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("RQKIT_S3_MAX_ATTEMPTS", "1")
        faults.fail_paths = {("PUT", "/100/pair.jpg.jpg")}
        events = client(get_settings()).meta.events
        events.register("before-call.s3.PutObject", note_the_path)
        events.register("after-call.s3.PutObject", other_job_writes_after_ours)
        with pytest.raises(UpstreamError, match="503"):
            make("pair.jpg", [300, 200, 100])
    assert bucket_media.keys(bucket_media.thumbs) == [theirs]  # ours (200) taken back, theirs kept
    assert bucket_media.get(theirs) == b"the other job's"


def test_a_tight_memory_cap_still_makes_thumbnails_one_request_after_another(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a small cap there is no room for threads' stacks: the requests go one by one."""
    from jobs.images import thumbnail

    monkeypatch.setenv("RQKIT_THUMBNAIL_MEMORY_MB", "16")
    bucket_media.put("small.jpg", jpeg((120, 90)))
    assert set(thumbnail("small.jpg", [64, 32])["written"]) == {"64", "32"}


def test_a_slow_store_times_out_as_a_transient_error(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket_media.put("slow.jpg", jpeg())
    with s3_proxy(bucket_media.store.port) as (port, faults):
        monkeypatch.setenv("RQKIT_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("RQKIT_S3_MAX_ATTEMPTS", "1")
        monkeypatch.setenv("RQKIT_S3_TIMEOUT", "0.5")
        faults.delay = 2
        with pytest.raises(UpstreamError, match="slow.jpg: ReadTimeoutError"):
            make("slow.jpg", [64])
    assert bucket_media.keys(bucket_media.thumbs) == []


def test_a_store_that_is_down_fails_the_job_after_its_retries_with_a_reason(
    bucket_media: BucketMedia, monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    bucket_media.put("down.jpg", jpeg())
    job = enqueue("thumbnail", "down.jpg")  # checked against the store, which is there
    monkeypatch.setenv("RQKIT_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # then nothing listens
    monkeypatch.setenv("RQKIT_S3_MAX_ATTEMPTS", "1")
    get_settings.cache_clear()
    with pytest.raises(UpstreamError, match="Could not connect"):
        enqueue("thumbnail", "down.jpg")  # a new job is refused at once, with the reason
    run_jobs()
    job.refresh()
    assert job.get_status() == "scheduled" and job.retries_left == 0  # transient: rerun at once, then later
    Queue("images", connection=connection).enqueue_job(job)  # the retry due in a minute: now
    run_jobs()
    outcome = wait_for(job, timeout=10)
    assert outcome.status == "failed"
    assert outcome.reason.startswith("UpstreamError: thumbnail: s3://"), outcome.reason
    assert "Could not connect" in outcome.reason
    assert bucket_media.keys(bucket_media.thumbs) == []


def test_the_cli_walks_a_prefix_in_pages_and_a_rerun_finds_all_up_to_date(
    bucket_media: BucketMedia, connection: Redis, run_jobs: Any
) -> None:
    for index in range(3):
        bucket_media.put(f"album/{index}.jpg", jpeg((64, 48)))
    bucket_media.put("album/deeper/3.png", png_with_alpha((40, 30)))
    bucket_media.put("album/readme.txt", b"not an image")
    bucket_media.put("album/.hidden.jpg", jpeg((64, 48)))
    runner = CliRunner()
    first = runner.invoke(cli, ["thumbnails", "album", "--recursive", "--size", "32", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"images": 4, "enqueued": 4, "up_to_date": 0, "refused": []}
    run_jobs()
    again = runner.invoke(cli, ["thumbnails", "album", "--recursive", "--size", "32", "--json"])
    assert json.loads(again.stdout) == {"images": 4, "enqueued": 0, "up_to_date": 4, "refused": []}
    shallow = runner.invoke(cli, ["thumbnails", f"s3://{BUCKET}/{bucket_media.media}album", "--json"])
    assert json.loads(shallow.stdout)["images"] == 3
    outside = runner.invoke(cli, ["thumbnails", "../other"])
    assert outside.exit_code == 2 and "outside the media root" in outside.output


def test_enqueue_checks_the_object_before_the_job_is_queued(
    bucket_media: BucketMedia, connection: Redis
) -> None:
    bucket_media.put("ok.jpg", jpeg())
    assert enqueue("thumbnail", "ok.jpg").args == ("ok.jpg",)
    with pytest.raises(JobInputError, match="no such object"):
        enqueue("thumbnail", "nope.jpg")
