"""`python cli.py dashboard` (and `python -m launcher.dashboard`, as `up` runs it): rq-dashboard, served
inside a small Flask app that hardens it.

rq-dashboard 0.9 renders job fields into its pages as raw HTML (a stored XSS on the job page, its
issue #526), writes the queue name of a jobs page unescaped into one of its scripts (a reflected XSS
by link), shows its Redis URL with any password in the query, takes state-changing requests without
any CSRF check (one of them also by GET), and has no read-only mode; its workers page shows no host. This
app adds, around its blueprint (unchanged but for the workers page, which shows each worker's host, and
the navigation bar, which leads to the toolkit's own pages: launcher/pages.py):
- a Content-Security-Policy with a fresh nonce per page: only the dashboard's own scripts run, never
  markup that a job's arguments, result or traceback put on a page;
- every key and every string, at every depth, of every JSON it serves HTML-escaped (job data reach
  the pages only that way, into raw-HTML templates), but the few fields the templates escape
  themselves; any value serialized, whatever its type or its keys' types (pickle mode);
- autoescaping in every template, the scripts it includes too;
- the Redis URL shown with every credential hidden (config/urls.py);
- state changes by POST only, from the dashboard's own origin (a matching Origin header), and
  X-Forwarded-* headers trusted only from the number of proxies that `dashboard_proxies` says;
- a read-only mode that refuses them all;
- basic auth, required off loopback; on loopback, a Host header that is not a loopback name is
  refused, so a web page cannot reach the dashboard by DNS rebinding.
In JSON mode it reads jobs with the toolkit's serializer (see config/rq_classes.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import secrets
import sys
import unicodedata
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import rq_dashboard.default_settings
import rq_dashboard.web as dashboard
from flask import Flask, Response, abort, current_app, request
from flask.json.provider import DefaultJSONProvider
from markupsafe import escape
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import requeue_job
from rq.utils import as_text
from werkzeug.middleware.proxy_fix import ProxyFix

from config import RedisUnavailable, Settings, ToolkitError, get_settings, redacted_url
from config.rq_classes import Job, Queue, Worker, configured_serializer
from config.settings import LOG_FORMAT
from launcher import pages
from launcher.redis_server import LOOPBACK, check_free

STATE_CHANGES = {
    "rq_dashboard.delete_job_view",
    "rq_dashboard.requeue_job_view",
    "rq_dashboard.requeue_all",
    "rq_dashboard.empty_queue",
    "rq_dashboard.compact_queue",
    *pages.ACTIONS,
}
# Every JSON answer is escaped, keys and strings, at every depth, but for these fields (a path of keys,
# * for any item of a list), which rq-dashboard's templates escape themselves (jobs.html with jQuery's
# .text().html(), workers.html with <%- %>): escaping them here too would show &lt; on the page.
SELF_ESCAPED = {
    "rq_dashboard.list_jobs": frozenset({("jobs", "*", "description"), ("jobs", "*", "exc_info")}),
    "rq_dashboard.list_workers": frozenset({("workers", "*", "current_job", "description")}),
}
# rq-dashboard's pages need 'unsafe-eval' (Underscore compiles its templates with new Function; the
# toolkit's pages don't) and inline style attributes (style="display: none"); no inline script or event
# handler can run.
CSP = (
    "default-src 'none'; script-src 'self' 'nonce-{nonce}'{eval}; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make the browser send Origin: null on POST
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def create_app(settings: Settings) -> Flask:
    """The dashboard for the configured Redis, with the protections above."""
    use_toolkit_classes()
    # The blueprint's static files sit at /static, where the app's own would: serve those from there. The
    # app's templates come first: templates/rq_dashboard/workers.html replaces the workers page.
    app = Flask(
        __name__, static_folder=Path(dashboard.__file__).with_name("static"), template_folder="templates"
    )
    # Flask escapes only in .html templates; rq-dashboard's pages include scripts/*.js, and jobs.js writes
    # the queue name (from the URL, or from Redis) into a string literal of the page's own script.
    app.jinja_options = {**app.jinja_options, "autoescape": True}
    app.json = PlainJSON(app)
    app.config.from_object(rq_dashboard.default_settings)
    app.config.update(
        RQ_DASHBOARD_REDIS_URL=settings.redis_url,
        # a redis+sentinel URL's passwords (rq-dashboard reads that URL as config.sentinel does)
        RQ_DASHBOARD_REDIS_PASSWORD=settings.redis_password or None,
        RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD=settings.sentinel_password or None,
        RQ_DASHBOARD_DISABLE_DELETE=settings.dashboard_read_only,
        RQ_DASHBOARD_JSON_ENCODER=PlainEncoder,  # the job's meta, which it serializes itself
    )
    app.register_blueprint(dashboard.blueprint)
    app.register_blueprint(pages.blueprint)
    app.view_functions["rq_dashboard.list_workers"] = dashboard.jsonify(workers_with_hosts)
    dashboard.setup_rq_connection(app)
    if settings.dashboard_proxies:
        hops = settings.dashboard_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    if settings.dashboard_host in LOOPBACK:
        app.before_request(partial(refuse_other_hosts, settings.dashboard_port))
    if settings.dashboard_username:
        app.before_request(partial(authenticate, settings.dashboard_username, settings.dashboard_password))
    app.before_request(partial(guard_state_changes, settings.dashboard_read_only))
    app.before_request(refuse_unsafe_queue_names)
    app.after_request(harden)
    app.register_error_handler(RedisConnectionError, partial(redis_down, settings.redis_url))
    return app


def use_toolkit_classes() -> None:
    """Make rq-dashboard's module read jobs, queues and workers with the configured serializer, and
    show its Redis URL with every credential hidden (it hides only a userinfo, not ?password=)."""
    dashboard.Job, dashboard.Queue, dashboard.Worker = Job, Queue, Worker
    dashboard.config.serializer = configured_serializer()
    dashboard.requeue_job = partial(requeue_job, serializer=configured_serializer())
    dashboard.escape_format_instance_list = redacted_urls


def redacted_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    return [redacted_url(url) for url in ([urls] if isinstance(urls, str) else urls)]


def workers_with_hosts(instance_number: int) -> dict[str, Any]:
    """rq-dashboard's workers.json, each worker with its host's name (it has the pid, not the host)."""
    listed: dict[str, Any] = dashboard.list_workers.__wrapped__(instance_number)
    connection = current_app.redis_conn  # type: ignore[attr-defined]  # the instance's (rq-dashboard sets it)
    pipeline = connection.pipeline(transaction=False)  # one round trip, however many workers
    for worker in listed["workers"]:
        pipeline.hget(Worker.redis_worker_namespace_prefix + worker["name"], "hostname")
    for worker, hostname in zip(listed["workers"], pipeline.execute(), strict=True):
        worker["hostname"] = as_text(hostname) if hostname else None  # None: it died since it was listed
    return listed


def text(body: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """A plain-text answer: nothing in it is ever read as markup."""
    return Response(body, status, headers, mimetype="text/plain")


def received_host() -> str:
    """The Host header as this server received it: ProxyFix, when on, keeps it aside as it rewrites it
    from X-Forwarded-Host, which any client can send."""
    original = request.environ.get("werkzeug.proxy_fix.orig")
    return (original.get("HTTP_HOST") or "") if original else request.host


def refuse_other_hosts(port: int) -> None:
    """On loopback, answer only requests addressed to a loopback name (no DNS rebinding)."""
    hosts = ("127.0.0.1", "[::1]", "localhost")
    names = {f"{host}:{port}" for host in hosts} | (set(hosts) if port == 80 else set())
    host = received_host()
    if host not in names:
        abort(text(f"Refused: Host {host!r} is not this dashboard's loopback address.\n", 421))


def authenticate(username: str, password: str) -> Response | None:
    """HTTP basic auth on every route, static files included, compared in constant time."""
    auth = request.authorization
    given_user = (auth.username or "") if auth else ""
    given_password = (auth.password or "") if auth else ""
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    if user_ok & hmac.compare_digest(given_password.encode(), password.encode()):
        return None
    return text("Log in to see the dashboard.\n", 401, {"WWW-Authenticate": 'Basic realm="rqkit"'})


def guard_state_changes(read_only: bool) -> None:
    """Let a state change through only by POST from this origin, and never in read-only mode."""
    if request.endpoint not in STATE_CHANGES:
        return
    if read_only:
        abort(text("The dashboard is read-only (RQKIT_DASHBOARD_READ_ONLY).\n", 403))
    if request.method != "POST":
        abort(text("State changes take POST.\n", 405, {"Allow": "POST"}))
    # The scheme and host are the request's, or those the trusted proxies forwarded (ProxyFix above).
    if request.headers.get("Origin") != request.host_url.rstrip("/"):
        abort(text("Refused: a state change from another origin, or with no Origin header.\n", 403))


def refuse_unsafe_queue_names() -> None:
    """The jobs page writes its queue name, HTML-escaped, into a '...' string of its script: a backslash
    or a line break would still end that script early (quotes and < are escaped)."""
    if request.endpoint != "rq_dashboard.jobs_overview":
        return
    name = (request.view_args or {}).get("queue_name") or ""
    if any(char == "\\" or unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name):
        abort(text("The dashboard cannot show a queue named with a backslash or a control character.\n", 404))


def redis_down(url: str, error: Exception) -> Response:
    """A 503 that says which Redis did not answer, instead of a bare 500."""
    return Response(f"{RedisUnavailable(url)}\n", 503, {"Retry-After": "5"}, mimetype="text/plain")


def harden(response: Response) -> Response:
    """Add the security headers; give the page's own scripts the nonce; escape every JSON answer."""
    response.headers.update(SECURITY_HEADERS)
    if response.mimetype == "text/html":
        nonce = secrets.token_urlsafe(18)
        evaluates = request.blueprint != pages.blueprint.name
        response.headers["Content-Security-Policy"] = CSP.format(
            nonce=nonce, eval=" 'unsafe-eval'" * evaluates
        )
        # The page is rendered from rq-dashboard's templates only, autoescaped: job data arrive later,
        # as JSON, so no <script that they hold gets the nonce.
        html = response.get_data(as_text=True).replace("<script", f'<script nonce="{nonce}"')
        response.set_data(html)
    elif response.is_json and request.blueprint != pages.blueprint.name:  # its script writes text only
        keep = SELF_ESCAPED.get(request.endpoint or "", frozenset())
        response.set_data(json.dumps(escape_all(response.get_json(), keep)))
    return response


def escape_all(value: Any, keep: frozenset[tuple[str, ...]], path: tuple[str, ...] = ()) -> Any:
    """`value` (parsed JSON) with every key and every string HTML-escaped, at every depth, but the
    strings at the paths in `keep`."""
    if isinstance(value, str):
        return value if path in keep else str(escape(value))
    if isinstance(value, list):
        return [escape_all(item, keep, (*path, "*")) for item in value]
    if isinstance(value, dict):
        return {str(escape(key)): escape_all(item, keep, (*path, key)) for key, item in value.items()}
    return value


def plain(value: Any) -> Any:
    """`value` as JSON holds it, whatever pickle gave: a key that JSON has no form for as its repr, sets
    and tuples as lists, NaN and infinities as text, what Flask cannot serialize as its repr."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {key_of(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    try:
        return plain(DefaultJSONProvider.default(value))  # dates, decimals, UUIDs, dataclasses
    except TypeError:
        return repr(value)


def key_of(key: Any) -> Any:
    """A key as JSON can have it (json.dumps turns these into text itself), or its repr."""
    return key if key is None or isinstance(key, str | bool | int | float) else repr(key)


class PlainJSON(DefaultJSONProvider):
    """Flask's JSON, for any value a job holds: unsorted (pickle allows keys of mixed types)."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(plain(obj), **kwargs)


class PlainEncoder(json.JSONEncoder):
    """The same, for the job's meta, which rq-dashboard serializes with json.dumps(cls=...)."""

    def iterencode(self, o: Any, _one_shot: bool = False) -> Any:
        return super().iterencode(plain(o), _one_shot)


def check_address(settings: Settings) -> None:
    """Refuse to serve the dashboard off loopback without basic auth, or on an address already taken."""
    host, port = settings.dashboard_host, settings.dashboard_port
    if host not in LOOPBACK and not settings.dashboard_username:
        raise ToolkitError(
            f"RQKIT_DASHBOARD_HOST={host} is not loopback: "
            "set RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD for basic auth"
        )
    check_free(host, port, "dashboard", "RQKIT_DASHBOARD_PORT (or --port)")


def serve(settings: Settings, announce: Callable[[str], None]) -> None:
    """Serve the dashboard with waitress until interrupted."""
    import waitress

    check_address(settings)
    app = create_app(settings)
    announce(f"dashboard on http://{settings.dashboard_host}:{settings.dashboard_port}")
    waitress.serve(
        app,
        host=settings.dashboard_host,
        port=settings.dashboard_port,
        threads=4,
        ident="rqkit",
        # waitress drops every X-Forwarded-* header unless told otherwise: behind proxies, ProxyFix
        # (create_app) reads them, trusting only the last `dashboard_proxies` values of each.
        clear_untrusted_proxy_headers=not settings.dashboard_proxies,
    )


if __name__ == "__main__":
    logging.basicConfig(level=get_settings().log_level.upper(), format=LOG_FORMAT)
    try:
        serve(get_settings(), announce=lambda line: print(line, file=sys.stderr))
    except ToolkitError as exc:
        sys.exit(f"Error: {exc}")
