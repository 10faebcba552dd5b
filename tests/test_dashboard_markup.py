"""Markup in job data never becomes markup on the dashboard, checked as an attacker would: keys and values
at several depths (results, kwargs, meta, failure reasons, dependencies, worker and queue names, worker
fields), in pickle and JSON modes, on every page a real Chromium shows them on.

A remote server picks the keys of an `api-call` result (its JSON); an app's users pick job arguments;
a job picks its own meta. Each payload carries the attribute `data-pwned`: a MutationObserver, installed
before the page's own scripts, records any element with it that ever reaches the page."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from redis import Redis
from rq import SimpleWorker, get_current_job
from rq.job import Job

from config import get_settings
from config.rq_classes import Queue, Worker, configured_serializer
from launcher.redis_server import free_port
from tests.support import start_python, wait_until
from tests.test_dashboard import chromium

MARK = "data-pwned"


def payload(tag: str) -> str:
    """Markup that would make an image, a full-page link overlay, a box and an SVG, and close the
    elements it may sit in; `tag` tells where it was put."""
    return (
        f'<img src="/pwned-{tag}" {MARK} onerror="window.pwned = 1">'
        f'<a {MARK} href="https://evil.example/{tag}" style="position:fixed;inset:0;z-index:9999">{tag}</a>'
        f'</pre></td></tr></table><div {MARK} style="position:fixed;inset:0"></div><svg {MARK}></svg>'
        "\"'`&amp;"
    )


# A queue name has no slash (it is one segment of the dashboard's URLs); the rest is as hostile.
QUEUE = f"<b {MARK}>queue<i {MARK}>\"'&amp;"
WORKER = f"<img src=/pwned-worker {MARK}> \"worker'"
# The result of an api-call job is the remote server's JSON: keys and values, nested.
RESULT = {
    payload("key0"): payload("value0"),
    "list": [payload("item1"), {payload("key2"): [payload("item3"), {payload("key4"): payload("value4")}]}],
    "plain": {"deeper": {payload("key3"): [1, 2.5, True, None]}},
}
META = {payload("metakey"): {"nested": [payload("metavalue"), {payload("metakey2"): 1}]}}


def echo(value: Any, meta: Any = None, wait: float = 0, **extra: Any) -> Any:
    """The job the tests run: keeps `meta`, waits `wait` seconds, returns `value` (as api-call returns
    a server's JSON)."""
    if meta is not None:
        job = get_current_job()
        assert job is not None
        job.meta.update(meta)
        job.save_meta()
    time.sleep(wait)
    return value


def odd_result() -> dict[Any, Any]:
    """What only pickle can carry: keys that are not strings, values JSON has no type for."""
    return {
        1: payload("intkey"),
        2.5: payload("floatkey"),
        None: payload("nonekey"),
        False: payload("boolkey"),
        (payload("tuplekey"), 1): {frozenset({payload("setkey")}): payload("deep")},
        datetime(2026, 1, 1, tzinfo=UTC): Decimal("1.5"),
        "set": {payload("setitem")},
        "bytes": payload("bytes").encode(),
        "nan": float("nan"),
        "tuple": (payload("tupleitem"), complex(1, 2)),
    }


@pytest.fixture(params=["pickle", "json"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RQKIT_SERIALIZER", request.param)
    monkeypatch.setenv("RQKIT_JOB_FUNCTIONS", "tests.compat_jobs.*,tests.test_dashboard_markup.*")
    get_settings.cache_clear()
    return str(request.param)


def work(connection: Redis, *queues: str) -> None:
    SimpleWorker(list(queues), connection=connection, serializer=configured_serializer()).work(burst=True)


def plant(connection: Redis, mode: str) -> dict[str, Job]:
    """Jobs, a queue and a busy worker carrying markup everywhere the dashboard shows job data."""
    default, hostile = Queue("default", connection=connection), Queue(QUEUE, connection=connection)
    jobs = {
        "result": default.enqueue(
            echo, RESULT, META, **{payload("kwkey"): {payload("kwkey2"): payload("kw")}}
        ),
        "failed": default.enqueue("tests.compat_jobs.fail", payload("reason")),
    }
    jobs["dependent"] = default.enqueue(echo, [payload("dep")], depends_on=jobs["result"])
    if mode == "pickle":
        jobs["odd"] = default.enqueue(echo, odd_result(), odd_result())
    work(connection, "default")
    assert jobs["failed"].get_status(refresh=True) == "failed"
    assert all(job.get_status(refresh=True) == "finished" for name, job in jobs.items() if name != "failed")
    jobs["busy"] = hostile.enqueue(echo, payload("busy"), wait=120)
    jobs["waiting"] = hostile.enqueue(echo, payload("waiting"))
    return jobs


@pytest.fixture
def busy_worker(connection: Redis, mode: str) -> Iterator[None]:
    """A real `rq worker` named WORKER, on queue QUEUE, busy with the job `plant` queued there first."""
    serializer = ["-S", "json"] if mode == "json" else []
    command = ["-m", "rq.cli", "worker", "-c", "config.rq", *serializer, "--name", WORKER, QUEUE]
    process = start_python(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    yield
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def served_dashboard(tmp_path: Path) -> Iterator[str]:
    """`python cli.py dashboard` on a free loopback port (its output in tmp_path/dashboard.log)."""
    port = free_port()
    with (tmp_path / "dashboard.log").open("wb") as log:
        process = start_python("cli.py", "dashboard", "--port", str(port), stderr=log, stdout=log)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(url + "/", timeout=1).status_code == 200
            except httpx.TransportError:
                return process.poll() is not None

        try:
            wait_until(answers, what="the dashboard")
            assert process.poll() is None
            yield url
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
def dashboard_url(connection: Redis, mode: str, tmp_path: Path) -> Iterator[str]:
    """The dashboard in `mode`."""
    with served_dashboard(tmp_path) as url:
        yield url


WATCH = """
window.__pwned = [];
new MutationObserver((changes) => {
  for (const change of changes) for (const node of change.addedNodes) {
    if (node.nodeType !== 1) continue;
    const found = [node, ...node.querySelectorAll('*')].filter((el) => el.hasAttribute('data-pwned'));
    for (const el of found) window.__pwned.push(el.outerHTML.slice(0, 120));
  }
}).observe(document, {childList: true, subtree: true});
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def check_page(browser: Any, url: str, rendered: str, shown: list[str]) -> str:
    """Open `url`, wait for the job data to be rendered (`rendered`: a CSS selector), then check that
    no element came from the data, nothing was fetched or opened because of it, and each of `shown`
    is on the page as text. The page's text."""
    page = browser.new_page()
    page.set_default_timeout(15_000)
    fetched: list[str] = []
    said: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.on("console", lambda message: said.append(message.text))
    page.on("pageerror", lambda error: said.append(str(error)))
    page.add_init_script(WATCH)
    page.goto(url)
    try:
        page.locator(rendered).first.wait_for()
    except Exception as exc:  # noqa: BLE001 - say what the page said
        raise AssertionError(f"{url}: {rendered} never rendered; the page said {said}") from exc
    page.wait_for_timeout(300)  # one more turn of the page's scripts
    text = page.locator("body").inner_text()
    assert page.evaluate("window.__pwned") == [], url
    assert page.locator(f"[{MARK}]").count() == 0, url
    assert page.evaluate("window.pwned") is None, url
    assert not [seen for seen in fetched if "/pwned-" in seen or "evil.example" in seen], url
    assert page.url == url
    for expected in shown:
        assert expected in text, (url, expected)
    assert "&lt;" not in text and "&amp;lt;" not in text, url  # escaped once, never twice
    page.close()
    return text


def shown_text(tag: str) -> str:
    """What a payload's markup-free middle looks like on the page, as text."""
    return f"pwned-{tag}"


@pytest.mark.slow
def test_no_markup_from_job_data_reaches_any_page(
    mode: str, connection: Redis, busy_worker: None, dashboard_url: str, browser: Any
) -> None:
    jobs = plant(connection, mode)
    wait_until(
        lambda: any(w.get_state() == "busy" for w in Worker.all(connection=connection)),
        60,
        "the worker to take the long job",
    )
    version = payload("version")
    connection.hset(f"rq:worker:{WORKER}", mapping={"version": version, "python_version": version})
    base = f"{dashboard_url}/0/view"
    hostile = quote(QUEUE, safe="")

    one_job = "#job-data .description-scroll"
    result = check_page(browser, f"{base}/job/{jobs['result'].id}", one_job, [])
    for tag in ("key0", "value0", "item1", "key2", "item3", "key4", "value4", "key3", "metakey", "metakey2"):
        assert shown_text(tag) in result, tag
    assert f"<svg {MARK}></svg>" in result  # the markup itself, as text
    check_page(browser, f"{base}/job/{jobs['failed'].id}", one_job, ["pwned-reason"])
    # No page for jobs['dependent']: rq-dashboard 0.9's job data fail on rq 3's dependency ids (a 500).
    check_page(browser, f"{base}/job/{jobs['busy'].id}", one_job, ["pwned-busy", QUEUE])
    if mode == "pickle":
        odd = check_page(browser, f"{base}/job/{jobs['odd'].id}", one_job, [])
        for tag in ("intkey", "floatkey", "nonekey", "boolkey", "tuplekey", "setkey", "setitem", "bytes"):
            assert shown_text(tag) in odd, tag
    check_page(browser, f"{dashboard_url}/", "#queues tr[data-role=queue]", [QUEUE])
    check_page(browser, f"{base}/workers", "#workers tr[data-role=worker]", [WORKER, QUEUE, "pwned-busy"])
    listed = [
        ("default/finished", ["pwned-kwkey", "pwned-dep"]),
        ("default/failed", ["pwned-reason"]),
        (f"{hostile}/queued", ["pwned-waiting", QUEUE]),
        (f"{hostile}/started", ["pwned-busy"]),
    ]
    for where, shown in listed:
        check_page(browser, f"{base}/jobs/{where}/8/asc/1", "#jobs tr[data-role=job]", shown)


# A queue name in a link, written by rq-dashboard's jobs.js into a '...' string of the page's own (nonce'd)
# script: unescaped, it closes the string and the handler around it, and runs.
BREAKOUT = "x')}});window.pwned=1;$('x').on('y',function(){{('"


def test_a_queue_name_in_a_link_runs_no_script(connection: Redis, browser: Any, tmp_path: Path) -> None:
    with served_dashboard(tmp_path) as url:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/0/view/jobs/{quote(BREAKOUT, safe='')}/queued/8/asc/1")
        page.locator("#jobs td", has_text="No jobs.").wait_for()  # the page's script ran, unbroken
        assert page.evaluate("window.pwned") is None and errors == []
        assert page.locator("#select-queue").input_value() == BREAKOUT
        # A backslash would end that string early (a broken page, no script): such a name is refused.
        refused = httpx.get(f"{url}/0/view/jobs/{quote('x' + chr(92), safe='')}/queued/8/asc/1")
        assert refused.status_code == 404 and refused.headers["content-type"].startswith("text/plain")
