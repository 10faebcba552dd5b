"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues."""

import os
import signal
import sys

from config.errors import ConfigError
from config.settings import get_settings
from launcher.children import die_with_parent

try:
    _settings = get_settings()
    # Loaded here, in the worker, so that every forked work-horse starts with the job modules (and
    # Pillow, SQLAlchemy) imported and the TLS context built, instead of redoing both for each job.
    from jobs.email import tls_context

    if _settings.smtp_server[2] != "none":
        tls_context(_settings.smtp_ca_file)
except ConfigError as exc:
    sys.exit(f"config.rq: {exc}")  # one line naming the setting, not a traceback from inside rq

# A worker's forked children (its scheduler process, its work-horses) die with it. Without this, kill -9
# of a worker leaves its scheduler running with the worker's blocked BLPOP connection still open:
# Redis hands the next job of those queues to that socket, which nobody reads, and the job is lost.
os.register_at_fork(after_in_child=lambda: die_with_parent(signal.SIGKILL))

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
