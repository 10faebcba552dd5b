"""The dashboard's pages of the toolkit's own, beside rq-dashboard's and in its look: Overview (runs per
minute and per hour, drawn with uPlot, queue depth and latency), Schedule, Failures (grouped), Tags and
Workers. A blueprint of launcher/dashboard.py's app, so every protection there applies to it: its CSP,
the Host check, basic auth, POST from the dashboard's own origin for each action, read-only mode.

The pages are rendered on the server from autoescaped templates; pages.js refreshes them in place and
draws the charts from overview.json, writing every value as text (never as markup), so these JSON
answers are not HTML-escaped as rq-dashboard's are. They read the configured Redis (a Sentinel URL's
master too) with the configured serializer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from redis import Redis
from rq import VERSION as rq_version
from rq_dashboard.version import VERSION as rq_dashboard_version

from config import get_settings, redacted_url, redis_client
from config.errors import ToolkitError
from jobs.errors import JobInputError
from jobs.tags import PREFIX as TAG_PREFIX
from jobs.tags import TAG
from ops import actions, views
from ops.overview import overview as overview_data
from scheduler.sync import listing, run_now

blueprint = Blueprint("rqkit", __name__, url_prefix="/rqkit", static_folder="static")
ACTIONS = {
    "rqkit.run_entry",
    "rqkit.requeue_group",
    "rqkit.delete_group",
    "rqkit.stop_worker",
    "rqkit.kill_job",
}
TAGS_SHOWN, TAG_SCANS = 200, 100  # tags listed when none is found, SCAN calls to find them
FAILURES_READ = 10_000  # the newest failed jobs of each queue that the Failures page groups


def connection() -> Redis:
    return redis_client(get_settings())


def page(template: str, tab: str, **context: Any) -> str:
    """One of the pages, with what rq-dashboard's navigation bar and footer need."""
    settings = get_settings()
    return render_template(
        f"rqkit/{template}",
        active_tab=tab,
        rq_url_prefix=url_for("rq_dashboard.queues_overview"),
        current_instance=0,
        instance_list=[redacted_url(settings.redis_url)],
        rq_dashboard_version=rq_dashboard_version,
        rq_version=rq_version,
        poll_interval=current_app.config.get("RQ_DASHBOARD_POLL_INTERVAL", 2500),
        read_only=settings.dashboard_read_only,
        now=datetime.now(UTC),
        **context,
    )


def done(message: str) -> Response:
    """An action's answer: one line, as text."""
    return Response(message + "\n", 200, mimetype="text/plain")


@blueprint.errorhandler(ToolkitError)
def refused(error: ToolkitError) -> Response:
    """A refusal of the toolkit's (no such entry, worker or job) as the one line it is."""
    return Response(f"{error}\n", 400, mimetype="text/plain")


@blueprint.get("/")
def home() -> Any:
    return redirect(url_for(".overview"))


@blueprint.get("/overview")
def overview() -> str:
    return page("overview.html", "overview")


@blueprint.get("/overview.json")
def overview_json() -> Any:
    return overview_data(connection())


@blueprint.get("/schedule")
def schedule() -> str:
    return page(
        "schedule.html",
        "schedule",
        entries=listing(connection=connection()),
        zone=get_settings().schedule_timezone,
    )


@blueprint.post("/schedule/<name>/run")
def run_entry(name: str) -> Response:
    job = run_now(name)
    return done(f"{name}: enqueued as job {job.id} on {job.origin}")


@blueprint.get("/failures")
def failures() -> str:
    redis = connection()
    total = sum(views.failed_registry(name, redis).count for name in views.queue_names(redis))
    groups = views.failed_groups(redis, newest=FAILURES_READ)
    return page(
        "failures.html", "failures", groups=groups, total=total, grouped=sum(g["count"] for g in groups)
    )


def on_group(action: Callable[..., list[str]], verb: str) -> Response:
    """Requeue or delete the failed jobs of one group, named by its key (its text may hold anything)."""
    job, group = request.form.get("job"), request.form.get("group")
    if not job or not group:
        raise JobInputError("name the group: its job and its key")
    ids = action(connection(), [], every=True, job_name=job, group=group)
    return done(f"{verb} {len(ids)} failed {job} job{'s' * (len(ids) != 1)}")


@blueprint.post("/failures/requeue")
def requeue_group() -> Response:
    return on_group(actions.requeue_failed, "requeued")


@blueprint.post("/failures/delete")
def delete_group() -> Response:
    return on_group(actions.delete_failed, "deleted")


@blueprint.get("/tags")
def tags() -> str:
    """The jobs of one tag, newest first; with no tag, or one that is not a tag's name, the tags there are
    (those starting with what was typed)."""
    tag = request.args.get("tag", "").strip()
    found = tag and TAG.match(tag) and views.list_jobs(connection(), tag=tag, limit=500, prune=False)
    if found:
        return page("tags.html", "tags", tag=tag, jobs=found, known=None)
    return page("tags.html", "tags", tag=tag, jobs=[], known=known_tags(connection(), tag))


def known_tags(redis: Redis, start: str) -> list[tuple[str, int]]:
    """Tags starting with `start`, with their job counts: the first TAGS_SHOWN by name of those that a
    bounded SCAN finds (at most TAG_SCANS calls, whatever the size of the keyspace)."""
    pattern = TAG_PREFIX + "".join(f"\\{char}" if char in "*?[]\\" else char for char in start) + "*"
    names: set[str] = set()
    cursor = 0
    for _ in range(TAG_SCANS):
        cursor, keys = redis.scan(cursor, match=pattern, count=1000)
        names.update(text_of(key)[len(TAG_PREFIX) :] for key in keys)
        if not cursor:
            break
    shown = sorted(names)[:TAGS_SHOWN]
    with redis.pipeline(transaction=False) as pipe:
        for name in shown:
            pipe.zcard(TAG_PREFIX + name)
        counts = pipe.execute(raise_on_error=False)  # a key of another type: no count
    return [(name, count if isinstance(count, int) else 0) for name, count in zip(shown, counts, strict=True)]


def text_of(key: bytes | str) -> str:
    return key.decode(errors="replace") if isinstance(key, bytes) else key


@blueprint.get("/workers")
def workers() -> str:
    rows = sorted(views.workers(connection()), key=lambda row: (row["hostname"] or "?", row["name"]))
    hosts = [(host, list(group)) for host, group in groupby(rows, key=lambda row: row["hostname"] or "?")]
    return page("workers.html", "workers", hosts=hosts, seconds_since=seconds_since)


@blueprint.post("/workers/stop")
def stop_worker() -> Response:
    """Stop the worker named in the form (a name is no path segment: it may hold a slash or '..')."""
    name = request.form.get("name", "")
    actions.stop_worker(connection(), name)
    return done(f"worker {name} stops after its current job")


@blueprint.post("/workers/kill")
def kill_job() -> Response:
    """Kill the job the form names, if the worker it names still runs it."""
    name = request.form.get("name", "")
    job_id = actions.kill_current_job(connection(), name, request.form.get("job") or None)
    return done(f"worker {name}: job {job_id} killed")


@blueprint.app_template_filter("span")
def span(seconds: float | None) -> str:
    """A time span as a person reads it: 40 s, 12 min, 5 h, 3 days (as pages.js writes it)."""
    if seconds is None:
        return "-"
    for limit, unit, size in ((90, "s", 1), (5400, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{round(seconds / size)} {unit}"
    return f"{round(seconds / 86400)} days"


def seconds_since(moment: str | None) -> float | None:
    """Seconds from an ISO time the views gave to now."""
    if not moment:
        return None
    at = datetime.fromisoformat(moment)
    return max(0.0, time.time() - (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())
