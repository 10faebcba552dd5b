"""A Sentinel-managed Redis named by one URL, in the form rq-dashboard takes (parsed by the same library):
redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?socket_timeout=S&sentinel_socket_timeout=S].

The master's and the sentinels' passwords may also come from the environment (RQKIT_REDIS_PASSWORD,
RQKIT_SENTINEL_PASSWORD), so that the URL itself can sit in a settings file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.sentinel import Sentinel, SentinelManagedConnection
from redis_sentinel_url import parse_sentinel_url

from config.errors import ConfigError

SCHEME = "redis+sentinel"
REDIS_SCHEMES = ("redis", "rediss", "unix", SCHEME)


class MasterConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, except that a read cut short (a signal's exception during a
    worker's BLPOP) drops the socket, as redis-py's plain connection does: kept, it went back to the pool
    with the BLPOP's reply still due, and the next command waited behind it, so a Sentinel-connected RQ
    worker ignored the shutdown command (rq/rq#2268)."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] == SCHEME


@dataclass(frozen=True)
class SentinelTarget:
    """The sentinels to ask, the service whose master to use, and the options for both."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    master_options: dict[str, Any]
    sentinel_options: dict[str, Any]

    def connection_kwargs(
        self, password: str, connect_timeout: float, timeout: float | None = None
    ) -> dict[str, Any]:
        """What redis-py's Sentinel passes to every connection to the master."""
        options = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": timeout,
            "db": self.db,
            "connection_class": MasterConnection,
            **self.master_options,
        }
        if password and "password" not in options:
            options["password"] = password
        return options

    def sentinel_kwargs(self, password: str, connect_timeout: float) -> dict[str, Any]:
        """What it passes to every connection to a sentinel: a sentinel that stalls must not stall us."""
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": connect_timeout,
        }
        options |= self.sentinel_options
        if password:
            options["password"] = password
        return options


def check_redis_url(url: str, passwords_given: bool) -> None:
    """ConfigError for a REDIS_URL of no scheme Redis clients take, a bad redis+sentinel URL, or the
    passwords that only a redis+sentinel URL reads given with another."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(f"REDIS_URL: scheme must be one of {', '.join(REDIS_SCHEMES)}, got {scheme!r}")
    if scheme == SCHEME:
        parse(url)
    elif passwords_given:
        raise ConfigError(
            "RQKIT_REDIS_PASSWORD and RQKIT_SENTINEL_PASSWORD go with a redis+sentinel REDIS_URL; "
            "a redis:// URL carries its password (redis://:PASSWORD@host:6379/0)"
        )


def parse(url: str) -> SentinelTarget:
    """The URL's parts; ConfigError for one that names no service or has a bad host list, never quoting
    the URL (a password may be in it). The library splits at the first @ and takes the password as
    written: one with @, / or % in it belongs in RQKIT_REDIS_PASSWORD."""
    authority = url.partition("://")[2].partition("/")[0].partition("?")[0]
    if authority.count("@") > 1 or "%" in authority.partition("@")[0]:
        raise ConfigError(
            "REDIS_URL: a password with @ or % in it can't be read from a redis+sentinel URL: "
            "give it in RQKIT_REDIS_PASSWORD"
        )
    try:
        parsed = parse_sentinel_url(url)
        hosts = tuple((host, port) for host, port in parsed.hosts)
    except ValueError:
        raise ConfigError(
            "REDIS_URL: not a redis+sentinel URL (redis+sentinel://HOST:26379,HOST:26379/SERVICE/DB)"
        ) from None
    service = parsed.default_client.service
    if not service or parsed.default_client.type != "master":
        raise ConfigError(
            "REDIS_URL: a redis+sentinel URL names the master's service: "
            "redis+sentinel://HOST:26379,HOST:26379/SERVICE/DB"
        )
    if not hosts or any(not host or not 1 <= port <= 65535 for host, port in hosts):
        raise ConfigError("REDIS_URL: a redis+sentinel URL lists sentinels as HOST:PORT,HOST:PORT")
    master = dict(parsed.client_options)
    db = int(master.pop("db", 0))
    return SentinelTarget(hosts, service, db, master, dict(parsed.sentinel_options))


def master_client(
    url: str, password: str, sentinel_password: str, connect_timeout: float, timeout: float
) -> Redis:
    """A client of the service's current master: it asks the sentinels again after a failover."""
    target = parse(url)
    sentinel = Sentinel(
        list(target.hosts),
        sentinel_kwargs=target.sentinel_kwargs(sentinel_password, connect_timeout),
        **target.connection_kwargs(password, connect_timeout, timeout),
    )
    client: Redis = sentinel.master_for(target.service, health_check_interval=30)
    return client


def rq_sentinel_setting(
    url: str, password: str, sentinel_password: str, connect_timeout: float
) -> dict[str, Any]:
    """The same target as RQ's `SENTINEL` setting, for `rq worker -c config.rq`."""
    target = parse(url)
    master = target.connection_kwargs(password, connect_timeout)
    return {
        "INSTANCES": list(target.hosts),
        "MASTER_NAME": target.service,
        "DB": master.pop("db"),
        "PASSWORD": master.pop("password", None),
        "SOCKET_TIMEOUT": master.pop("socket_timeout", None),
        "CONNECTION_KWARGS": master,
        "SENTINEL_KWARGS": target.sentinel_kwargs(sentinel_password, connect_timeout),
    }
