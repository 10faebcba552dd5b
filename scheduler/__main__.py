"""`python -m scheduler`: rq-scheduler's loop as `up` runs it, on the toolkit's Redis, with the configured
serializer, and carrying on through Redis restarts (see scheduler/runner.py)."""

from __future__ import annotations

import argparse

from rq_scheduler.utils import setup_loghandlers

from config import get_settings, redis_client
from scheduler.runner import Scheduler


def main() -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__)
    parser.add_argument(
        "-i", "--interval", type=float, default=settings.scheduler_interval, help="seconds between checks"
    )
    args = parser.parse_args()
    setup_loghandlers(settings.log_level.upper())
    Scheduler(connection=redis_client(settings), interval=args.interval).run()


if __name__ == "__main__":
    main()
