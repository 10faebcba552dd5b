"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues."""

import sys

from config.errors import ConfigError
from config.settings import get_settings

try:
    _settings = get_settings()
except ConfigError as exc:
    sys.exit(f"config.rq: {exc}")  # one line naming the setting, not a traceback from inside rq

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
