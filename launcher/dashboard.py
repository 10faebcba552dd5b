"""`python cli.py dashboard` (and `python -m launcher.dashboard`, as `up` runs it): rq-dashboard, served
inside a small Flask app that hardens it.

rq-dashboard 0.9 renders job fields into its pages as raw HTML (a stored XSS on the job page, its
issue #526), takes state-changing requests without any CSRF check (one of them also by GET), and has
no read-only mode. This app adds, around its unchanged blueprint:
- a Content-Security-Policy with a fresh nonce per page: only the dashboard's own scripts run, never
  markup that a job's arguments, result or traceback put on a page; every string it sends to those
  raw-HTML templates is escaped too, so such markup shows as text;
- state changes by POST only, from the dashboard's own origin (a matching Origin header);
- a read-only mode that refuses them all;
- basic auth, required off loopback; on loopback, a Host header that is not a loopback name is
  refused, so a web page cannot reach the dashboard by DNS rebinding.
In JSON mode it reads jobs with the toolkit's serializer (see config/rq_classes.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import rq_dashboard.default_settings
import rq_dashboard.web as dashboard
from flask import Flask, Response, abort, request
from markupsafe import escape
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import requeue_job

from config import RedisUnavailable, Settings, ToolkitError, get_settings
from config.rq_classes import Job, Queue, Worker, configured_serializer
from config.settings import LOG_FORMAT
from launcher.redis_server import LOOPBACK, check_free

STATE_CHANGES = {
    "rq_dashboard.delete_job_view",
    "rq_dashboard.requeue_job_view",
    "rq_dashboard.requeue_all",
    "rq_dashboard.empty_queue",
    "rq_dashboard.compact_queue",
}
# rq-dashboard's data endpoints whose strings its templates insert as raw HTML, less the fields that
# those templates escape themselves (escaping them here too would show &lt; on the page).
RAW_HTML_DATA = {
    "rq_dashboard.job_info": frozenset(),
    "rq_dashboard.list_queues": frozenset(),
    "rq_dashboard.list_jobs": frozenset({"description", "exc_info"}),
    "rq_dashboard.list_workers": frozenset({"description"}),
}
# rq-dashboard's pages need 'unsafe-eval' (Underscore compiles its templates with new Function) and
# inline style attributes (style="display: none"); no inline script or event handler can run.
CSP = (
    "default-src 'none'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; style-src 'self'; "
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
    # The blueprint's static files sit at /static, where the app's own would: serve those from there.
    app = Flask(__name__, static_folder=Path(dashboard.__file__).with_name("static"))
    app.config.from_object(rq_dashboard.default_settings)
    app.config.update(
        RQ_DASHBOARD_REDIS_URL=settings.redis_url,
        RQ_DASHBOARD_DISABLE_DELETE=settings.dashboard_read_only,
    )
    app.register_blueprint(dashboard.blueprint)
    dashboard.setup_rq_connection(app)
    if settings.dashboard_host in LOOPBACK:
        app.before_request(partial(refuse_other_hosts, settings.dashboard_port))
    if settings.dashboard_username:
        app.before_request(partial(authenticate, settings.dashboard_username, settings.dashboard_password))
    app.before_request(partial(guard_state_changes, settings.dashboard_read_only))
    app.after_request(harden)
    app.register_error_handler(RedisConnectionError, partial(redis_down, settings.redis_url))
    return app


def use_toolkit_classes() -> None:
    """Make rq-dashboard's module read jobs, queues and workers with the configured serializer."""
    dashboard.Job, dashboard.Queue, dashboard.Worker = Job, Queue, Worker
    dashboard.config.serializer = configured_serializer()
    dashboard.requeue_job = partial(requeue_job, serializer=configured_serializer())


def refuse_other_hosts(port: int) -> None:
    """On loopback, answer only requests addressed to a loopback name (no DNS rebinding)."""
    hosts = ("127.0.0.1", "[::1]", "localhost")
    names = {f"{host}:{port}" for host in hosts} | (set(hosts) if port == 80 else set())
    if request.host not in names:
        abort(Response(f"Refused: Host {request.host!r} is not this dashboard's loopback address.\n", 421))


def authenticate(username: str, password: str) -> Response | None:
    """HTTP basic auth on every route, static files included, compared in constant time."""
    auth = request.authorization
    given_user = (auth.username or "") if auth else ""
    given_password = (auth.password or "") if auth else ""
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    if user_ok & hmac.compare_digest(given_password.encode(), password.encode()):
        return None
    return Response("Log in to see the dashboard.\n", 401, {"WWW-Authenticate": 'Basic realm="rqkit"'})


def guard_state_changes(read_only: bool) -> None:
    """Let a state change through only by POST from this origin, and never in read-only mode."""
    if request.endpoint not in STATE_CHANGES:
        return
    if read_only:
        abort(Response("The dashboard is read-only (RQKIT_DASHBOARD_READ_ONLY).\n", 403))
    if request.method != "POST":
        abort(Response("State changes take POST.\n", 405, {"Allow": "POST"}))
    if request.headers.get("Origin") != request.host_url.rstrip("/"):
        abort(Response("Refused: a state change from another origin, or with no Origin header.\n", 403))


def redis_down(url: str, error: Exception) -> Response:
    """A 503 that says which Redis did not answer, instead of a bare 500."""
    return Response(f"{RedisUnavailable(url)}\n", 503, {"Retry-After": "5"}, mimetype="text/plain")


def harden(response: Response) -> Response:
    """Add the security headers; give the page's own scripts the nonce; escape raw-HTML data."""
    response.headers.update(SECURITY_HEADERS)
    if response.mimetype == "text/html":
        nonce = secrets.token_urlsafe(18)
        response.headers["Content-Security-Policy"] = CSP.format(nonce=nonce)
        # The page is rendered from rq-dashboard's templates only: job data arrive later, as JSON.
        html = response.get_data(as_text=True).replace("<script", f'<script nonce="{nonce}"')
        response.set_data(html)
    elif request.endpoint in RAW_HTML_DATA and response.is_json:
        data = escape_strings(response.get_json(), RAW_HTML_DATA[request.endpoint])
        response.set_data(json.dumps(data))
    return response


def escape_strings(value: Any, keep: frozenset[str]) -> Any:
    """Every string in `value` HTML-escaped, except under the keys in `keep`."""
    if isinstance(value, str):
        return str(escape(value))
    if isinstance(value, list):
        return [escape_strings(item, keep) for item in value]
    if isinstance(value, dict):
        return {k: v if k in keep else escape_strings(v, keep) for k, v in value.items()}
    return value


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
    waitress.serve(app, host=settings.dashboard_host, port=settings.dashboard_port, threads=4, ident="rqkit")


if __name__ == "__main__":
    logging.basicConfig(level=get_settings().log_level.upper(), format=LOG_FORMAT)
    try:
        serve(get_settings(), announce=lambda line: print(line, file=sys.stderr))
    except ToolkitError as exc:
        sys.exit(f"Error: {exc}")
