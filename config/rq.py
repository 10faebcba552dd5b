"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues."""

import sys

from config.errors import ConfigError
from config.settings import get_settings

try:
    _settings = get_settings()
    # Loaded here, in the worker, so that every forked work-horse starts with the job modules (and
    # Pillow, SQLAlchemy) imported and the TLS context built, instead of redoing both for each job.
    from jobs.email import tls_context

    if _settings.smtp_server[2] != "none":
        tls_context(_settings.smtp_ca_file)
except ConfigError as exc:
    sys.exit(f"config.rq: {exc}")  # one line naming the setting, not a traceback from inside rq

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
