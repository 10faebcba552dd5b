"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues.

It is an entry point (RQ's CLI imports it), so it may reach the worker engine: in a worker it
preloads the job modules (`workers/preload.py`), lets jobs import only the functions the toolkit
allows (`workers/allowed.py`), and makes the worker's forks die with it.
"""

import os
import sys

from config.errors import ConfigError
from config.sentinel import is_sentinel_url, rq_sentinel_setting
from config.settings import get_settings
from workers.allowed import guard_every_job
from workers.lifetime import forks_die_with_this_process
from workers.preload import preload

try:
    _settings = get_settings()
    preload(_settings)
    guard_every_job()  # RQ's own worker, too, runs only the registry's jobs and the operator's
except ConfigError as exc:
    sys.exit(f"config.rq: {exc}")  # one line naming the setting, not a traceback from inside rq

forks_die_with_this_process()

_rq_url = os.environ.get("RQ_REDIS_URL")
if _rq_url and (is_sentinel_url(_rq_url) or _rq_url != _settings.redis_url):
    # RQ's --url reads RQ_REDIS_URL before this module: the worker would ignore REDIS_URL
    sys.exit(
        "config.rq: RQ_REDIS_URL is set and differs from REDIS_URL (or is a redis+sentinel URL, which "
        "RQ's --url can't read): unset it, REDIS_URL is the toolkit's setting"
    )

if is_sentinel_url(_settings.redis_url):  # RQ reads REDIS_URL first, so only one of the two is set
    SENTINEL = rq_sentinel_setting(
        _settings.redis_url,
        _settings.redis_password,
        _settings.sentinel_password,
        _settings.redis_connect_timeout,
    )
else:
    REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
