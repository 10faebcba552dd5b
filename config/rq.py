"""RQ settings module: `rq worker -c config.rq` and `rq info -c config.rq` use the toolkit's Redis and queues."""

from config.settings import get_settings

_settings = get_settings()

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
