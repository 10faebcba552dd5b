"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues.

It is an entry point (RQ's CLI imports it), so it may reach the worker engine: in a worker it
preloads the job modules (`workers/preload.py`) and makes the worker's forks die with it.
"""

import sys

from config.errors import ConfigError
from config.settings import get_settings
from workers.lifetime import forks_die_with_this_process
from workers.preload import preload

try:
    _settings = get_settings()
    preload(_settings)
except ConfigError as exc:
    sys.exit(f"config.rq: {exc}")  # one line naming the setting, not a traceback from inside rq

forks_die_with_this_process()

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
