"""Running the parts: `up`, `redis`, `dashboard`, `metrics`, and the development helpers `demo seed` and
`mail list|show` (what the local SMTP sink received)."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import asdict, replace

import click

from commands.common import emit, json_output
from config import get_settings, redis_client
from config.connection import answers, redacted_url
from config.errors import ToolkitError
from launcher import dashboard as web_dashboard
from launcher import demo as demo_data
from launcher import mail_sink
from launcher.redis_server import LOOPBACK, check_free
from launcher.stack import Stack
from launcher.stack import up as run_stack
from ops import metrics as metrics_server


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Worker processes per worker mode in use (RQKIT_WORKER_MODES; default: RQKIT_WORKERS, 2).",
)
@click.option(
    "--scheduler/--no-scheduler", default=True, help="Run rq-scheduler (`python -m scheduler`; default: yes)."
)
@click.option("--dashboard/--no-dashboard", default=True, help="Run rq-dashboard (default: yes).")
@click.option("--demo", "with_demo", is_flag=True, help="Seed sample data and enqueue a few demo jobs.")
@click.option(
    "--allow-open-redis",
    is_flag=True,
    help="Run against a Redis off loopback that has no password (a network limit must protect it).",
)
def up(
    workers: int | None, scheduler: bool, dashboard: bool, with_demo: bool, allow_open_redis: bool
) -> None:
    """Run everything: Redis (embedded if none answers), workers, rq-scheduler (`python -m scheduler`),
    rq-dashboard and, unless RQKIT_SMTP_HOST is set, the local SMTP sink.

    Ctrl-C (or SIGTERM) stops it all; workers finish their current job first.

    Example: python cli.py up --workers 4 --demo
    """
    settings = get_settings()
    sys.exit(
        run_stack(
            settings,
            settings.workers if workers is None else workers,
            scheduler,
            dashboard,
            with_demo,
            allow_open_redis,
        )
    )


@click.command("redis")
def run_redis() -> None:
    """Run only Redis (embedded if none answers), to start the other parts by hand; Ctrl-C stops it.

    Example: python cli.py redis
    """
    settings = get_settings()
    if answers(settings.redis_url):
        click.echo(f"a Redis already answers at {redacted_url(settings.redis_url)}: nothing to start")
        return
    sys.exit(Stack(settings, workers=0, scheduler=False, dashboard=False, mail=False).run())


@click.command()
@click.option("--host", help="Address to bind (default: RQKIT_DASHBOARD_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: RQKIT_DASHBOARD_PORT, 9181).")
@click.option("--read-only", is_flag=True, help="Refuse requeue, delete, empty and compact.")
def dashboard(host: str | None, port: int | None, read_only: bool) -> None:
    """Serve rq-dashboard for the configured Redis, hardened (see launcher/dashboard.py).

    Off loopback it needs RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD (basic auth). Behind
    reverse proxies that set X-Forwarded-For, -Proto and -Host, set RQKIT_DASHBOARD_PROXIES to their number.

    Example: python cli.py dashboard --read-only
    """
    settings = get_settings()
    settings = replace(
        settings,
        dashboard_host=host or settings.dashboard_host,
        dashboard_port=port or settings.dashboard_port,
        dashboard_read_only=read_only or settings.dashboard_read_only,
    )
    web_dashboard.serve(settings, announce=lambda line: click.echo(line, err=True))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to serve on.")
@click.option("--port", default=9182, show_default=True, type=click.IntRange(1, 65535), help="The port.")
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics at http://HOST:PORT/metrics until Ctrl-C: queue depths per state,
    workers, rqscheduler instances, job runs by job, queue and outcome, job durations.

    Off loopback it needs RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD (basic auth, as the
    dashboard); on loopback it asks for none.

    Example: python cli.py metrics --port 9182
    """
    settings = get_settings()
    loopback = host in LOOPBACK
    if not loopback and not settings.dashboard_username:
        raise ToolkitError(
            f"metrics --host {host} is not loopback: "
            "set RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD for basic auth"
        )
    check_free(host, port, "metrics", "--port")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics_server.serve(
        redis_client(settings),
        host,
        port,
        stop,
        announce=lambda line: click.echo(line, err=True),
        loopback=loopback,
        credentials=None if loopback else (settings.dashboard_username, settings.dashboard_password),
        redis_url=settings.redis_url,
    )


@click.group()
def demo() -> None:
    """Sample data for trying the toolkit.

    Example: python cli.py demo seed
    """


@demo.command()
@click.option(
    "--articles", default=20, type=click.IntRange(min=1), show_default=True, help="Articles to add."
)
@click.option(
    "--comments", default=5, type=click.IntRange(min=0), show_default=True, help="Comments per article."
)
@json_output
def seed(articles: int, comments: int, as_json: bool) -> None:
    """Add sample articles and comments, then queue a word count of each (as a web app's hooks would).

    Example: python cli.py demo seed --articles 50
    """
    added = demo_data.seed(get_settings(), articles, comments)
    emit(
        added,
        as_json,
        lambda a: (
            f"added {a['articles']} articles and {a['comments']} comments; "
            f"word counts queued: {', '.join(a['word_count_jobs'])}"
        ),
    )


@click.group()
def mail() -> None:
    """The messages the local SMTP sink received (var/mail/*.eml).

    Example: python cli.py mail list
    """


@mail.command("serve")
def mail_serve() -> None:
    """Run only the local SMTP sink (what `up` runs): each message it receives becomes a file in
    var/mail/, for `mail list` and `mail show`. Start it beside bare `rq worker`s when no real SMTP
    server is set (RQKIT_SMTP_HOST); Ctrl-C stops it.

    Example: python cli.py mail serve
    """
    settings = get_settings()
    if settings.smtp_host:
        host, port, _ = settings.smtp_server
        click.echo(f"note: RQKIT_SMTP_HOST is set: email jobs go to {host}:{port}, not here", err=True)
    check_free("127.0.0.1", settings.smtp_sink_port, "mail sink", "RQKIT_SMTP_SINK_PORT")
    mail_sink.run(settings.smtp_sink_port, settings.mail_dir)


@mail.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="At most this many.")
@json_output
def mail_list(limit: int, as_json: bool) -> None:
    """The newest messages first: id, date, sender, envelope recipients, subject.

    Example: python cli.py mail list --limit 5
    """
    stored = [asdict(item) for item in mail_sink.stored_messages(get_settings().mail_dir)[:limit]]
    emit(
        stored,
        as_json,
        lambda items: "\n".join(f"{m['id']}  {m['to']:<30} {m['subject']}" for m in items) or "no messages",
    )


@mail.command("show")
@click.argument("message_id", default="latest")
@json_output
def mail_show(message_id: str, as_json: bool) -> None:
    """One message's headers, body and attachments (MESSAGE_ID from `mail list`, default: the newest).

    Example: python cli.py mail show latest
    """
    shown = mail_sink.message_view(get_settings().mail_dir, message_id)
    emit(
        shown,
        as_json,
        lambda m: "\n".join(
            [
                *(f"{k}: {v}" for k, v in m["headers"].items()),
                "",
                m["body"],
                *(f"[attachment: {name}]" for name in m["attachments"]),
            ]
        ),
        multiline=("body",),
    )
