"""The toolkit's dashboard pages (launcher/pages.py) in a real headless Chromium, with a real toolkit worker
behind them, in pickle and JSON modes: each page shows what it must, its actions work when clicked (and
are refused without the dashboard's Origin, or in read-only mode), markup in any job field stays text,
and a screenshot of each page is kept (overview.png, schedule.png, ... in the test's tmp_path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from config import get_settings, history
from config.history import HOUR, MINUTE
from config.rq_classes import Job, Queue
from jobs import submit
from jobs.tags import PREFIX as TAG_PREFIX
from jobs.tags import index
from launcher.dashboard import create_app
from ops import views
from scheduler.periodic import next_key
from scheduler.sync import sync
from tests import test_dashboard_markup
from tests.support import start_python, wait_until
from tests.test_dashboard_markup import MARK, QUEUE, WATCH, WORKER, echo, payload, served_dashboard
from workers import InProcessWorker

pytestmark = pytest.mark.slow

HOSTILE_TYPE = payload("jobtype")  # a job type name is a job's own meta: anything at all
TAG = "customer:42"
# test_dashboard_markup's fixture: pickle and JSON modes, with its job functions allowed.
mode = test_dashboard_markup.mode


def plant(connection: Redis) -> dict[str, Any]:
    """Jobs for every page: successes and failures of several types and reasons, tagged jobs."""
    default = Queue("default", connection=connection)
    tagged = [submit("sleep", (0,), tags=[TAG]).job for _ in range(3)]
    odd = default.enqueue(echo, payload("taggedjob"), meta={"tags": [TAG, payload("tag")]})
    index(odd, connection)  # as the toolkit indexes a tag, for a tag it would have refused
    failed = {
        "hostile": [
            default.enqueue("tests.compat_jobs.fail", payload("reason"), meta={"rqkit_job": HOSTILE_TYPE})
        ],
        "boom": [default.enqueue("tests.compat_jobs.fail", "boom") for _ in range(2)],
        "other": [default.enqueue("tests.compat_jobs.fail", "other")],
    }
    return {"tagged": [*tagged, odd], "failed": failed}


def start_a_long_job(connection: Redis, jobs: dict[str, Any]) -> None:
    """Once the quick jobs have run, a long job on the hostile queue, and one queued behind it."""
    wait_until(lambda: Queue("default", connection=connection).failed_job_registry.count == 4, 60, "the jobs")
    hostile = Queue(QUEUE, connection=connection)
    jobs["busy"] = hostile.enqueue(echo, payload("busy"), wait=120)
    jobs["waiting"] = hostile.enqueue(echo, payload("waiting"))


@pytest.fixture
def toolkit_worker(connection: Redis, mode: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real forking toolkit worker named WORKER on default and the hostile queue."""
    serializer = ["-S", "json"] if mode == "json" else []
    command = ["-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.ForkingWorker", *serializer]
    with (tmp_path / "worker.log").open("wb") as log:
        process = start_python(
            *command, "--name", WORKER, "default", QUEUE, stdout=log, stderr=log, start_new_session=True
        )
    yield process
    with_group_killed(process)


def with_group_killed(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def dead_worker(connection: Redis, mode: str) -> Iterator[str]:
    """A toolkit worker killed with -9, its heartbeat due within 2 s: it shows dead soon after."""
    serializer = ["-S", "json"] if mode == "json" else []
    name = "gone-worker"
    process = start_python(
        *[
            "-m",
            "rq.cli",
            "worker",
            "-c",
            "config.rq",
            "-w",
            "workers.InProcessWorker",
            *serializer,
            "--worker-ttl",
            "2",
            "--name",
            name,
            "idle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until(lambda: connection.exists(f"rq:worker:{name}"), 60, "the worker to register")
    with_group_killed(process)
    yield name


class Browser:
    """One page of a real Chromium: every dialog accepted, what the console says kept, an observer of
    markup from the data installed before the page's scripts."""

    def __init__(self, browser: Any, base: str, shots: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(20_000)
        self.base, self.shots, self.said = base, shots, []
        self.page.on("dialog", lambda dialog: dialog.accept())
        self.page.on("console", lambda message: self.said.append(message.text))
        self.page.on("pageerror", lambda error: self.said.append(str(error)))
        self.page.add_init_script(WATCH)

    def open(self, path: str, ready: str) -> str:
        self.page.goto(self.base + path)
        try:
            self.page.locator(ready).first.wait_for()
        except Exception:
            self.shot("never-ready")  # what the page showed instead
            raise
        self.clean()
        return str(self.page.locator("body").inner_text())

    def click(self, row: str, button: str, said: str) -> str:
        """Click `button` in the first row matching `row` once the page is still (no action or refresh in
        flight: rows may move); wait for the notice that says `said`, and the refresh after it."""
        self.settled()
        self.page.locator(row).first.get_by_role("button", name=button).click()
        notice = self.page.locator("#notice", has_text=said)
        notice.wait_for()
        self.settled()
        return str(notice.inner_text())

    def settled(self) -> None:
        self.page.locator("body:not([data-busy])").wait_for(state="attached")

    def clean(self) -> None:
        assert self.page.evaluate("window.__pwned") == [], self.page.url
        assert self.page.locator(f"[{MARK}]").count() == 0
        assert self.page.evaluate("window.pwned") is None
        assert not [text for text in self.said if "Content Security Policy" in text or "Error" in text], (
            self.said
        )

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=path, full_page=True)
        assert path.stat().st_size > 10_000


def test_every_page_in_a_browser(
    mode: str,
    connection: Redis,
    toolkit_worker: subprocess.Popen[bytes],
    dead_worker: str,
    tmp_path: Path,
) -> None:
    from tests.test_dashboard import chromium

    jobs = plant(connection)
    sync()
    start_a_long_job(connection, jobs)
    wait_until(
        lambda: jobs["busy"].get_status(refresh=True) == "started", 60, "the worker to take the long job"
    )
    with served_dashboard(tmp_path) as base, chromium() as launched:
        browser = Browser(launched, base, tmp_path)
        overview(browser, connection)
        schedule(browser, connection)
        failures(browser, connection, jobs["failed"])
        tags(browser, jobs["tagged"])
        workers(browser, connection, jobs["busy"], dead_worker, toolkit_worker)


def overview(browser: Browser, connection: Redis) -> None:
    text = browser.open("/rqkit/overview", f"#queues tr[data-queue] >> text={QUEUE}")
    assert "Last hour, per minute" in text and "Last week, per hour" in text
    for chart in ("#chart-minute", "#chart-hour"):
        assert browser.page.locator(f"{chart} canvas").count() == 1
        legend = browser.page.locator(f"{chart} .u-legend").inner_text()
        assert "processed" in legend and "failed" in legend
    row = browser.page.locator("#queues tr", has_text=QUEUE).inner_text()
    assert row.split("\t")[1].strip() == "1"  # the job waiting behind the long one
    data = browser.page.request.get(browser.base + "/rqkit/overview.json").json()
    runs = {(run["job"], run["outcome"]): sum(run["counts"]) for run in data["minute"]["runs"]}
    assert runs[("sleep", "succeeded")] == 3 and runs[("tests.compat_jobs.fail", "failed")] == 3
    assert runs[(HOSTILE_TYPE, "failed")] == 1  # as it is: the page writes it as text
    browser.page.select_option("#split", "job")
    browser.page.locator("#chart-minute .u-legend", has_text="sleep: processed").wait_for()
    legend = browser.page.locator("#chart-minute .u-legend").inner_text()
    assert f"{HOSTILE_TYPE}: failed" in legend  # the markup itself, as text
    browser.page.select_option("#split", "queue")
    browser.page.locator("#chart-hour .u-legend", has_text="default: processed").wait_for()
    browser.clean()
    browser.shot("overview")


def schedule(browser: Browser, connection: Redis) -> None:
    text = browser.open("/rqkit/schedule", "#schedule tr[data-entry]")
    entries = browser.page.locator("#schedule tr[data-entry]")
    name = entries.first.get_attribute("data-entry")
    assert entries.count() >= 3 and "cron" in text and get_settings().schedule_timezone in text
    said = browser.click(f"#schedule tr[data-entry='{name}']", "Run now", "enqueued as job")
    job_id = said.split("enqueued as job ")[1].split()[0]
    assert Job.fetch(job_id, connection=connection).get_status() == "queued"
    browser.page.locator(
        f"#schedule tr[data-entry='{name}'] td[data-role=outcome]", has_text="queued"
    ).wait_for()
    assert "(by hand)" in browser.page.locator(f"#schedule tr[data-entry='{name}']").inner_text()
    browser.shot("schedule")


def failures(browser: Browser, connection: Redis, failed: dict[str, list[Any]]) -> None:
    text = browser.open("/rqkit/failures", "#failures tr[data-role=group]")
    assert HOSTILE_TYPE in text and "pwned-reason" in text
    groups = browser.page.locator("#failures tr[data-role=group]")
    assert groups.count() == 3 and groups.first.locator("td").nth(2).inner_text() == "2"  # largest first
    browser.shot("failures")
    said = browser.click(
        "#failures tr[data-role=group] >> text=boom >> xpath=ancestor::tr", "Requeue", "requeued"
    )
    assert said == "requeued 2 failed tests.compat_jobs.fail jobs"
    assert all(job.get_status(refresh=True) == "queued" for job in failed["boom"])
    browser.click("#failures tr[data-role=group]:has-text('pwned-reason')", "Delete", "deleted 1")
    assert not connection.exists(failed["hostile"][0].key)
    assert failed["other"][0].get_status(refresh=True) == "failed"
    # A locator's wait, not wait_for_function: its string is eval'd in the page after a first false try,
    # which the CSP refuses (EvalError).
    groups.nth(1).wait_for(state="detached")
    assert groups.count() == 1
    browser.clean()


def tags(browser: Browser, tagged: list[Any]) -> None:
    text = browser.open("/rqkit/tags", "#tags a")
    assert f"{TAG} (4)" in text
    browser.page.fill("#tag", "customer")
    browser.page.press("#tag", "Enter")
    browser.page.locator("#tags a", has_text=TAG).click()
    browser.page.locator("#jobs tr[data-role=job]").first.wait_for()
    browser.clean()
    rows = browser.page.locator("#jobs tr[data-role=job]")
    ids = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert ids == [job.id for job in reversed(tagged)]  # newest first
    table = browser.page.locator("#jobs").inner_text()
    assert "pwned-tag" in table and "pwned-taggedjob" in table and "finished" in table
    browser.shot("tags")


def workers(
    browser: Browser, connection: Redis, busy: Any, dead: str, process: subprocess.Popen[bytes]
) -> None:
    text = browser.open("/rqkit/workers", f"tr[data-worker='{dead}'] >> text=dead")
    row = browser.page.locator("tr[data-worker]", has_text="pwned-worker")
    cells = row.inner_text()
    assert WORKER in text and "busy" in cells and busy.id in cells and " MB" in cells
    assert "for " in cells and os.uname().nodename in text
    assert "table-danger" in (browser.page.locator(f"tr[data-worker='{dead}']").get_attribute("class") or "")
    browser.shot("workers")
    browser.click("tr[data-worker]:has-text('pwned-worker')", "Kill job", f"job {busy.id} killed")
    wait_until(lambda: busy.get_status(refresh=True) == "failed", 30, "the killed job to fail")
    browser.page.locator(
        "tr[data-worker]:has-text('pwned-worker') td[data-role=job]", has_text="-"
    ).wait_for()
    browser.click("tr[data-worker]:has-text('pwned-worker')", "Stop", "stops after its current job")
    process.wait(60)  # it stops once the job it took next (the waiting one) has run
    browser.clean()


def test_actions_take_post_from_the_dashboard_and_nothing_in_read_only_mode(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    Queue("default", connection=connection).enqueue("tests.compat_jobs.fail", "x")
    InProcessWorker(["default"], connection=connection).work(burst=True)
    origin = "http://127.0.0.1:9181"
    client = create_app(get_settings()).test_client()
    group = {"job": "tests.compat_jobs.fail", "reason": "ValueError: x"}
    assert client.get("/rqkit/failures/requeue", base_url=origin).status_code == 405
    refused = client.post("/rqkit/failures/requeue", base_url=origin, data=group)  # no Origin: another site
    assert refused.status_code == 403
    other = client.post(
        "/rqkit/failures/requeue", base_url=origin, data=group, headers={"Origin": "http://evil"}
    )
    assert other.status_code == 403
    unknown = client.post("/rqkit/schedule/nope/run", base_url=origin, headers={"Origin": origin})
    assert unknown.status_code == 400 and "no schedule entry 'nope'" in unknown.get_data(as_text=True)
    monkeypatch.setenv("RQKIT_DASHBOARD_READ_ONLY", "1")
    get_settings.cache_clear()
    read_only = create_app(get_settings()).test_client()
    page = read_only.get("/rqkit/failures", base_url=origin).get_data(as_text=True)
    assert "ValueError: x" in page and "data-post" not in page
    answer = read_only.post("/rqkit/failures/delete", base_url=origin, data=group, headers={"Origin": origin})
    assert answer.status_code == 403
    assert Queue("default", connection=connection).failed_job_registry.count == 1


def test_the_pages_say_which_redis_did_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.redis_server import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    client = create_app(get_settings()).test_client()
    for path in (
        "/rqkit/overview.json",
        "/rqkit/schedule",
        "/rqkit/failures",
        "/rqkit/tags",
        "/rqkit/workers",
    ):
        answer = client.get(path, base_url="http://127.0.0.1:9181")
        assert answer.status_code == 503 and "Redis is not reachable" in answer.get_data(as_text=True), path


ORIGIN = "http://127.0.0.1:9181"


def post(client: Any, path: str, **form: str) -> Any:
    return client.post(path, base_url=ORIGIN, data=form, headers={"Origin": ORIGIN})


def test_a_worker_named_like_a_path_is_the_one_its_buttons_act_on(connection: Redis) -> None:
    """A name is sent as a form field, never as a path: 'x/../victim' can't reach worker 'victim' (or, with
    more '..', another route of the dashboard)."""
    for name in ("x/../victim", "victim"):
        InProcessWorker(["default"], connection=connection, name=name).register_birth()
    client = create_app(get_settings()).test_client()
    page = client.get("/rqkit/workers", base_url=ORIGIN).get_data(as_text=True)
    assert 'data-field-name="x/../victim"' in page and "/rqkit/workers/stop" in page
    listener = connection.pubsub()
    listener.subscribe("rq:pubsub:x/../victim", "rq:pubsub:victim")
    wait_until(
        lambda: listener.get_message(timeout=1) and listener.get_message(timeout=1), 10, "subscriptions"
    )
    assert post(client, "/rqkit/workers/stop", name="x/../victim").status_code == 200
    message = wait_until(lambda: listener.get_message(timeout=1), 10, "the stop command")
    assert message["channel"] == b"rq:pubsub:x/../victim"
    assert listener.get_message(timeout=0.5) is None
    unknown = post(client, "/rqkit/workers/stop", name="../victim")
    assert unknown.status_code == 400 and "no worker named '../victim'" in unknown.get_data(as_text=True)


def test_a_group_is_named_by_its_key_whatever_its_reason_holds(connection: Redis) -> None:
    queue = Queue("default", connection=connection)
    odd = [queue.enqueue("tests.compat_jobs.fail", "nul\x00 and\ttab") for _ in range(2)]
    plain = queue.enqueue("tests.compat_jobs.fail", "plain")
    InProcessWorker(["default"], connection=connection).work(burst=True)
    client = create_app(get_settings()).test_client()
    page = client.get("/rqkit/failures", base_url=ORIGIN).get_data(as_text=True)
    key = next(g["key"] for g in views.failed_groups(connection) if "nul" in g["reason"])
    assert f'data-field-group="{key}"' in page
    answer = post(client, "/rqkit/failures/requeue", job="tests.compat_jobs.fail", group=key)
    assert answer.get_data(as_text=True) == "requeued 2 failed tests.compat_jobs.fail jobs\n"
    assert [job.get_status(refresh=True) for job in odd] == ["queued", "queued"]
    assert plain.get_status(refresh=True) == "failed"


def test_kill_refuses_when_the_worker_runs_another_job_than_the_one_confirmed(connection: Redis) -> None:
    worker = InProcessWorker(["default"], connection=connection, name="runner")
    worker.register_birth()
    worker.prepare_execution(Queue("default", connection=connection).enqueue(echo, 1, job_id="job-now"))
    client = create_app(get_settings()).test_client()
    answer = post(client, "/rqkit/workers/kill", name="runner", job="job-seen")
    assert answer.status_code == 400
    assert (
        answer.get_data(as_text=True) == "worker runner now runs job job-now, not job-seen: nothing killed\n"
    )


def test_a_record_no_toolkit_wrote_doesnt_take_a_page_down(connection: Redis) -> None:
    """Another writer's fields: a job RQ can't read, a tag list that is no list, a worker's fields that
    are no numbers, a history field that is no count, a key of another type, a pointer that is no time."""
    queue = Queue("default", connection=connection)
    bad = queue.enqueue("tests.compat_jobs.fail", "bad")
    odd_meta = queue.enqueue(echo, 1, meta={"tags": 5})
    odd_meta.meta = ["not", "a", "dict"]  # type: ignore[assignment]
    odd_meta.save_meta()
    good = queue.enqueue("tests.compat_jobs.fail", "good")
    InProcessWorker(["default"], connection=connection).work(burst=True)
    connection.hset(bad.key, "created_at", "not a time")
    connection.zadd(f"{TAG_PREFIX}{TAG}", {bad.id: 1, odd_meta.id: 2, good.id: 3})
    connection.set(f"{TAG_PREFIX}\xff-string", "x")
    worker = InProcessWorker(["default"], connection=connection, name="odd")
    worker.register_birth()
    connection.hset(worker.key, mapping={"rqkit_memory_kb": "abc", "rqkit_worker_ttl": "ten"})
    connection.hset(history.bucket_key(MINUTE, time.time()), mapping={"sleep\tdefault\tsucceeded": "x"})
    connection.set(history.bucket_key(HOUR, time.time()), "not a hash")
    sync()
    connection.set(next_key("expire-sessions"), "rqkit-schedule-expire-sessions-99999999999999999999")
    client = create_app(get_settings()).test_client()
    for path in (
        "/rqkit/failures",
        "/rqkit/tags",
        f"/rqkit/tags?tag={TAG}",
        "/rqkit/workers",
        "/rqkit/schedule",
    ):
        assert client.get(path, base_url=ORIGIN).status_code == 200, path
    data = client.get("/rqkit/overview.json", base_url=ORIGIN).get_json()
    assert "sleep" not in {run["job"] for run in data["minute"]["runs"]} and data["hour"]["runs"] == []
    assert "good" in client.get("/rqkit/failures", base_url=ORIGIN).get_data(as_text=True)


def test_the_toolkits_pages_run_no_eval_and_a_read_only_look_at_a_tag_changes_nothing(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = Queue("default", connection=connection).enqueue(echo, 1)
    connection.zadd(f"{TAG_PREFIX}{TAG}", {gone.id: 1, "no-such-job": 2})
    monkeypatch.setenv("RQKIT_DASHBOARD_READ_ONLY", "1")
    get_settings.cache_clear()
    client = create_app(get_settings()).test_client()
    ours, theirs = client.get("/rqkit/overview", base_url=ORIGIN), client.get("/", base_url=ORIGIN)
    assert "'unsafe-eval'" not in ours.headers["Content-Security-Policy"]
    assert "'unsafe-eval'" in theirs.headers["Content-Security-Policy"]  # rq-dashboard's Underscore needs it
    assert client.get(f"/rqkit/tags?tag={TAG}", base_url=ORIGIN).status_code == 200
    assert connection.zcard(f"{TAG_PREFIX}{TAG}") == 2
