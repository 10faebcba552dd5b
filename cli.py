"""rqkit's command line: enqueue jobs, look at queues and workers, run the whole stack."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import redis
from prometheus_client import CollectorRegistry, start_http_server

from config import RedisUnavailable, get_settings, redis_client
from jobs import api, content, images, monitoring, operations, stats, submit, submit_many
from jobs import metrics as job_metrics
from jobs.errors import JobInputError, ToolkitError
from jobs.media import as_argument
from launcher import dashboard as web_dashboard
from launcher import mail_sink
from launcher.redis_server import check_free
from launcher.stack import Stack
from scheduler import periodic

EXIT_FAILURE = 1
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Toolkit(click.Group):
    """Turns the toolkit's errors into one line on stderr: usage errors exit 2, the rest exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobInputError as exc:
            raise click.UsageError(str(exc)) from exc  # no ctx: the root's usage line would mislead
        except ToolkitError as exc:
            raise click.ClickException(str(exc)) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise click.ClickException(str(RedisUnavailable(get_settings().redis_url))) from exc


class JobCommands(click.Group):
    """`enqueue NAME`: an unknown NAME is a usage error that lists the known jobs."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            raise click.UsageError(
                f"unknown job {args[0]!r}; known jobs: {', '.join(sorted(self.commands))}", ctx
            )
        return super().resolve_command(ctx, args)


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        match = DURATION.match(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not a duration like 30s, 5m, 2h or 1d", param, ctx)
        return timedelta(seconds=float(match[1]) * UNITS[match[2]])


class When(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time like 2026-12-01T03:00:00+00:00", param, ctx)
        return moment if moment.tzinfo else moment.astimezone()  # no offset: local time


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Exactly one JSON document with --json, else the human rendering."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


def enqueue_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every `enqueue NAME` subcommand shares."""
    options = [
        click.option("--queue", help="Put the job on this queue instead of its own."),
        click.option("--at-front", is_flag=True, help="Put the job at the front of its queue."),
        click.option("--in", "delay", type=Duration(), help="Run it after a delay: 30s, 5m, 2h, 1d."),
        click.option(
            "--at", "at", type=When(), help="Run it at a time (ISO-8601; without an offset: local time)."
        ),
        click.option(
            "--wait", is_flag=True, help="Block until done; print the result, or the failure and exit 1."
        ),
        click.option(
            "--tag", "tags", multiple=True, help="Tag the job, e.g. customer:42; repeat for several."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON document."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(cls=Toolkit)
def cli() -> None:
    """rqkit: background jobs, scheduled maintenance and batch work on RQ and Redis.

    Example: python cli.py up --demo
    """
    level = get_settings().log_level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@cli.group(cls=JobCommands)
def enqueue() -> None:
    """Put a job on its queue: enqueue NAME [ARGS...] [OPTIONS].

    Example: python cli.py enqueue sleep 5 --wait
    """


def run_enqueue(
    name: str,
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    queue: str | None,
    at_front: bool,
    delay: timedelta | None,
    at: datetime | None,
    wait: bool,
    as_json: bool,
    tags: tuple[str, ...] = (),
) -> None:
    """Submit each call through the registry, report, and with --wait report the outcomes."""
    if delay and at:
        raise click.UsageError("--in and --at cannot be used together")
    when = datetime.now().astimezone() + delay if delay else at
    submissions = [
        submit(name, args, kwargs, queue=queue, at_front=at_front, at=when, tags=list(tags))
        for args, kwargs in calls
    ]
    reports = [
        {
            "id": job.id,
            "job": name,
            "args": list(args),
            "kwargs": kwargs,
            "queue": job.origin,
            "status": job.get_status(refresh=False).value,
            "duplicate": duplicate,
        }
        for (args, kwargs), (job, duplicate) in zip(calls, submissions, strict=True)
    ]
    if wait:
        for idle in sorted(
            {job.origin for job, _ in submissions if not monitoring.listening_workers(job.origin)}
        ):
            click.echo(f"waiting for {len(submissions)} job(s): no worker listens on {idle!r} yet", err=True)
        for report, (job, _) in zip(reports, submissions, strict=True):
            report.update(monitoring.wait_for(job).as_dict())
    emit(reports[0] if len(reports) == 1 else reports, as_json, render_submissions)
    if wait and any(report["status"] != "finished" for report in reports):
        sys.exit(EXIT_FAILURE)


def render_submissions(reports: dict[str, Any] | list[dict[str, Any]]) -> str:
    return "\n".join(map(render_submission, reports if isinstance(reports, list) else [reports]))


def render_submission(report: dict[str, Any]) -> str:
    what = " ".join([report["job"], *map(str, report["args"])])
    if report["duplicate"]:
        line = f"{what}: already pending as job {report['id']} on {report['queue']}"
    else:
        line = f"{what}: {report['status']} as job {report['id']} on {report['queue']}"
    if report.get("reason"):
        return f"{line}\n{report['status']}: {report['reason']}"
    if "result" in report:
        return f"{line}\n{report['status']}: {json.dumps(report['result'])}"
    return line


@enqueue.command("sleep", context_settings={"ignore_unknown_options": True})  # -1 is a number here
@click.argument("seconds", type=float)
@enqueue_options
def enqueue_sleep(seconds: float, **options: Any) -> None:
    """Sleep SECONDS on a worker (the Resque tutorial's Sleeper).

    Example: python cli.py enqueue sleep 5 --wait
    """
    run_enqueue("sleep", [((int(seconds) if seconds.is_integer() else seconds,), {})], **options)


@enqueue.command("expire-sessions")
@click.argument("store", default="default")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@enqueue_options
def enqueue_expire_sessions(store: str, dry_run: bool, **options: Any) -> None:
    """Delete the expired sessions of STORE (default: `default`), in short batches.

    Example: python cli.py enqueue expire-sessions --dry-run --wait
    """
    run_enqueue("expire-sessions", [((store,), {"dry_run": True} if dry_run else {})], **options)


@enqueue.command("sweep-cache")
@click.argument("target", required=False)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@enqueue_options
def enqueue_sweep_cache(target: str | None, dry_run: bool, **options: Any) -> None:
    """Sweep the cache TARGET (default: every configured one): old, idle or over-size entries go.

    Example: python cli.py enqueue sweep-cache thumbnails --wait
    """
    args = (target,) if target else ()
    run_enqueue("sweep-cache", [(args, {"dry_run": True} if dry_run else {})], **options)


@enqueue.command("prune-tags")
@enqueue_options
def enqueue_prune_tags(**options: Any) -> None:
    """Drop the jobs that expired or were deleted from every tag index (the schedule does it hourly).

    Example: python cli.py enqueue prune-tags --wait
    """
    run_enqueue("prune-tags", [((), {})], **options)


@enqueue.command("word-count")
@click.argument("model", type=click.Choice(sorted(stats.MODELS)))
@enqueue_options
def enqueue_word_count(model: str, **options: Any) -> None:
    """Recount the total words of MODEL and cache it (at most one pending per model).

    Example: python cli.py enqueue word-count comment --wait
    """
    run_enqueue("word-count", [((model,), {})], **options)


def thumbnail_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--size and --format, for `enqueue thumbnail` and `thumbnails`."""
    func = click.option(
        "--format", "fmt", type=click.Choice(["auto", *images.FORMATS]), help="Output format."
    )(func)
    return click.option(
        "--size",
        "sizes",
        type=int,
        multiple=True,
        help="Long side in pixels; repeat for several (default: settings).",
    )(func)


def thumbnail_kwargs(sizes: tuple[int, ...], fmt: str | None) -> dict[str, Any]:
    """Only what was given: the job falls back on the settings for the rest."""
    return {key: value for key, value in (("sizes", list(sizes) or None), ("format", fmt)) if value}


@enqueue.command("thumbnail")
@click.argument("paths", nargs=-1, required=True)
@thumbnail_options
@enqueue_options
def enqueue_thumbnail(
    paths: tuple[str, ...], sizes: tuple[int, ...], fmt: str | None, **options: Any
) -> None:
    """Make bounded thumbnails of each image at PATH (one job per file), under the thumbnails root.

    Paths are relative to the current directory and must lie inside the media root.

    Example: python cli.py enqueue thumbnail photos/cat.jpg --size 256 --wait
    """
    media_root = get_settings().media_root.resolve()
    kwargs = thumbnail_kwargs(sizes, fmt)
    run_enqueue("thumbnail", [((as_argument(path, media_root),), kwargs) for path in paths], **options)


def pairs_of(option: str, pairs: tuple[str, ...], separator: str = "=") -> dict[str, str]:
    """Repeated NAME=VALUE (or NAME: VALUE) options as a dictionary."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition(separator)
        if not sep or not name.strip():
            raise click.UsageError(f"{option} {pair!r}: expected NAME{separator}VALUE")
        found[name.strip()] = value.strip() if separator == ":" else value
    return found


def json_option(option: str, text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"{option}: not JSON: {exc}") from None


@enqueue.command("api-call")
@click.argument("method", type=click.Choice(sorted(api.METHODS), case_sensitive=False))
@click.argument("url")
@click.option("--data", help="A JSON request body.")
@click.option("--param", multiple=True, help="A query parameter NAME=VALUE; repeat for several.")
@click.option("--header", multiple=True, help="A header 'NAME: VALUE'; repeat for several.")
@click.option("--secret-header", multiple=True, help="NAME=SECRET: header NAME gets $RQKIT_SECRET_<SECRET>.")
@click.option("--key", help="Idempotency-Key for POST and PATCH (default: from the job's id).")
@click.option("--store-as", help="Also keep the parsed body in Redis under this key (RQKIT_API_STORE_TTL).")
@enqueue_options
def enqueue_api_call(
    method: str,
    url: str,
    data: str | None,
    param: tuple[str, ...],
    header: tuple[str, ...],
    secret_header: tuple[str, ...],
    key: str | None,
    store_as: str | None,
    **options: Any,
) -> None:
    """Call an allowed host's HTTP API; 5xx, 429 and network errors are retried, other 4xx are not.

    Example: python cli.py enqueue api-call GET http://127.0.0.1:8000/status --wait
    """
    given = {
        "json": json_option("--data", data),
        "params": pairs_of("--param", param),
        "headers": pairs_of("--header", header, ":"),
        "secret_headers": pairs_of("--secret-header", secret_header),
        "idempotency_key": key,
        "store_as": store_as,
    }
    kwargs = {name: value for name, value in given.items() if value is not None and value != {}}
    run_enqueue("api-call", [((method.upper(), url), kwargs)], **options)


@enqueue.command("webhook")
@click.argument("url")
@click.argument("event")
@click.option("--payload", default="{}", show_default=True, help="The event's data, as JSON.")
@click.option("--secret", "secret_name", required=True, help="Sign with $RQKIT_SECRET_<SECRET>.")
@enqueue_options
def enqueue_webhook(url: str, event: str, payload: str, secret_name: str, **options: Any) -> None:
    """POST EVENT to URL, signed: X-Rqkit-Signature = sha256=HMAC(secret, "<X-Rqkit-Timestamp>." + body).

    Example: python cli.py enqueue webhook http://127.0.0.1:8000/hook paid --payload '{"id": 7}' --secret S
    """
    run_enqueue("webhook", [((url, event, json_option("--payload", payload), secret_name), {})], **options)


def variables(pairs: tuple[str, ...]) -> dict[str, str]:
    """--var name=value pairs as a template context."""
    return pairs_of("--var", pairs)


@enqueue.command("email")
@click.option("--to", multiple=True, required=True, help="A recipient's address; repeat for several.")
@click.option("--cc", multiple=True, help="A Cc address; repeat for several.")
@click.option("--bcc", multiple=True, help="A Bcc address; repeat for several.")
@click.option("--reply-to", multiple=True, help="A Reply-To address.")
@click.option("--subject", help="The subject (default: the template's).")
@click.option("--text", help="The plain-text body.")
@click.option("--html", help="The HTML body.")
@click.option("--template", help="A template under templates/email (welcome, password_reset).")
@click.option("--var", "pairs", multiple=True, help="A template variable, NAME=VALUE; repeat for several.")
@click.option("--attach", multiple=True, help="A file under the media root; repeat for several.")
@click.option("--key", help="Idempotency key (default: derived from the content and the recipients).")
@enqueue_options
def enqueue_email(
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    reply_to: tuple[str, ...],
    subject: str | None,
    text: str | None,
    html: str | None,
    template: str | None,
    pairs: tuple[str, ...],
    attach: tuple[str, ...],
    key: str | None,
    **options: Any,
) -> None:
    """Send a message through SMTP (the local sink when no SMTP host is configured), at most once.

    Example: python cli.py enqueue email --to a@example.com --subject Hi --text Hello
    """
    media_root = get_settings().media_root.resolve()
    given = {
        "to": list(to),
        "cc": list(cc),
        "bcc": list(bcc),
        "reply_to": list(reply_to),
        "subject": subject,
        "text": text,
        "html": html,
        "template": template,
        "context": variables(pairs),
        "attachments": [as_argument(path, media_root) for path in attach],
        "idempotency_key": key,
    }
    run_enqueue("email", [((), {name: value for name, value in given.items() if value})], **options)


@cli.group()
def mail() -> None:
    """The messages the local SMTP sink received (var/mail/*.eml).

    Example: python cli.py mail list
    """


@mail.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def mail_show(message_id: str, as_json: bool) -> None:
    """One message's headers, body and attachments (MESSAGE_ID from `mail list`, default: the newest).

    Example: python cli.py mail show latest
    """
    folder = get_settings().mail_dir
    stored = mail_sink.stored_messages(folder)
    chosen = stored[0].id if message_id == "latest" and stored else message_id
    path = folder / f"{chosen}.eml"
    if not path.is_file() or "/" in chosen:
        raise click.UsageError(f"no message {message_id!r} in {folder}")
    message = mail_sink.load(path)
    body = message.get_body(("plain", "html"))
    shown = {
        "id": chosen,
        "headers": {name: str(value) for name, value in message.items()},
        "body": body.get_content() if body else "",
        "attachments": [part.get_filename() for part in message.iter_attachments()],
    }
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
    )


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--recursive", "-r", is_flag=True, help="Walk the folders below too (hidden ones skipped).")
@thumbnail_options
@click.option("--wait", is_flag=True, help="Show the jobs finishing; exit 1 if any failed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def thumbnails(
    directory: Path, recursive: bool, sizes: tuple[int, ...], fmt: str | None, wait: bool, as_json: bool
) -> None:
    """Enqueue a thumbnail job for every image in DIRECTORY whose thumbnails are missing or stale.

    Example: python cli.py thumbnails photos --recursive --wait
    """
    settings = get_settings()
    places = images.Places.from_settings(settings)
    kwargs = thumbnail_kwargs(sizes, fmt)
    spec = images.ThumbnailSpec.build(kwargs.get("sizes"), kwargs.get("format"), settings)
    root = directory.resolve()
    if not root.is_relative_to(places.media_root):
        raise click.UsageError(f"{directory} is outside the media root {places.media_root}")
    found = list(images.find_images(root, recursive, skip=places.thumbs_root))
    calls = []
    with click.progressbar(found, label="checking", file=sys.stderr) as bar:
        for path in bar:
            argument = places.relative(path)
            if not images.is_up_to_date(argument, places, spec, settings.thumbnail_max_pixels):
                calls.append((argument,))
    jobs, refused = submit_many("thumbnail", calls, kwargs)
    summary: dict[str, Any] = {
        "images": len(found),
        "enqueued": len(jobs),
        "up_to_date": len(found) - len(calls),
        "refused": [{"path": args[0], "reason": reason} for args, reason in refused],
    }
    if wait and jobs:
        with click.progressbar(length=len(jobs), label="thumbnails", file=sys.stderr) as bar:
            outcomes = monitoring.wait_for_all(jobs, bar.update)
        summary["finished"] = sum(outcome.status == "finished" for outcome in outcomes)
        summary["failed"] = [
            {"path": job.args[0], "reason": outcome.reason}
            for job, outcome in zip(jobs, outcomes, strict=True)
            if outcome.status != "finished"
        ]
    emit(summary, as_json, render_thumbnails_summary)
    if summary["refused"] or summary.get("failed"):
        sys.exit(EXIT_FAILURE)


def render_thumbnails_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['images']} images: {summary['enqueued']} enqueued, {summary['up_to_date']} up to date, "
        f"{len(summary['refused'])} refused"
    ]
    lines += [f"  refused {item['path']}: {item['reason']}" for item in summary["refused"]]
    if "finished" in summary:
        lines.append(f"{summary['finished']} finished, {len(summary['failed'])} failed")
        lines += [f"  failed {item['path']}: {item['reason']}" for item in summary["failed"]]
    return "\n".join(lines)


@cli.group()
def schedule() -> None:
    """The periodic jobs declared in the settings (`schedule`), kept in rq-scheduler.

    Example: python cli.py schedule list
    """


@schedule.command("sync")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def schedule_sync(as_json: bool) -> None:
    """Make rq-scheduler hold exactly the enabled entries; running it twice changes nothing.

    Example: python cli.py schedule sync
    """
    changes = asdict(periodic.sync())
    emit(
        changes,
        as_json,
        lambda c: "\n".join(f"{kind:<10}{', '.join(names) or '-'}" for kind, names in c.items()),
    )


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def schedule_list(as_json: bool) -> None:
    """Each entry: when, next run (in RQKIT_SCHEDULE_TIMEZONE), last run and its outcome, skips.

    Example: python cli.py schedule list --json
    """
    rows = periodic.listing()
    emit(rows, as_json, render_schedule)


def render_schedule(rows: list[dict[str, Any]]) -> str:
    head = f"{'entry':<22}{'when':<20}{'next run':<28}{'last run':<28}{'outcome':<10}skipped"
    lines = [head]
    for row in rows:
        next_run = row["next_run"] or ("disabled" if not row["enabled"] else "not synced")
        lines.append(
            f"{row['name']:<22}{row['when']:<20}{next_run:<28}{row['last_due'] or '-':<28}"
            f"{row['last_outcome'] or '-':<10}{row['skipped']}"
        )
    return "\n".join(lines)


@schedule.command("clear")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def schedule_clear(as_json: bool) -> None:
    """Remove every entry the toolkit synced (jobs scheduled by others stay).

    Example: python cli.py schedule clear
    """
    emit({"removed": periodic.clear()}, as_json, lambda r: f"removed: {', '.join(r['removed']) or '-'}")


@schedule.command("run")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def schedule_run(name: str, as_json: bool) -> None:
    """Enqueue one run of entry NAME now.

    Example: python cli.py schedule run expire-sessions
    """
    job = periodic.run_now(name)
    emit(
        {"entry": name, "id": job.id, "queue": job.origin},
        as_json,
        lambda r: f"{name}: enqueued as job {r['id']} on {r['queue']}",
    )


@cli.group()
def jobs() -> None:
    """Look into jobs.

    Example: python cli.py jobs show 6f1c2b9e-...
    """


@jobs.command("list")
@click.option("--queue", help="Only this queue.")
@click.option("--status", type=click.Choice(operations.STATUSES), help="Only jobs in this state.")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--job", "job_name", help="Only this job type.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_list(
    queue: str | None, status: str | None, tag: str | None, job_name: str | None, limit: int, as_json: bool
) -> None:
    """Jobs newest first (scheduled ones include rq-scheduler's), filtered; never a whole registry read.

    Example: python cli.py jobs list --status failed --job email --limit 20
    """
    rows = operations.list_jobs(redis_client(), queue, status, tag, job_name, limit)
    width = max((len(row["id"]) for row in rows), default=0)  # rq-scheduler's ids are longer than uuids
    emit(
        rows,
        as_json,
        lambda rs: (
            "\n".join(f"{r['id']:<{width}}  {r['status']:<10}{r['queue']:<12}{r['description']}" for r in rs)
            or "no jobs"
        ),
    )


def steered(action: str, job_id: str, as_json: bool) -> None:
    emit({"id": job_id, "done": action}, as_json, lambda r: f"job {job_id}: {action}")


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_cancel(job_id: str, as_json: bool) -> None:
    """Take a queued or scheduled job off its queue or schedule (refused once it has started).

    Example: python cli.py jobs cancel 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e
    """
    operations.cancel(redis_client(), job_id)
    steered("canceled", job_id, as_json)


@jobs.command("move")
@click.argument("job_id")
@click.option("--to", "queue", required=True, help="The queue to move it to.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_move(job_id: str, queue: str, as_json: bool) -> None:
    """Move a queued job to another queue.

    Example: python cli.py jobs move 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e --to maintenance
    """
    operations.move(redis_client(), job_id, queue)
    steered(f"moved to {queue}", job_id, as_json)


@jobs.command("front")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_front(job_id: str, as_json: bool) -> None:
    """Move a queued job to the front of its queue.

    Example: python cli.py jobs front 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e
    """
    operations.to_front(redis_client(), job_id)
    steered("moved to the front", job_id, as_json)


@jobs.command("edit")
@click.argument("job_id")
@click.option("--arg", "args", multiple=True, help="Replace the arguments (JSON values, repeat in order).")
@click.option("--kwarg", "pairs", multiple=True, help="Set a keyword argument NAME=JSON; repeat for several.")
@click.option("--timeout", type=int, help="A new time-out, in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_edit(
    job_id: str, args: tuple[str, ...], pairs: tuple[str, ...], timeout: int | None, as_json: bool
) -> None:
    """Change a queued or scheduled job's arguments or time-out (refused once it has started).

    Example: python cli.py jobs edit 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e --arg 10 --timeout 120
    """
    new_args = [json_option("--arg", value) for value in args] if args else None
    kwargs = {name: json_option("--kwarg", value) for name, value in pairs_of("--kwarg", pairs).items()}
    job = operations.edit(redis_client(), job_id, new_args, kwargs or None, timeout)
    steered(f"now {job.description} (time-out {job.timeout}s)", job_id, as_json)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def jobs_show(job_id: str, as_json: bool) -> None:
    """One job: its call, policy, timings, attempts, worker, and its result or full traceback.

    Example: python cli.py jobs show 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e --json
    """
    view = operations.job_view(job_id, redis_client())
    emit(
        view,
        as_json,
        lambda v: (
            "\n".join(f"{k:<14}{v[k]}" for k in v if k != "traceback" and v[k] is not None)
            + (f"\n\n{v['traceback']}" if v["traceback"] else "")
        ),
    )


@cli.group()
def failed() -> None:
    """Failed jobs: grouped, requeued (same id, history kept) or deleted.

    Example: python cli.py failed list
    """


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def failed_list(as_json: bool) -> None:
    """Failed jobs grouped by job and reason, with counts, the largest groups first.

    Example: python cli.py failed list --json
    """
    groups = operations.failed_groups(redis_client())
    emit(
        groups,
        as_json,
        lambda gs: "\n".join(f"{g['count']:>6}  {g['job']:<16}{g['reason']}" for g in gs) or "no failed jobs",
    )


def failed_selection(func: Callable[..., Any]) -> Callable[..., Any]:
    """IDS... or --all [--job NAME], and --json."""
    for option in reversed(
        [
            click.argument("ids", nargs=-1),
            click.option("--all", "every", is_flag=True, help="Every failed job (of --job NAME, if given)."),
            click.option("--job", "job_name", help="Only failed jobs of this job type (with --all)."),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON document."),
        ]
    ):
        func = option(func)
    return func


@failed.command("requeue")
@failed_selection
def failed_requeue(ids: tuple[str, ...], every: bool, job_name: str | None, as_json: bool) -> None:
    """Put failed jobs back on their queues; they keep their ids and history.

    Example: python cli.py failed requeue --all --job email
    """
    done = operations.requeue_failed(redis_client(), list(ids), every, job_name)
    emit({"requeued": done}, as_json, lambda r: f"requeued {len(r['requeued'])} job(s)")


@failed.command("delete")
@failed_selection
def failed_delete(ids: tuple[str, ...], every: bool, job_name: str | None, as_json: bool) -> None:
    """Delete failed jobs for good.

    Example: python cli.py failed delete 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e
    """
    done = operations.delete_failed(redis_client(), list(ids), every, job_name)
    emit({"deleted": done}, as_json, lambda r: f"deleted {len(r['deleted'])} job(s)")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """Every worker: host, pid, queues, state, current job and since when, counts, heartbeat, RSS.

    Example: python cli.py workers --json
    """
    if ctx.invoked_subcommand is None:
        emit(operations.workers(redis_client()), as_json, render_workers)


def render_workers(views: list[dict[str, Any]]) -> str:
    lines = [
        f"{'name':<34}{'host':<12}{'pid':>8}  {'state':<9}{'done':>6}{'failed':>7}{'RSS MB':>8}"
        f"{'heartbeat':>11}  current job"
    ]
    for w in views:
        job = f"{w['current_job']} for {age(w['job_started_at'])}" if w["current_job"] else "-"
        rss = "-" if w["rss_mb"] is None else f"{w['rss_mb']:.0f}"
        lines.append(
            f"{w['name']:<34}{w['hostname']:<12}{w['pid']:>8}  {w['state']:<9}{w['finished']:>6}"
            f"{w['failed']:>7}{rss:>8}{age(w['last_heartbeat']) + ' ago':>11}  {job}"
        )
    return "\n".join(lines) if views else "no workers"


def age(moment: str | None) -> str:
    """How long ago an ISO time was, like 42s, 7m or 3h."""
    if moment is None:
        return "?"
    then = datetime.fromisoformat(moment)
    seconds = max(0, (datetime.now(UTC) - then.replace(tzinfo=then.tzinfo or UTC)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@workers.command("kill")
@click.argument("name")
def workers_kill(name: str) -> None:
    """Stop NAME's current job (RQ's kill-horse command); the worker goes on.

    Example: python cli.py workers kill 5678b6cf114b44e0b1043fb8881817f9
    """
    job_id = operations.kill_current_job(redis_client(), name)
    click.echo(f"asked {name} to kill its current job {job_id}")


@workers.command("stop")
@click.argument("name")
def workers_stop(name: str) -> None:
    """Shut NAME down warm: it finishes its current job, then exits.

    Example: python cli.py workers stop 5678b6cf114b44e0b1043fb8881817f9
    """
    operations.stop_worker(redis_client(), name)
    click.echo(f"asked {name} to shut down")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to serve on.")
@click.option("--port", default=9182, show_default=True, type=click.IntRange(1, 65535), help="The port.")
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics at http://HOST:PORT/metrics until Ctrl-C: queue depths per state,
    workers, rqscheduler instances, job runs by job, queue and outcome, job durations.

    Example: python cli.py metrics --port 9182
    """
    check_free(host, port, "metrics", "--port")
    registry = CollectorRegistry()
    registry.register(job_metrics.ToolkitCollector(redis_client()))
    server, thread = start_http_server(port, host, registry=registry)
    click.echo(f"metrics on http://{host}:{port}/metrics (Ctrl-C stops)", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def info(as_json: bool) -> None:
    """Queues (queued, started, scheduled, failed, ...) and workers (state, current job).

    Example: python cli.py info --json
    """
    emit(monitoring.overview(redis_client()), as_json, render_overview)


def render_overview(view: dict[str, Any]) -> str:
    columns = ["queued", "started", "scheduled", "deferred", "failed", "finished"]
    lines = [f"{'queue':<14}" + "".join(f"{c:>10}" for c in columns)]
    lines += [f"{q['name']:<14}" + "".join(f"{q[c]:>10}" for c in columns) for q in view["queues"]]
    lines.append(f"rq-scheduler entries: {view['rq_scheduler_jobs']}")
    lines.append(f"\n{len(view['workers'])} worker(s)")
    for w in view["workers"]:
        job = w["current_job"] or "-"
        lines.append(f"  {w['name']:<34} {w['state']:<10} job {job:<38} {','.join(w['queues'])}")
    return "\n".join(lines)


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def show_stats(as_json: bool) -> None:
    """The cached total word counts (one Redis GET each; recount with `enqueue word-count`).

    Example: python cli.py stats
    """
    connection = redis_client()
    totals = {model: stats.total_word_count(model, connection) for model in stats.MODELS}
    emit(
        totals,
        as_json,
        lambda t: "\n".join(f"{m:<10}{'not computed yet' if n is None else n}" for m, n in t.items()),
    )


@cli.group()
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def seed(articles: int, comments: int, as_json: bool) -> None:
    """Add sample articles and comments, then queue a word count of each (as a web app's hooks would).

    Example: python cli.py demo seed --articles 50
    """
    added: dict[str, Any] = {
        **content.seed(content.content_engine(get_settings().sqlalchemy_url), articles, comments)
    }
    connection = redis_client()
    added["word_count_jobs"] = [
        submit("word-count", (m,), connection=connection).job.id for m in stats.MODELS
    ]
    emit(
        added,
        as_json,
        lambda a: (
            f"added {a['articles']} articles and {a['comments']} comments; "
            f"word counts queued: {', '.join(a['word_count_jobs'])}"
        ),
    )


@cli.command()
@click.option("--workers", type=click.IntRange(min=0), help="Worker processes (default: RQKIT_WORKERS, 2).")
@click.option("--scheduler/--no-scheduler", default=True, help="Run rqscheduler (default: yes).")
@click.option("--dashboard/--no-dashboard", default=True, help="Run rq-dashboard (default: yes).")
@click.option("--demo", "with_demo", is_flag=True, help="Seed sample data and enqueue a few demo jobs.")
def up(workers: int | None, scheduler: bool, dashboard: bool, with_demo: bool) -> None:
    """Run everything: Redis (embedded if none answers), workers, rqscheduler and rq-dashboard.

    Ctrl-C (or SIGTERM) stops it all; workers finish their current job first.

    Example: python cli.py up --workers 4 --demo
    """
    settings = get_settings()
    stack = Stack(settings, settings.workers if workers is None else workers, scheduler, dashboard)

    def sync_schedule() -> None:
        changes = periodic.sync(settings, redis_client(settings))
        stack.say(
            "schedule",
            f"synced: {len(changes.added)} added, {len(changes.updated)} updated, "
            f"{len(changes.removed)} removed, {len(changes.unchanged)} unchanged",
        )

    sys.exit(
        stack.run(
            prepare=sync_schedule if scheduler else None,
            on_ready=(lambda: run_demo(stack)) if with_demo else None,
        )
    )


@cli.command()
@click.option("--host", help="Address to bind (default: RQKIT_DASHBOARD_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: RQKIT_DASHBOARD_PORT, 9181).")
@click.option("--read-only", is_flag=True, help="Refuse requeue, delete, empty and compact.")
def dashboard(host: str | None, port: int | None, read_only: bool) -> None:
    """Serve rq-dashboard for the configured Redis, hardened (see launcher/dashboard.py).

    Off loopback it needs RQKIT_DASHBOARD_USERNAME and RQKIT_DASHBOARD_PASSWORD (basic auth).

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


@cli.command("redis")
def run_redis() -> None:
    """Run only Redis (embedded if none answers), to start the other parts by hand; Ctrl-C stops it.

    Example: python cli.py redis
    """
    sys.exit(Stack(get_settings(), workers=0, scheduler=False, dashboard=False, mail=False).run())


def run_demo(stack: Stack) -> None:
    """Seed the database, enqueue a few jobs, and report their outcomes in the log."""
    engine = content.content_engine(stack.settings.sqlalchemy_url)
    added = content.seed(engine, 20, 5)
    stack.say("demo", f"added {added['articles']} articles and {added['comments']} comments")
    connection = redis_client(stack.settings)
    demo_jobs = [
        ("sleep", (1,), None),
        ("sleep", (2,), None),
        ("word-count", ("comment",), None),
        ("word-count", ("article",), None),
        ("sleep", (1,), datetime.now().astimezone() + timedelta(seconds=10)),
    ]
    submitted = [submit(name, args, at=at, connection=connection).job for name, args, at in demo_jobs]
    for job in submitted:
        stack.say("demo", f"enqueued {job.description} as job {job.id}")
    for job in submitted:
        outcome = monitoring.wait_for(job)
        stack.say(
            "demo",
            f"{job.description}: {outcome.status} {json.dumps(outcome.result) if outcome.result else ''}",
        )
    totals = {m: stats.total_word_count(m, connection) for m in stats.MODELS}
    stack.say(
        "demo",
        f"cached word counts (python cli.py stats): {json.dumps(totals)}; dashboard: "
        f"http://{stack.settings.dashboard_host}:{stack.settings.dashboard_port}",
    )


if __name__ == "__main__":
    cli()
