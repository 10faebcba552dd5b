"""rqkit's command line: enqueue jobs, look at queues and workers, run the whole stack.

The commands live in `commands/` (one module per group of them); this module makes them one `click`
group, turns the toolkit's errors into one line and an exit code, and configures logging.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
import redis

from commands import enqueue, inspect, run, schedule
from commands.common import printable
from config import RedisUnavailable, get_settings
from config.errors import ToolkitError
from config.outage import is_outage
from config.settings import LOG_FORMAT
from jobs.errors import JobInputError


class Toolkit(click.Group):
    """Turns the toolkit's errors into one line on stderr: usage errors exit 2, the rest exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobInputError as exc:  # no ctx: the root's usage line would mislead
            raise click.UsageError(printable(str(exc))) from exc
        except ToolkitError as exc:
            raise click.ClickException(printable(str(exc))) from exc
        except redis.RedisError as exc:
            if not is_outage(exc):
                raise
            raise click.ClickException(str(RedisUnavailable(get_settings().redis_url, exc))) from exc


class PrintableFormatter(logging.Formatter):
    """Log lines with the control characters of what they quote escaped (a traceback keeps its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), keep="\n")


@click.group(cls=Toolkit)
def cli() -> None:
    """rqkit: background jobs, scheduled maintenance and batch work on RQ and Redis.

    Example: python cli.py up --demo
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter(LOG_FORMAT))
    logging.basicConfig(level=get_settings().log_level.upper(), handlers=[handler])


for command in (
    enqueue.enqueue,
    enqueue.thumbnails,
    inspect.info,
    inspect.show_stats,
    inspect.jobs,
    inspect.failed,
    inspect.workers,
    schedule.schedule,
    run.up,
    run.run_redis,
    run.dashboard,
    run.metrics,
    run.demo,
    run.mail,
):
    cli.add_command(command)


if __name__ == "__main__":
    cli()
