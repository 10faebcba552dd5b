"""Settings and Redis connections, shared by the jobs, the scheduler, the CLI and `rq -c config.rq`."""

from config.connection import RedisUnavailable, ping, redacted_url, redis_client
from config.errors import ConfigError, ToolkitError
from config.settings import Settings, get_settings, load_settings

__all__ = [
    "ConfigError",
    "RedisUnavailable",
    "Settings",
    "ToolkitError",
    "get_settings",
    "load_settings",
    "ping",
    "redacted_url",
    "redis_client",
]
