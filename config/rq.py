"""RQ settings module: `rq worker -c config.rq` uses the toolkit's Redis URL and queues."""

from config.settings import get_settings

_settings = get_settings()

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
