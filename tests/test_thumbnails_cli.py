"""`enqueue thumbnail` and `thumbnails DIR`: paths, bulk enqueue, up-to-date skips, refusals, --wait."""

from __future__ import annotations

import json
import os
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job

from ops.outcomes import failure_reason
from tests.conftest import Media
from tests.pictures import photo
from tests.support import run


def test_one_job_per_file(media: Media, connection: Redis) -> None:
    photo(media.root / "a.jpg", (100, 80))
    photo(media.root / "b.png", (100, 80))
    result = run("enqueue", "thumbnail", "a.jpg", "b.png", "--size", "64", "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["args"] for r in reports] == [["a.jpg"], ["b.png"]]
    assert Queue("images", connection=connection).job_ids == [r["id"] for r in reports]
    assert Queue("images", connection=connection).jobs[0].kwargs == {"sizes": [64]}


def test_paths_are_taken_from_the_current_directory(media: Media, connection: Redis) -> None:
    (media.root / "albums").mkdir()
    photo(media.root / "albums" / "cat.jpg", (100, 80))
    os.chdir(media.root / "albums")
    result = run("enqueue", "thumbnail", "cat.jpg", "--json")
    assert json.loads(result.stdout)["args"] == ["albums/cat.jpg"]


def test_wait_prints_where_the_thumbnails_went(media: Media, connection: Redis, start_worker: Any) -> None:
    photo(media.root / "path.jpg", (2000, 1000))
    start_worker("images")
    result = run("enqueue", "thumbnail", "path.jpg", "--wait")
    assert result.exit_code == 0, result.output
    assert str(media.output(1024, "path.jpg.jpg")) in result.output
    assert media.output(128, "path.jpg.jpg").exists()


def test_bad_paths_and_options_are_usage_errors(media: Media, connection: Redis) -> None:
    photo(media.root / "ok.jpg", (100, 80))
    photo(media.root.parent / "private.jpg", (100, 80))
    cases = {
        ("../private.jpg",): f"is outside the media root {media.root}",
        ("gone.jpg",): "no such file: gone.jpg",
        ("ok.jpg/",): "ok.jpg/ names a folder, not an image",
        ("ok.jpg", "--size", "0"): "a size must be a whole number from 1 to 8192, got 0",
        ("ok.jpg", "--format", "gif"): "'gif' is not one of 'auto', 'jpeg', 'png', 'webp'",
        (): "Missing argument 'PATHS...'",
    }
    for args, message in cases.items():
        result = run("enqueue", "thumbnail", *args)
        assert (result.exit_code, message in result.output) == (2, True), (args, result.output)
    assert Queue("images", connection=connection).count == 0


def test_a_directory_is_enqueued_in_bulk_and_a_rerun_skips_what_is_up_to_date(
    media: Media, connection: Redis, run_jobs: Any
) -> None:
    for name in ("a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.jpg", ".hidden/e.jpg", "notes.txt"):
        (media.root / name).parent.mkdir(parents=True, exist_ok=True)
        photo(media.root / name, (120, 90), format="JPEG" if name.endswith("txt") else None)
    flat = json.loads(run("thumbnails", ".", "--json").stdout)
    assert (flat["images"], flat["enqueued"]) == (2, 2)
    Queue("images", connection=connection).empty()
    first = json.loads(run("thumbnails", ".", "--recursive", "--size", "64", "--json").stdout)
    assert first == {"images": 4, "enqueued": 4, "up_to_date": 0, "refused": []}
    run_jobs()
    again = json.loads(run("thumbnails", ".", "--recursive", "--size", "64", "--json").stdout)
    assert again == {"images": 4, "enqueued": 0, "up_to_date": 4, "refused": []}
    bigger = json.loads(run("thumbnails", "sub", "-r", "--size", "80", "--json").stdout)
    assert (bigger["enqueued"], bigger["up_to_date"]) == (2, 0)


def test_the_thumbnails_root_inside_the_media_root_is_not_walked(
    media: Media, connection: Redis, monkeypatch: Any, run_jobs: Any
) -> None:
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", str(media.root / "thumbs"))
    photo(media.root / "a.jpg", (120, 90))
    run("thumbnails", ".", "-r")
    run_jobs()
    assert json.loads(run("thumbnails", ".", "-r", "--json").stdout)["images"] == 1


def test_refused_and_failed_files_are_reported_and_exit_1(
    media: Media, connection: Redis, start_worker: Any
) -> None:
    photo(media.root / "good.jpg", (120, 90))
    (media.root / "broken.jpg").write_text("not an image")
    (media.root / "escape.jpg").symlink_to(photo(media.root.parent / "private.jpg", (50, 50)))
    start_worker("images")
    result = run("thumbnails", ".", "--wait", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["enqueued"], summary["finished"]) == (3, 2, 1)
    symlink = "thumbnail: escape.jpg is a symlink (symlinks under the media root are refused)"
    assert summary["refused"] == [{"path": "escape.jpg", "reason": symlink}]
    assert summary["failed"] == [
        {"path": "broken.jpg", "reason": "JobInputError: thumbnail: not an image: broken.jpg"}
    ]
    human = run("thumbnails", ".")
    assert human.output.splitlines()[-2:] == [
        "3 images: 1 enqueued, 1 up to date, 1 refused",
        f"  refused escape.jpg: {symlink}",
    ]


def test_a_directory_outside_the_media_root_is_refused(media: Media) -> None:
    result = run("thumbnails", str(media.root.parent))
    assert result.exit_code == 2 and "is outside the media root" in result.output


def test_an_image_over_the_pixel_limit_is_enqueued_and_fails_cleanly(
    media: Media, connection: Redis, monkeypatch: Any, run_jobs: Any
) -> None:
    monkeypatch.setenv("RQKIT_THUMBNAIL_MAX_PIXELS", "10000")
    photo(media.root / "bomb.png", (500, 500))  # 25 times the limit: past Pillow's warning range
    result = run("thumbnails", ".", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["enqueued"] == 1
    run_jobs()
    [job_id] = Queue("images", connection=connection).failed_job_registry.get_job_ids()
    reason = failure_reason(Job.fetch(job_id, connection=connection))
    assert reason == "JobInputError: thumbnail: bomb.png has more pixels than the limit of 10,000"
