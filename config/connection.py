"""The one place that makes Redis clients: from settings, for a probe of a URL, or a pool of its own."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import ConnectionError, TimeoutError

from config.errors import ToolkitError
from config.settings import Settings, get_settings

# Key prefixes that belong to RQ and to the toolkit: no job, store or sweep may write or delete under them.
RESERVED_PREFIXES = ("rq:", "rqkit:")


class RedisUnavailable(ToolkitError):
    """Nothing answers at the configured Redis URL."""

    def __init__(self, url: str) -> None:
        super().__init__(f"Redis is not reachable at {redacted_url(url)}")


def redis_client(settings: Settings | None = None) -> Redis:
    """The client for the configured Redis, shared by the process (it connects on first use)."""
    settings = settings or get_settings()
    return client_for(settings.redis_url, settings.redis_connect_timeout)


@cache
def client_for(url: str, connect_timeout: float) -> Redis:
    """One client, and so one connection pool, per URL: reusing connections is most of the speed."""
    return Redis.from_url(url, socket_connect_timeout=connect_timeout, health_check_interval=30)


def separate_client(client: Redis) -> Redis:
    """A client of the same server with a connection pool of its own (a socket nobody else shares)."""
    pool = client.connection_pool
    return Redis(connection_pool=type(pool)(pool.connection_class, **pool.connection_kwargs))


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url` (a throw-away client, closed at once)."""
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (ConnectionError, OSError):
        return False
    finally:
        client.close()


def ping(connection: Redis) -> None:
    """Check that Redis answers; raise RedisUnavailable naming the URL if not."""
    try:
        connection.ping()
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise RedisUnavailable(url_of(connection)) from exc


def url_of(connection: Redis) -> str:
    """Rebuild a (password-free) URL from a client, for messages."""
    kwargs = connection.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def redacted_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    netloc = f"{user}***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
