"""What the thumbnail and email jobs may read and write: the toolkit's own data, hidden files, symlinks,
hard links and unusable names are refused at enqueue (one line, exit 2 from the CLI) and in the worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from jobs import submit
from jobs.email import MAX_RECIPIENTS, send_email
from jobs.errors import JobInputError
from jobs.images import thumbnail
from ops.outcomes import wait_for
from tests.conftest import Media
from tests.pictures import photo
from tests.support import run

TEXT = {"subject": "Hi", "text": "see attached"}


@pytest.fixture
def project(media: Media, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The media root as the toolkit's own folder (the default): its var/ with the data it keeps."""
    var = media.root / "var"
    monkeypatch.setenv("RQKIT_VAR_DIR", str(var))
    monkeypatch.delenv("RQKIT_THUMBNAILS_DIR")
    for name, content in {
        "var/content.db": b"SQLite format 3\x00 sessions",
        "var/mail/1.eml": b"Subject: reset your password",
        "var/redis/appendonly.aof": b"*2\r\n$4\r\nAUTH",
        ".git/config": b"[remote]",
        "photos/.secret.jpg": b"",
        ".cache/ok.pdf": b"%PDF",
    }.items():
        (media.root / name).parent.mkdir(parents=True, exist_ok=True)
        (media.root / name).write_bytes(content)
    (media.root / "var" / "thumbnails" / "128").mkdir(parents=True)
    photo(media.root / "var" / "thumbnails" / "128" / "cat.jpg.jpg", (50, 40))
    photo(media.root / "var" / "upload.jpg", (50, 40))
    photo(media.root / "photos" / ".secret.jpg", (50, 40))
    photo(media.root / "cat.jpg", (50, 40))
    return media.root


def refused_everywhere(job: str, kwargs_of: Any, path: str, reason: str) -> None:
    """Refused at enqueue, and by the job function itself (what a worker runs), with the same line."""
    with pytest.raises(JobInputError, match=reason) as at_enqueue:
        submit(job, **kwargs_of(path))
    with pytest.raises(JobInputError, match=reason) as in_worker:
        (thumbnail if job == "thumbnail" else send_email)(
            *kwargs_of(path)["args"], **kwargs_of(path)["kwargs"]
        )
    assert "\n" not in str(at_enqueue.value) + str(in_worker.value)


def as_thumbnail(path: str) -> dict[str, Any]:
    return {"args": (path,), "kwargs": {}}


def as_attachment(path: str) -> dict[str, Any]:
    return {"args": (), "kwargs": {"to": "a@example.com", **TEXT, "attachments": [path]}}


TOOLKIT_DATA = {
    "var/content.db": "the toolkit's own data",
    "var/mail/1.eml": "the toolkit's own data",
    "var/redis/appendonly.aof": "the toolkit's own data",
    "var/upload.jpg": "the toolkit's own data",
    "var/thumbnails/128/cat.jpg.jpg": "the toolkit's own data",
    "./var/../var/content.db": "the toolkit's own data",
    ".git/config": "hidden files and folders",
    "photos/.secret.jpg": "hidden files and folders",
    ".cache/ok.pdf": "hidden files and folders",
}


@pytest.mark.parametrize("path", TOOLKIT_DATA)
@pytest.mark.parametrize("as_job", [as_thumbnail, as_attachment], ids=["thumbnail", "attachment"])
def test_the_toolkits_own_data_and_hidden_files_are_never_read(
    project: Path, connection: Redis, path: str, as_job: Any
) -> None:
    job = "thumbnail" if as_job is as_thumbnail else "email"
    refused_everywhere(job, as_job, path, TOOLKIT_DATA[path])
    refused_everywhere(job, as_job, str(project / path), TOOLKIT_DATA[path])


def test_the_cli_refuses_them_with_exit_2(project: Path, connection: Redis) -> None:
    for path in ("var/content.db", ".git/config", "var/mail/1.eml"):
        for command in (
            ["enqueue", "thumbnail", path],
            ["enqueue", "email", "--to", "a@example.com", "--subject", "s", "--text", "t", "--attach", path],
        ):
            result = run(*command)
            assert result.exit_code == 2, result.output
            assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not any(Queue(name, connection=connection).count for name in ("images", "email"))


def test_another_path_to_the_toolkits_data_is_refused(
    project: Path, connection: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite database outside var/ is the toolkit's data too; a second name of a file could be any file."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{project / 'site.db'}")
    (project / "site.db").write_bytes(b"SQLite format 3\x00")
    os.link(project / "var" / "content.db", project / "innocent.pdf")
    refused_everywhere("email", as_attachment, "site.db", "the toolkit's own data")
    refused_everywhere("email", as_attachment, "innocent.pdf", "innocent.pdf has 2 hard links")


def test_a_media_root_inside_the_toolkits_data_reaches_nothing(
    project: Path, connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_MEDIA_ROOT", str(project / "var"))
    refused_everywhere("email", as_attachment, "content.db", "lies in the toolkit's own data")
    refused_everywhere("thumbnail", as_thumbnail, "upload.jpg", "lies in the toolkit's own data")


def test_symlinks_under_the_media_root_are_refused_even_to_inside_it(
    project: Path, connection: Redis
) -> None:
    (project / "album").symlink_to(project / "photos")
    (project / "alias.jpg").symlink_to(project / "cat.jpg")
    for path, where in (("album/x.jpg", "album"), ("alias.jpg", "alias.jpg")):
        reason = f"{where} is a symlink \\(symlinks under the media root are refused\\)"
        refused_everywhere("thumbnail", as_thumbnail, path, reason)
        refused_everywhere("email", as_attachment, path, reason)


def test_a_fifo_or_a_folder_is_not_a_file(project: Path, connection: Redis) -> None:
    os.mkfifo(project / "pipe.jpg")
    refused_everywhere("email", as_attachment, "pipe.jpg", "pipe.jpg is not a regular file")
    refused_everywhere("thumbnail", as_thumbnail, "photos", "photos is a folder")


def test_a_symlinked_folder_in_the_thumbnails_tree_is_never_written_through(
    media: Media, connection: Redis, tmp_path: Path, run_jobs: Any
) -> None:
    """No race needed: a folder of the thumbnails tree that is a symlink to elsewhere."""
    outside = tmp_path / "outside"
    outside.mkdir()
    photo(media.root / "cat.jpg", (300, 200))
    media.thumbs.mkdir()
    (media.thumbs / "64").symlink_to(outside)
    with pytest.raises(JobInputError, match="thumbnail: 64 is a symlink"):
        submit("thumbnail", ("cat.jpg",), {"sizes": [64]})
    job = Queue("images", connection=connection).enqueue("jobs.images.thumbnail", "cat.jpg", sizes=[64])
    run_jobs()
    reason = wait_for(job, timeout=5).reason
    assert (
        reason == "JobInputError: thumbnail: 64 is a symlink (symlinks under the thumbnails root are refused)"
    )
    assert list(outside.iterdir()) == []


LONG = "x" * 300 + ".jpg"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (LONG, "a name is over 255 bytes"),
        ("y" * 251 + ".jpg", "a file name is over 250 bytes"),  # its thumbnail's name would be over 255
        ("a/" * 3000 + "b.jpg", "no such file"),  # a long path of short names is fine until it isn't there
        ("bad\udcffname.jpg", "cannot hold '\\\\udcff'|is not UTF-8 text"),
        ("line\nbreak.jpg", "cannot hold '\\\\n'"),
        ("para\u2029.jpg", "cannot hold '\\\\u2029'"),
        ("", "PATH must be a path|a path is needed"),
        (".", "the media root itself"),
    ],
)
def test_names_the_file_system_cannot_take_are_refused_in_one_line(
    media: Media, connection: Redis, name: str, reason: str
) -> None:
    refused_everywhere("thumbnail", as_thumbnail, name, reason)


def test_long_and_non_utf8_names_at_the_cli_exit_2(media: Media, connection: Redis) -> None:
    for name in (LONG, "a" * 5000, os.fsdecode(b"caf\xe9.jpg")):
        for command in (
            ["enqueue", "thumbnail", name],
            ["enqueue", "email", "--to", "a@example.com", "--subject", "s", "--text", "t", "--attach", name],
        ):
            result = run(*command)
            assert (result.exit_code, result.exception.__class__) == (2, SystemExit), result.output
            assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\r", "\x00", "\x7f"])
def test_a_subject_holding_any_line_break_or_control_is_refused_at_enqueue(
    connection: Redis, char: str
) -> None:
    with pytest.raises(JobInputError, match="subject must be one line of text"):
        submit("email", (), {"to": "a@example.com", "subject": f"Hi{char}Bcc: x@example.com", "text": "t"})
    with pytest.raises(JobInputError, match="subject must be one line of text"):
        send_email("a@example.com", f"Hi{char}there", "t")


def test_recipients_are_capped_per_message(connection: Redis) -> None:
    many = [f"r{i}@example.com" for i in range(2 * MAX_RECIPIENTS)]
    with pytest.raises(JobInputError, match=f"to: {MAX_RECIPIENTS + 1} addresses; at most {MAX_RECIPIENTS}"):
        submit("email", (), {"to": many[: MAX_RECIPIENTS + 1], **TEXT})
    half = MAX_RECIPIENTS // 2 + 1
    with pytest.raises(
        JobInputError, match=f"{2 * half} recipients \\(to, cc, bcc\\); at most {MAX_RECIPIENTS}"
    ):
        submit("email", (), {"to": many[:half], "bcc": many[half : 2 * half], **TEXT})
    result = run("enqueue", "email", *[f"--to={a}" for a in many * 100], "--subject", "s", "--text", "t")
    assert result.exit_code == 2 and "at most 100" in result.output


def test_the_settings_file_in_use_is_never_attached(
    project: Path, connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_file = project / "config" / "settings.toml"
    settings_file.parent.mkdir()
    settings_file.write_text('redis_url = "redis://127.0.0.1:6379/0"\n')
    monkeypatch.setenv("RQKIT_CONFIG", str(settings_file))
    refused_everywhere("email", as_attachment, "config/settings.toml", "the toolkit's own data")


def test_the_mail_commands_never_read_through_a_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQKIT_VAR_DIR", str(tmp_path / "var"))
    mail = tmp_path / "var" / "mail"
    mail.mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(b"Subject: the secret\r\n\r\nhunter2\r\n")
    (mail / "1700000000000000001-0123abcd.eml").symlink_to(tmp_path / "secret.txt")
    (mail / "1700000000000000000-0123abcd.eml").write_bytes(b"Subject: real\r\n\r\nhello\r\n")
    listed = run("mail", "list")
    assert "real" in listed.stdout and "secret" not in listed.stdout
    shown = run("mail", "show", "1700000000000000001-0123abcd")
    assert shown.exit_code == 2 and "hunter2" not in shown.output
    assert "hello" in run("mail", "show", "latest").stdout
