"""What an operator looks at and steers: `info`, `stats`, `jobs`, `failed`, `workers`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from commands.common import SafeCommand, SafeGroup, emit, json_output, json_value, pairs_of, say
from config import redis_client
from config.rq_classes import STATES
from jobs import stats
from ops import actions, views


@click.command(cls=SafeCommand)
@json_output
def info(as_json: bool) -> None:
    """Queues (queued, started, scheduled, failed, ...) and workers (state, current job).

    Example: python cli.py info --json
    """
    emit(views.overview(redis_client()), as_json, render_overview)


def render_overview(view: dict[str, Any]) -> str:
    lines = [f"{'queue':<14}" + "".join(f"{c:>10}" for c in STATES)]
    lines += [f"{q['name']:<14}" + "".join(f"{q[c]:>10}" for c in STATES) for q in view["queues"]]
    lines.append(f"rq-scheduler entries: {view['rq_scheduler_jobs']}")
    lines.append(f"\n{len(view['workers'])} worker(s)")
    for w in view["workers"]:
        job = w["current_job"] or "-"
        lines.append(f"  {w['name']:<34} {w['state']:<10} job {job:<38} {','.join(w['queues'])}")
    return "\n".join(lines)


@click.command("stats", cls=SafeCommand)
@json_output
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


@click.group(cls=SafeGroup)
def jobs() -> None:
    """Look into jobs.

    Example: python cli.py jobs show 6f1c2b9e-...
    """


@jobs.command("list")
@click.option("--queue", help="Only this queue.")
@click.option("--status", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--job", "job_name", help="Only this job type.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many.")
@json_output
def jobs_list(
    queue: str | None, status: str | None, tag: str | None, job_name: str | None, limit: int, as_json: bool
) -> None:
    """Jobs newest first (scheduled ones include rq-scheduler's), filtered; never a whole registry read.

    Example: python cli.py jobs list --status failed --job email --limit 20
    """
    rows = views.list_jobs(redis_client(), queue, status, tag, job_name, limit)
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
    emit({"id": job_id, "done": action}, as_json, lambda r: f"job {r['id']}: {r['done']}")


@jobs.command("cancel")
@click.argument("job_id")
@json_output
def jobs_cancel(job_id: str, as_json: bool) -> None:
    """Take a queued or scheduled job off its queue or schedule (refused once it has started).

    Example: python cli.py jobs cancel 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e
    """
    actions.cancel(redis_client(), job_id)
    steered("canceled", job_id, as_json)


@jobs.command("move")
@click.argument("job_id")
@click.option("--to", "queue", required=True, help="The queue to move it to.")
@json_output
def jobs_move(job_id: str, queue: str, as_json: bool) -> None:
    """Move a queued job to another queue.

    Example: python cli.py jobs move 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e --to maintenance
    """
    actions.move(redis_client(), job_id, queue)
    steered(f"moved to {queue}", job_id, as_json)


@jobs.command("front")
@click.argument("job_id")
@json_output
def jobs_front(job_id: str, as_json: bool) -> None:
    """Move a queued job to the front of its queue.

    Example: python cli.py jobs front 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e
    """
    actions.to_front(redis_client(), job_id)
    steered("moved to the front", job_id, as_json)


@jobs.command("edit")
@click.argument("job_id")
@click.option("--arg", "args", multiple=True, help="Replace the arguments (JSON values, repeat in order).")
@click.option("--kwarg", "pairs", multiple=True, help="Set a keyword argument NAME=JSON; repeat for several.")
@click.option("--timeout", type=int, help="A new time-out, in seconds.")
@json_output
def jobs_edit(
    job_id: str, args: tuple[str, ...], pairs: tuple[str, ...], timeout: int | None, as_json: bool
) -> None:
    """Change a queued or scheduled job's arguments or time-out (refused once it has started).

    Example: python cli.py jobs edit 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e --arg 10 --timeout 120
    """
    new_args = [json_value("--arg", value) for value in args] if args else None
    kwargs = {name: json_value("--kwarg", value) for name, value in pairs_of("--kwarg", pairs).items()}
    job = actions.edit(redis_client(), job_id, new_args, kwargs or None, timeout)
    steered(f"now {job.description} (time-out {job.timeout}s)", job_id, as_json)


@jobs.command("show")
@click.argument("job_id")
@json_output
def jobs_show(job_id: str, as_json: bool) -> None:
    """One job: its call, policy, timings, attempts, worker, and its result or full traceback.

    Example: python cli.py jobs show 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e --json
    """
    view = views.job_view(job_id, redis_client())
    emit(
        view,
        as_json,
        lambda v: (
            "\n".join(f"{k:<14}{v[k]}" for k in v if k != "traceback" and v[k] is not None)
            + (f"\n\n{v['traceback']}" if v["traceback"] else "")
        ),
        multiline=("traceback",),
    )


@click.group(cls=SafeGroup)
def failed() -> None:
    """Failed jobs: grouped, requeued (same id, history kept) or deleted.

    Example: python cli.py failed list
    """


@failed.command("list")
@json_output
def failed_list(as_json: bool) -> None:
    """Failed jobs grouped by job and reason, with counts, the largest groups first.

    Example: python cli.py failed list --json
    """
    groups = views.failed_groups(redis_client())
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
            json_output,
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
    done = actions.requeue_failed(redis_client(), list(ids), every, job_name)
    emit({"requeued": done}, as_json, lambda r: f"requeued {len(r['requeued'])} job(s)")


@failed.command("delete")
@failed_selection
def failed_delete(ids: tuple[str, ...], every: bool, job_name: str | None, as_json: bool) -> None:
    """Delete failed jobs for good.

    Example: python cli.py failed delete 6f1c2b9e-0d4e-4e0c-9f7e-1d2a3b4c5d6e
    """
    done = actions.delete_failed(redis_client(), list(ids), every, job_name)
    emit({"deleted": done}, as_json, lambda r: f"deleted {len(r['deleted'])} job(s)")


@click.group(cls=SafeGroup, invoke_without_command=True)
@json_output
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """Every worker: host, pid, queues, state, current job and since when, counts, heartbeat, RSS.

    Example: python cli.py workers --json
    """
    if ctx.invoked_subcommand is None:
        emit(views.workers(redis_client()), as_json, render_workers)


def render_workers(views: list[dict[str, Any]]) -> str:
    lines = [
        f"{'name':<34}{'host':<12}{'pid':>8}  {'state':<9}{'done':>6}{'failed':>7}{'RSS MB':>8}"
        f"{'heartbeat':>11}  current job"
    ]
    for view in views:
        w = {key: "-" if value is None else value for key, value in view.items()}  # a half-written entry
        job = f"{w['current_job']} for {age(view['job_started_at'])}" if view["current_job"] else "-"
        rss = "-" if view["rss_mb"] is None else f"{view['rss_mb']:.0f}"
        lines.append(
            f"{w['name']:<34}{w['hostname']:<12}{w['pid']:>8}  {w['state']:<9}{w['finished']:>6}"
            f"{w['failed']:>7}{rss:>8}{age(view['last_heartbeat']) + ' ago':>11}  {job}"
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
    job_id = actions.kill_current_job(redis_client(), name)
    say(f"asked {name} to kill its current job {job_id}")


@workers.command("stop")
@click.argument("name")
def workers_stop(name: str) -> None:
    """Shut NAME down warm: it finishes its current job, then exits.

    Example: python cli.py workers stop 5678b6cf114b44e0b1043fb8881817f9
    """
    actions.stop_worker(redis_client(), name)
    say(f"asked {name} to shut down")
