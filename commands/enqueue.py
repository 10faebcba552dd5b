"""`enqueue NAME ...`: one typed subcommand per job, each through the registry; and `thumbnails DIR`."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from commands.common import (
    EXIT_FAILURE,
    Duration,
    SafeCommand,
    SafeGroup,
    When,
    emit,
    json_output,
    json_value,
    pairs_of,
    say,
)
from config import get_settings
from jobs import api, email, get_spec, images, stats, submit, submit_many
from jobs.errors import JobInputError, UnknownJobError
from jobs.media import as_argument
from ops.outcomes import wait_for, wait_for_all


class JobCommands(SafeGroup):
    """`enqueue NAME`: an unknown NAME is a usage error that offers the closest names and lists the rest."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            raise click.UsageError(str(UnknownJobError(args[0], sorted(self.commands))), ctx)
        return super().resolve_command(ctx, args)


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
        json_output,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(cls=JobCommands)
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
        for report, (job, _) in zip(reports, submissions, strict=True):
            report.update(wait_for(job, tell=lambda line: say(f"waiting: {line}", err=True)).as_dict())
    emit(reports[0] if len(reports) == 1 else reports, as_json, render_submissions, quoted=("result",))
    if wait and any(report["status"] != "finished" for report in reports):
        sys.exit(EXIT_FAILURE)


def render_submissions(reports: dict[str, Any] | list[dict[str, Any]]) -> str:
    return "\n".join(map(render_submission, reports if isinstance(reports, list) else [reports]))


def render_submission(report: dict[str, Any]) -> str:
    what = get_spec(report["job"]).describe(tuple(report["args"]), report["kwargs"])  # the job's description
    if report["duplicate"]:
        line = f"{what}: already pending as job {report['id']} on {report['queue']}"
    else:
        line = f"{what}: {report['status']} as job {report['id']} on {report['queue']}"
    if report.get("reason"):
        return f"{line}\n{report['status']}: {report['reason']}"
    if "result" in report:
        return f"{line}\n{report['status']}: {json.dumps(report['result'], ensure_ascii=False, default=str)}"
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


@enqueue.command("release-due")
@enqueue_options
def enqueue_release_due(**options: Any) -> None:
    """Move the due retries, deferrals and --in/--at jobs of every queue to their queues, where no
    worker runs RQ's scheduler (bare `rq worker`s; the schedule does it every minute).

    Example: python cli.py enqueue release-due --wait
    """
    run_enqueue("release-due", [((), {})], **options)


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

    Paths are relative to the current directory and must lie inside the media root (with a bucket
    for the media root: keys below its prefix, or s3:// URLs).

    Example: python cli.py enqueue thumbnail photos/cat.jpg --size 256 --wait
    """
    settings = get_settings()
    kwargs = thumbnail_kwargs(sizes, fmt)
    run_enqueue("thumbnail", [((as_argument(path, settings),), kwargs) for path in paths], **options)


@enqueue.command("api-call")
@click.argument("method", type=click.Choice(sorted(api.METHODS), case_sensitive=False))
@click.argument("url")
@click.option("--data", help="A JSON request body.")
@click.option("--param", multiple=True, help="A query parameter NAME=VALUE; repeat for several.")
@click.option("--header", multiple=True, help="A header 'NAME: VALUE'; repeat for several.")
@click.option("--secret-header", multiple=True, help="NAME=SECRET: header NAME gets $RQKIT_SECRET_<SECRET>.")
@click.option("--key", help="Idempotency-Key for POST and PATCH (default: from the job's id).")
@click.option(
    "--store-as",
    metavar="NAME",
    help="Also keep the parsed body in Redis at rqkit:api:store:NAME (for RQKIT_API_STORE_TTL).",
)
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
        "json": json_value("--data", data),
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
    run_enqueue("webhook", [((url, event, json_value("--payload", payload), secret_name), {})], **options)


@enqueue.command("email")
@click.option("--to", multiple=True, required=True, help="A recipient's address; repeat for several.")
@click.option("--cc", multiple=True, help="A Cc address; repeat for several.")
@click.option("--bcc", multiple=True, help="A Bcc address; repeat for several.")
@click.option("--reply-to", multiple=True, help="A Reply-To address.")
@click.option("--subject", help="The subject (default: the template's).")
@click.option("--text", help="The plain-text body.")
@click.option("--html", help="The HTML body.")
@click.option("--template", help="A template under templates/email (welcome, password_reset).")
@click.option("--var", "context", multiple=True, help="A template variable, NAME=VALUE; repeat for several.")
@click.option(
    "--attach", "attachments", multiple=True, help="A file under the media root; repeat for several."
)
@click.option(
    "--key",
    "idempotency_key",
    help="Idempotency key (default: derived from the content and the recipients).",
)
@enqueue_options
def enqueue_email(context: tuple[str, ...], attachments: tuple[str, ...], **options: Any) -> None:
    """Send a message through SMTP (the local sink when no SMTP host is configured), at most once.

    Example: python cli.py enqueue email --to a@example.com --subject Hi --text Hello
    """
    settings = get_settings()
    message: dict[str, Any] = {
        "context": pairs_of("--var", context),
        "attachments": [as_argument(path, settings) for path in attachments],
    }
    for field in dataclasses.fields(email.Message):  # the rest of the message's fields, by their names
        if field.name not in message:
            value = options.pop(field.name)
            message[field.name] = list(value) if isinstance(value, tuple) else value
    run_enqueue("email", [((), {name: value for name, value in message.items() if value})], **options)


@click.command(cls=SafeCommand)
@click.argument("directory")
@click.option("--recursive", "-r", is_flag=True, help="Walk the folders below too (hidden ones skipped).")
@thumbnail_options
@click.option("--wait", is_flag=True, help="Show the jobs finishing; exit 1 if any failed.")
@json_output
def thumbnails(
    directory: str, recursive: bool, sizes: tuple[int, ...], fmt: str | None, wait: bool, as_json: bool
) -> None:
    """Enqueue a thumbnail job for every image in DIRECTORY whose thumbnails are missing or stale.

    With a bucket for the media root, DIRECTORY is a prefix below it (. for all of it), listed a page
    at a time.

    Example: python cli.py thumbnails photos --recursive --wait
    """
    settings = get_settings()
    places = images.Places.from_settings(settings)
    kwargs = thumbnail_kwargs(sizes, fmt)
    spec = images.ThumbnailSpec.build(kwargs.get("sizes"), kwargs.get("format"), settings)
    if isinstance(places.media_root, Path) and not os.path.isdir(directory):  # False on any OSError
        raise click.BadParameter(f"{directory!r} is not a folder", param_hint="'DIRECTORY'")
    try:
        names = places.media.names(as_argument(directory, settings))
    except JobInputError as exc:
        raise click.UsageError(str(exc)) from None
    found, calls = 0, []
    with click.progressbar(places.images(names, recursive), label="checking", file=sys.stderr) as bar:
        for path in bar:  # one listing page in memory at a time, and the images that need work
            found += 1
            if not images.is_up_to_date(path, places, spec):
                calls.append((path,))
    jobs, refused = submit_many("thumbnail", calls, kwargs)
    summary: dict[str, Any] = {
        "images": found,
        "enqueued": len(jobs),
        "up_to_date": found - len(calls),
        "refused": [{"path": args[0], "reason": reason} for args, reason in refused],
    }
    if wait and jobs:
        with click.progressbar(length=len(jobs), label="thumbnails", file=sys.stderr) as bar:
            outcomes = wait_for_all(jobs, bar.update)
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
