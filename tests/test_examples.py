"""The example web apps (examples/flask_app, examples/django_site), each a real HTTP server with a real
worker behind it, driven in headless Chromium: an upload answers at once with the job still queued,
and the job page then shows the thumbnails (or the failure's reason); a sign-up sent twice sends one
welcome email; the home page shows the word counts once counted. Neither imports the toolkit's own
`config`, `jobs` or `scheduler`: the Django project's `config` is its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from rq.command import send_stop_job_command
from rq.registry import FinishedJobRegistry

from config import get_settings
from config.settings import PROJECT_ROOT
from rqkit import Toolkit
from tests.conftest import Media
from tests.pictures import photo
from tests.smtp_servers import Scripted, smtp_server
from tests.support import run_json, wait_until
from tests.test_dashboard import chromium
from tests.web_apps import EXAMPLES, serving

WAIT = 60  # s for any one job, on a busy machine (a bound, not a speed test)
ALL_LOADED = """() => {
    const shown = [...document.querySelectorAll('#thumbnails img')];
    return shown.length > 0 && shown.every(img => img.complete) && shown.map(img => img.naturalWidth);
}"""


@dataclass
class Stack:
    """What the example runs beside: the toolkit's worker, the SMTP server, the media roots."""

    connection: Redis
    toolkit: Toolkit
    smtp: Scripted
    media: Media


@pytest.fixture
def stack(
    connection: Redis,
    media: Media,
    engine: Any,
    processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    with smtp_server("none") as smtp:
        for name, value in {"HOST": "127.0.0.1", "PORT": str(smtp.port), "SECURITY": "none"}.items():
            monkeypatch.setenv(f"RQKIT_SMTP_{name}", value)
        get_settings.cache_clear()
        worker = ["-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.ForkingWorker"]
        processes(*worker, "images", "email", "maintenance", log=tmp_path / "worker.log")
        wait_until(lambda: connection.scard("rq:workers") == 1, timeout=WAIT, what="the worker")
        with Toolkit(timeout=20) as toolkit:
            yield Stack(connection, toolkit, smtp.handler, media)


def status(stack: Stack, job_id: str) -> str | None:
    found = stack.toolkit.job(job_id)
    return None if found is None else str(found["status"])


class Pages:
    """A browser tab on the example, keeping a screenshot of each page it looks at."""

    def __init__(self, page: Any, shots: Path) -> None:
        self.page, self.shots = page, shots
        shots.mkdir()

    def shoot(self, name: str) -> None:
        taken = len(list(self.shots.iterdir()))
        self.page.screenshot(path=self.shots / f"{taken:02d}-{name}.png", full_page=True)

    def follow(self, link: str) -> None:
        self.page.get_by_role("link", name=link, exact=True).click()
        self.page.wait_for_load_state()

    def upload(self, name: str, data: bytes) -> str:
        """Upload `data` as a file the client calls `name`: the job's id, from the page the POST's 303
        led to."""
        self.follow("Upload a picture")
        self.page.locator("input[type=file]").set_input_files(
            files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}]
        )
        with self.page.expect_response(lambda answer: answer.request.method == "POST") as posted:
            self.page.get_by_role("button", name="Upload").click()
        assert posted.value.status == 303
        self.page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]+/?$"))
        return str(self.page.url.rstrip("/").rsplit("/", 1)[1])

    def sign_up(self, name: str, address: str) -> str:
        """Send the sign-up form; what the page then says."""
        self.page.get_by_label(re.compile("Name")).fill(name)
        self.page.get_by_label(re.compile("Email")).fill(address)
        self.page.get_by_role("button", name="Sign up").click()
        return str(self.page.locator(".message").inner_text())


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_example_answers_at_once_and_shows_the_work_when_done(
    example: str, stack: Stack, tmp_path: Path
) -> None:
    with chromium() as browser, serving(example, tmp_path / "app.log") as url:
        tab = browser.new_page()
        tab.set_default_timeout(15_000)
        pages = Pages(tab, tmp_path / "screenshots")
        tab.goto(url + "/")
        assert tab.locator("#word-counts").inner_text().count("not counted yet") == 2
        pages.shoot("home-not-counted")

        thumbnails_shown_when_done(pages, stack)
        failure_shown(pages, stack)
        one_welcome_email(pages, stack)
        word_counts_shown(pages, stack)
    assert "Traceback" not in (tmp_path / "app.log").read_text()  # nor on Ctrl-C, which stopped it


def thumbnails_shown_when_done(pages: Pages, stack: Stack) -> None:
    """With the worker busy, the upload's answer and the job page come while the job is queued; once
    the worker is free, the page shows the three thumbnails, served by the app."""
    busy = stack.toolkit.submit("sleep", [600], queue="images")
    wait_until(lambda: status(stack, busy["id"]) == "started", timeout=WAIT, what="the worker busy")
    job_id = pages.upload("../../cat.jpg", photo(stack.media.root.parent / "cat.jpg").read_bytes())
    assert pages.page.locator("#status").inner_text() == "queued"
    assert status(stack, job_id) == "queued"
    [saved] = (stack.media.root / "uploads").iterdir()
    assert re.fullmatch(r"[0-9a-f]{32}\.jpg", saved.name)  # not the client's name
    pages.shoot("job-queued")

    send_stop_job_command(stack.connection, busy["id"])
    widths = pages.page.wait_for_function(ALL_LOADED, timeout=WAIT * 1000).json_value()
    assert widths == [128, 256, 1024]  # each thumbnail's <img> loaded, from the app
    assert status(stack, job_id) == "finished"
    pages.shoot("job-finished")
    sources = pages.page.locator("#thumbnails img").evaluate_all("shown => shown.map(img => img.src)")
    base = sources[0].split("/thumbnails/")[0]
    outside = f"{base}/thumbnails/..%2Fmedia%2Fuploads%2F{saved.name}"  # the upload itself, by climbing
    assert httpx.get(outside).status_code == 404


def failure_shown(pages: Pages, stack: Stack) -> None:
    pages.upload("notes.jpg", b"not a picture at all")
    reason = pages.page.locator("#reason")
    reason.wait_for(timeout=WAIT * 1000)
    assert reason.inner_text().startswith("JobInputError: thumbnail: not an image: uploads/")
    pages.shoot("job-failed")


def one_welcome_email(pages: Pages, stack: Stack) -> None:
    """The form sent twice with the same address: two jobs, one message; a POST without the form's
    CSRF token is refused and queues nothing."""
    pages.follow("Sign up")
    signup = pages.page.url
    assert "welcome email is on its way to ann@example.com" in pages.sign_up("Ann", "ann@example.com")
    pages.shoot("signed-up")
    pages.page.goto(signup)
    assert "ann@example.com" in pages.sign_up("Ann", "ann@example.com")
    sent = FinishedJobRegistry("email", connection=stack.connection)
    wait_until(lambda: sent.count == 2, timeout=WAIT, what="both email jobs")
    assert stack.smtp.envelopes() == [["ann@example.com"]]

    forged = httpx.post(signup, data={"name": "Eve", "email": "eve@example.com"})
    assert forged.status_code in (400, 403)
    assert stack.connection.llen("rq:queue:email") == 0 and sent.count == 2


def word_counts_shown(pages: Pages, stack: Stack) -> None:
    run_json("demo", "seed", "--articles", "2", "--comments", "3")  # and queues a word count of each
    counts = wait_until(
        lambda: None not in (found := stack.toolkit.word_counts()).values() and found,
        timeout=WAIT,
        what="the word counts",
    )
    pages.follow("Home")
    shown = pages.page.locator("#word-counts .count").all_inner_texts()
    assert shown == [str(counts["comment"]), str(counts["article"])]
    pages.shoot("home-counted")


IMPORTS = """
import json, sys
{imports}
names = ("config", "jobs", "scheduler")
print(json.dumps({{name: getattr(sys.modules.get(name), "__file__", None) for name in names}}))
"""
LOADED = {
    "flask_app": "import app",
    "django_site": "import os, django\nos.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'\n"
    "django.setup()\nimport config.urls",
}


@pytest.mark.parametrize("folder", LOADED)
def test_the_example_never_imports_the_toolkits_packages(folder: str) -> None:
    """The app's modules loaded as its server loads them (its folder first on the path): the toolkit's
    `config`, `jobs` and `scheduler` stay out; the Django project's `config` is its own."""
    where = PROJECT_ROOT / "examples" / folder
    code = IMPORTS.format(imports=LOADED[folder])
    done = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    own_config = str(where / "config" / "__init__.py") if folder == "django_site" else None
    assert found == {"config": own_config, "jobs": None, "scheduler": None}
