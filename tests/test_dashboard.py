"""The dashboard: rq-dashboard behind a CSP with nonces, escaped job data, same-origin POST-only
changes, X-Forwarded-* headers only with RQKIT_DASHBOARD_PROXIES, read-only mode, basic auth off
loopback, and a real headless Chromium that opens a failed job and requeues it. Markup in job data on
every page: test_dashboard_markup.py; Redis passwords: test_dashboard_credentials.py; a real TLS proxy:
test_dashboard_proxy.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from rq.job import Job

from config import get_settings
from launcher.dashboard import create_app, escape_all, plain
from launcher.redis_server import free_port
from tests.support import run, start_python, wait_until

ORIGIN = "http://127.0.0.1:9181"
PAYLOAD = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def failed_job(connection: Redis, run_jobs: Any, argument: Any = PAYLOAD) -> Job:
    """A failed job whose argument (and so description and traceback) carries `argument`."""
    job = Queue("default", connection=connection).enqueue("jobs.demo.sleep", argument)
    run_jobs()
    assert job.get_status(refresh=True) == "failed"
    return job


@pytest.fixture
def client(connection: Redis) -> FlaskClient:
    return create_app(get_settings()).test_client()


def get(client: FlaskClient, path: str, **options: Any) -> Any:
    return client.get(path, base_url=ORIGIN, **options)


def post(client: FlaskClient, path: str, origin: str | None = ORIGIN, **options: Any) -> Any:
    headers = {"Origin": origin} if origin else {}
    return client.post(path, base_url=ORIGIN, headers=headers, **options)


def test_pages_allow_only_their_own_scripts(client: FlaskClient) -> None:
    first, second = get(client, "/"), get(client, "/0/view/workers")
    assert first.status_code == second.status_code == 200
    nonces = []
    for page in (first, second):
        csp = page.headers["Content-Security-Policy"]
        script_src = re.search(r"script-src ([^;]*)", csp)[1].split()  # type: ignore[index]
        assert "'unsafe-inline'" not in script_src and "default-src 'none'" in csp
        nonce = re.search(r"'nonce-([^']+)'", csp)[1]  # type: ignore[index]
        html = page.get_data(as_text=True)
        assert html.count("<script") == html.count(f'<script nonce="{nonce}"') > 0
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        nonces.append(nonce)
    assert nonces[0] != nonces[1]


def test_job_data_reach_the_raw_html_templates_escaped(
    client: FlaskClient, connection: Redis, run_jobs: Any
) -> None:
    job = failed_job(connection, run_jobs)
    shown = get(client, f"/0/data/job/{job.id}.json").get_json()
    assert "<script>" not in str(shown)
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in shown["description"]
    assert "&lt;img src=x" in shown["exc_info"]
    # The jobs list template escapes description itself: sent as it is, it shows right, not as &lt;.
    listed = get(client, "/0/data/jobs/default/failed/10/asc/1.json").get_json()
    assert listed["jobs"][0]["description"] == job.description


def test_every_key_and_string_of_the_json_is_escaped(
    client: FlaskClient, connection: Redis, run_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_JOB_FUNCTIONS", "tests.test_dashboard_markup.*")
    get_settings.cache_clear()
    result = {"<a>": [{"<b x='1'>": '"<i>"'}], "ok": {"<c>": [1, None, "<d>"]}}
    job = Queue("default", connection=connection).enqueue("tests.test_dashboard_markup.echo", result)
    run_jobs()
    shown = get(client, f"/0/data/job/{job.id}.json").get_json()
    assert shown["result"] == {
        "&lt;a&gt;": [{"&lt;b x=&#39;1&#39;&gt;": "&#34;&lt;i&gt;&#34;"}],
        "ok": {"&lt;c&gt;": [1, None, "&lt;d&gt;"]},
    }


def test_escaping_leaves_only_the_fields_the_templates_escape() -> None:
    keep = frozenset({("jobs", "*", "description")})
    data = {
        "jobs": [{"description": "<x>", "id": "<y>", "<k>": {"description": "<z>"}}],
        "description": "<w>",
    }
    assert escape_all(data, keep) == {
        "jobs": [{"description": "<x>", "id": "&lt;y&gt;", "&lt;k&gt;": {"description": "&lt;z&gt;"}}],
        "description": "&lt;w&gt;",
    }


def test_any_value_pickle_gives_is_serialized() -> None:
    odd = {1: "a", None: "b", (1, "<t>"): {frozenset({2}): float("nan")}, "s": {3}, "b": b"<x>"}
    assert plain(odd) == {1: "a", None: "b", "(1, '<t>')": {"frozenset({2})": "nan"}, "s": [3], "b": "b'<x>'"}


def test_state_changes_take_post_from_this_origin_only(
    client: FlaskClient, connection: Redis, run_jobs: Any
) -> None:
    job = failed_job(connection, run_jobs, -1)
    assert get(client, "/requeue/default").status_code == 405  # rq-dashboard takes GET here
    assert post(client, f"/job/{job.id}/requeue", origin=None).status_code == 403
    refused = post(client, f"/job/{job.id}/requeue", origin="http://evil.example")
    assert refused.status_code == 403 and "another origin" in refused.get_data(as_text=True)
    assert job.get_status(refresh=True) == "failed"
    assert post(client, f"/job/{job.id}/requeue").get_json() == {"status": "OK"}
    assert job.get_status(refresh=True) == "queued"


def test_forwarded_headers_count_only_from_the_proxies_the_setting_names(
    connection: Redis, run_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app itself (no waitress, which also drops such headers unless RQKIT_DASHBOARD_PROXIES is set)."""
    job = failed_job(connection, run_jobs, -1)
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "dash.example",
        "X-Forwarded-For": "1.2.3.4",
    }
    path = f"/job/{job.id}/requeue"
    # Without the setting (0): ignored. A forged https Origin gets nowhere; the request's own does.
    direct = create_app(get_settings()).test_client()
    refused = direct.post(path, base_url=ORIGIN, headers={**forwarded, "Origin": "https://dash.example"})
    assert refused.status_code == 403 and job.get_status(refresh=True) == "failed"
    # Behind one proxy: its https Origin matches; another site's still does not.
    monkeypatch.setenv("RQKIT_DASHBOARD_PROXIES", "1")
    get_settings.cache_clear()
    proxied = create_app(get_settings()).test_client()
    refused = proxied.post(path, base_url=ORIGIN, headers={**forwarded, "Origin": "https://evil.example"})
    assert refused.status_code == 403 and job.get_status(refresh=True) == "failed"
    # ...and on loopback the Host it received must still be a loopback name, whatever it forwards.
    rebound = proxied.post(
        path, base_url="http://rebound.example:9181", headers={**forwarded, "Origin": "https://dash.example"}
    )
    assert rebound.status_code == 421 and job.get_status(refresh=True) == "failed"
    allowed = proxied.post(path, base_url=ORIGIN, headers={**forwarded, "Origin": "https://dash.example"})
    assert allowed.get_json() == {"status": "OK"} and job.get_status(refresh=True) == "queued"


def test_read_only_refuses_every_change(
    connection: Redis, run_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_DASHBOARD_READ_ONLY", "true")
    client = create_app(get_settings()).test_client()
    job = failed_job(connection, run_jobs, -1)
    for path in (
        f"/job/{job.id}/requeue",
        f"/job/{job.id}/delete",
        "/requeue/default",
        "/queue/default/compact",
    ):
        answer = post(client, path)
        assert answer.status_code == 403 and "read-only" in answer.get_data(as_text=True), path
    assert job.get_status(refresh=True) == "failed"
    assert 'id="delete-job-btn"' not in get(client, f"/0/view/job/{job.id}").get_data(as_text=True)


def test_other_host_names_are_refused_on_loopback(client: FlaskClient) -> None:
    """A page on another site cannot read the dashboard by pointing its own name at 127.0.0.1."""
    assert client.get("/", base_url="http://rebound.example:9181").status_code == 421
    assert client.get("/", base_url="http://localhost:9181").status_code == 200


def test_basic_auth_guards_every_route(connection: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQKIT_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQKIT_DASHBOARD_PASSWORD", "s3cret")
    client = create_app(get_settings()).test_client()
    for path in ("/", "/0/data/queues.json", "/static/js/jquery-3.5.1.min.js"):
        assert get(client, path).status_code == 401, path
        assert get(client, path, auth=("ops", "wrong")).status_code == 401, path
        assert get(client, path, auth=("ops", "s3cret")).status_code == 200, path


def test_an_unreachable_redis_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    answer = get(create_app(get_settings()).test_client(), "/0/data/queues.json")
    assert answer.status_code == 503 and "Redis is not reachable at redis://127.0.0.1:" in answer.get_data(
        as_text=True
    )


def test_a_port_in_use_is_one_line(served: str) -> None:
    result = run("dashboard", "--port", served.rsplit(":", 1)[1])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: dashboard address 127.0.0.1:") and "is not free" in result.output


def test_off_loopback_it_will_not_start_without_a_password() -> None:
    result = run("dashboard", "--host", "0.0.0.0")
    assert result.exit_code == 1
    assert "RQKIT_DASHBOARD_HOST=0.0.0.0 is not loopback: set RQKIT_DASHBOARD_USERNAME" in result.output


@pytest.fixture
def served(connection: Redis) -> Iterator[str]:
    """`python cli.py dashboard` on a free loopback port; its base URL."""
    port = free_port()
    process = start_python("cli.py", "dashboard", "--port", str(port), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(url + "/", timeout=1).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None  # it died: stop waiting, the test will say so

    wait_until(answers, what="the dashboard")
    assert process.poll() is None
    yield url
    process.terminate()
    process.wait(10)


def test_the_command_serves_it(served: str) -> None:
    page = httpx.get(served + "/0/view/workers")
    assert page.status_code == 200 and "nonce-" in page.headers["content-security-policy"]
    assert page.headers["server"] == "rqkit"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A real headless Chromium (playwright's Browser); the test is skipped, with the reason, without."""
    if not CHROMIUM:
        pytest.skip(
            "no headless browser: Debian's chromium is not installed (scripts/test installs it as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A page in a real headless Chromium; skipped, with the reason, where there is none."""
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(15_000)
        yield page


def test_a_browser_opens_a_failed_job_and_requeues_it(
    served: str, browser_page: Any, connection: Redis, run_jobs: Any, tmp_path: Path
) -> None:
    job = failed_job(connection, run_jobs)
    page, refusals = browser_page, []
    page.on("console", lambda message: refusals.append(message.text))

    page.goto(served + "/")
    row = page.locator("#queues tr", has_text="default")
    row.locator("td.failed a").first.click()  # the failed count of queue default
    page.locator("#jobs a", has_text=job.id).first.wait_for()
    listed = page.locator("#jobs").inner_text()
    assert "<script>window.pwned = 1</script>" in listed  # shown as text

    page.locator("#jobs a", has_text=job.id).first.click()
    page.locator("#job-data .description-scroll").wait_for()
    assert "<script>window.pwned = 1</script>" in page.locator("#job-data").inner_text()
    assert page.evaluate("window.pwned") is None
    # Were markup ever let through unescaped, the CSP would still not run its handler:
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"window.pwned = 3\">')")
    wait_until(lambda: any("Content Security Policy" in text for text in refusals), 10, "the CSP refusal")
    assert page.evaluate("window.pwned") is None

    page.locator("#requeue-job-btn").click()
    wait_until(lambda: job.get_status(refresh=True) == "queued", 10, "the requeue")
    page.screenshot(path=tmp_path / "dashboard-job.png", full_page=True)
    assert (tmp_path / "dashboard-job.png").stat().st_size > 10_000
