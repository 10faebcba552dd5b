"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues."""

import sys

from config.errors import ConfigError
from config.settings import get_settings

try:
    _settings = get_settings()
    # Imported here, in the worker, so that every forked work-horse starts with the job modules (and
    # Pillow, SQLAlchemy) already imported instead of importing them again for each job.
    import jobs  # noqa: F401
except ConfigError as exc:
    sys.exit(f"config.rq: {exc}")  # one line naming the setting, not a traceback from inside rq

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
