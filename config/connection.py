"""The one place that makes Redis clients: from settings, for a probe of a URL, or a pool of its own."""

from __future__ import annotations

import os
import threading
from functools import cache
from typing import Any

from redis import Redis
from redis.connection import Connection
from redis.exceptions import ConnectionError, TimeoutError
from redis.sentinel import SentinelConnectionPool
from redis.utils import str_if_bytes

from config.errors import ToolkitError
from config.outage import REDIS_DOWN, server_reply
from config.sentinel import SCHEME as SENTINEL_SCHEME
from config.sentinel import is_sentinel_url, master_client
from config.settings import Settings, get_settings
from config.urls import redacted_url

# Key prefixes that belong to RQ and to the toolkit: no job, store or sweep may write or delete under them.
RESERVED_PREFIXES = ("rq:", "rqkit:")


class RedisUnavailable(ToolkitError):
    """Nothing answers at the configured Redis URL, or it takes no write for now."""

    def __init__(self, url: str, cause: BaseException | None = None) -> None:
        if cause is None or isinstance(cause, REDIS_DOWN):
            super().__init__(f"Redis is not reachable at {redacted_url(url)}")
        else:  # NOREPLICAS, READONLY: nothing was written; the same call may succeed in a moment
            reply = server_reply(cause)
            super().__init__(f"Redis at {redacted_url(url)} takes no writes for now ({reply}); try again")


def redis_client(settings: Settings | None = None) -> Redis:
    """The client for the configured Redis, shared by the process (it connects on first use)."""
    settings = settings or get_settings()
    timeouts = (settings.redis_connect_timeout, settings.redis_timeout)
    return client_for(settings.redis_url, timeouts, settings.redis_password, settings.sentinel_password)


@cache
def client_for(
    url: str, timeouts: tuple[float, float], password: str = "", sentinel_password: str = ""
) -> Redis:
    """One client, and so one connection pool, per URL: reusing connections is most of the speed. For a
    redis+sentinel URL, a client of the current master, which follows it through a failover. `timeouts`:
    to connect, and for a reply (a stalled server is an error, not a hang)."""
    if is_sentinel_url(url):
        return master_client(url, password, sentinel_password, *timeouts)
    connect, reply = timeouts
    return Redis.from_url(url, socket_connect_timeout=connect, socket_timeout=reply, health_check_interval=30)


def separate_client(client: Redis) -> Redis:
    """A client of the same server with a connection pool of its own (a socket nobody else shares)."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        kwargs = {name: value for name, value in pool.connection_kwargs.items() if name != "connection_pool"}
        own = SentinelConnectionPool(
            pool.service_name,
            pool.sentinel_manager,
            is_master=pool.is_master,
            check_connection=pool.check_connection,
            connection_class=pool.connection_class,
            **kwargs,
        )
        return Redis(connection_pool=own)
    return Redis(connection_pool=type(pool)(pool.connection_class, **pool.connection_kwargs))


def close_inherited(client: Redis) -> None:
    """In a forked child: close the sockets of `client`'s connections, which it inherited; the parent's
    stay open (redis-py shuts a socket down only in the process that opened it, and here just closes
    this process's copy)."""
    pool = client.connection_pool
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        connection.disconnect()


# What a job could leave changed on a connection (CLIENT INFO's fields), which the next one must not get.
SESSION = tuple("name flags db sub psub ssub multi watch user redir resp lib-name lib-ver".split())


def session(connection: Any) -> dict[str, str | None]:
    """The state of a redis-py Connection's server session, as CLIENT INFO tells it (Redis 6.2+), with
    its protocol as HELLO tells it (CLIENT INFO shows it from Redis 7.0 on): one round trip."""
    connection.send_packed_command(connection.pack_commands([("CLIENT", "INFO"), ("HELLO",)]))
    fields = dict(item.split("=", 1) for item in str_if_bytes(connection.read_response()).split())
    hello = connection.read_response()  # a map in RESP3, a flat list in RESP2
    pairs = hello.items() if isinstance(hello, dict) else zip(hello[::2], hello[1::2], strict=True)
    protocol = next((str(value) for key, value in pairs if str_if_bytes(key) == "proto"), None)
    return {name: protocol if name == "resp" else fields.get(name) for name in SESSION}


class HandedConnection:
    """A connection that a process keeps connected for its forked children (work-horses), one child at a
    time, instead of each opening its own (a connection's set-up costs Redis about what 6 claimed jobs
    do). One for the child's own use, which takes it over as the one idle connection of `client`'s pool;
    one (`for_job`) for a job in it that connects to the same Redis with the same settings on its own,
    which takes over its socket: a batch horse's claims and its jobs' own client each have one. The
    parent never uses it."""

    job_connection: Any = None  # in a child, for_job: the job's connection that took the socket over

    def __init__(self, client: Redis, for_job: bool = False) -> None:
        self.client = client
        self.for_job = for_job
        self.used = False  # in a child: whether it took the connection over
        pool: Any = client.connection_pool  # its connections' internals are used here
        self.connection = pool.make_connection()
        try:
            self.connection.connect()
            self.socket = self.connection._sock
            self.session = session(self.connection)
        except BaseException:
            self.connection.disconnect()
            raise

    def take_over(self) -> None:
        """In a child: the connection becomes its pool's, as if this process had opened it, the first time
        the pool needs a new one; for_job, a job's first connection of the same settings gets its socket."""
        if self.for_job:
            if type(self.connection) is Connection:  # plain TCP (an SSL connection wraps the socket it makes)
                Connection._connect = self.socket_for_job(Connection._connect)  # type: ignore[method-assign]
            return
        pool: Any = self.client.connection_pool  # its make_connection is replaced, once
        connection = self.connection
        pool._checkpid()  # the pool starts over, empty, in this process
        make_connection = pool.make_connection

        def handed_first() -> Any:
            pool.make_connection = make_connection  # after this one, its own
            self.used = True
            connection.pid = os.getpid()
            if isinstance(pool, SentinelConnectionPool):  # the master it is connected to is the pool's
                pool.proxy.master_address = (connection.host, connection.port)
            pool._created_connections += 1
            return connection

        pool.make_connection = handed_first

    def socket_for_job(self, connect: Any) -> Any:
        """Connection._connect, which hands the socket over to the first connection this process makes
        to the same server, database and user with the same protocol (a RESP2 client misreads the replies
        of a RESP3 session) and socket options. Its own handshake (AUTH, HELLO, CLIENT SETNAME,
        SETINFO...) follows as on a new socket, unless it would only repeat the socket's
        (`same_handshake`): then its parser alone is set up (a millisecond in a fresh horse)."""
        handed = self.connection

        def socket_or_new(connection: Any) -> Any:
            same = type(connection) is Connection and all(
                getattr(connection, name) == getattr(handed, name)
                for name in ("host", "port", "db", "username", "password", "credential_provider")
                + ("protocol", "socket_type", "socket_keepalive", "socket_keepalive_options")
            )
            if self.used or not same:
                return connect(connection)
            self.used, self.job_connection = True, connection
            self.socket.settimeout(connection.socket_timeout)
            if same_handshake(connection, handed):
                connection.redis_connect_func = handshake_of(handed)
            return self.socket

        return socket_or_new

    def give_back(self) -> float | None:
        """In that child, before it ends: the connection taken back from whoever took it; if the next child
        can take it over (unused; or idle, on the socket it came with, no reply left unread, its session as
        it came: same database, name, user, no subscription, transaction or tracking), when it needs its
        next health check (else None)."""
        pool, connection = self.client.connection_pool, self.connection
        with pool._lock:
            if not self.used:
                if not self.for_job:
                    del pool.make_connection
                self.used = True  # nobody in this child takes it from now on
                return connection.next_health_check
            if self.for_job:  # a job's: given back if no thread of it could use it, and if the next job's
                # client may skip its handshake on it (this one's changed nothing that CLIENT INFO misses)
                if threading.active_count() > 1 or not same_handshake(self.job_connection, connection):
                    return None
                connection = self.job_connection
            elif connection not in pool._available_connections:  # in use (a thread?), or dropped
                return None
            else:
                pool._available_connections.remove(connection)
        try:
            clean = (
                connection._sock is self.socket
                and not connection.can_read()
                and session(connection) == self.session
            )
            self.socket.settimeout(self.connection.socket_timeout)
        except Exception:  # a job's connection in a state of its own (RESP3, a decoder...): not reused
            return None
        return connection.next_health_check if clean else None

    def taken_back(self, next_health_check: float) -> None:
        """In the parent, after a child gave it back: when it was last seen answering (as the child saw)."""
        self.connection.next_health_check = next_health_check

    def close(self) -> None:
        """In the parent: close it for every process (a child that still holds it sees it end)."""
        self.connection.disconnect()


def same_handshake(connection: Any, handed: Any) -> bool:
    """Whether redis-py's handshake on `connection` would only repeat the one `handed` made, on a socket
    whose session is still as that left it: the same protocol (HELLO), database (SELECT), name (CLIENT
    SETNAME), library (CLIENT SETINFO) and maintenance notifications; no credential provider or
    handshake function of its own."""
    return (
        all(
            getattr(one, "redis_connect_func", None) is None
            and getattr(one, "credential_provider", None) is None
            for one in (connection, handed)
        )
        and all(
            getattr(connection, name, None) == getattr(handed, name, None)
            for name in ("protocol", "db", "username", "password", "client_name", "lib_name", "lib_version")
        )
        and settings_of(connection, "driver_info") == settings_of(handed, "driver_info")
        and settings_of(connection, "maint_notifications_config")
        == settings_of(handed, "maint_notifications_config")
    )


def settings_of(connection: Any, name: str) -> dict[str, Any] | None:
    """A connection's settings object (redis-py 6.3 and later) as a dict, to compare."""
    value = getattr(connection, name, None)
    return None if value is None else dict(vars(value))


def handshake_of(handed: Any) -> Any:
    """A connection's handshake on a socket that had `handed`'s: its parser set up, the server's HELLO
    reply as `handed` got it (once: the connection's next connect has the whole handshake)."""

    def handshake(connection: Any) -> None:
        connection.redis_connect_func = None
        connection._parser.on_connect(connection)
        connection.handshake_metadata = handed.handshake_metadata

    return handshake


def reconnect(client: Redis) -> None:
    """Drop the client's idle connections, so that the next command connects afresh: for a
    redis+sentinel URL, to the master the sentinels name now (a master that a failover left behind
    refuses writes, or misses replicas, but keeps its connections)."""
    client.connection_pool.disconnect(inuse_connections=False)


def answers(url: str, timeout: float = 1.0, settings: Settings | None = None) -> bool:
    """Whether a Redis server answers PING at `url` (a throw-away client, closed at once); for a
    redis+sentinel URL, whether the sentinels name a master that answers."""
    if is_sentinel_url(url):
        settings = settings or get_settings()
        client = master_client(url, settings.redis_password, settings.sentinel_password, timeout, timeout)
    else:
        client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (ConnectionError, TimeoutError, OSError):
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
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        sentinels = ",".join(
            "{host}:{port}".format(**sentinel.connection_pool.connection_kwargs)
            for sentinel in pool.sentinel_manager.sentinels
        )
        return f"{SENTINEL_SCHEME}://{sentinels}/{pool.service_name}/{kwargs.get('db', 0)}"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
