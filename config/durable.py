"""Writes that count as done only once replicas have them.

Redis replicates asynchronously: a master that fails over can take with it writes it had acknowledged.
With `durable_replicas` set, a pipeline of enqueues (or of a once-only claim) ends with Redis's WAIT on
the same connection, so on the same server, right after its writes; fewer replicas than asked for is
a `NotDurable` error for the caller to act on (retry the enqueue, don't send the email), never a silent
loss. WAIT runs after the writes, not inside their MULTI: there it could not wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError, TimeoutError

from config.errors import ToolkitError
from config.settings import Settings, get_settings


class NotDurable(ToolkitError):
    """A write that fewer replicas than durable_replicas had in time: a failover now may lose it."""

    def __init__(self, what: str, reached: int, settings: Settings) -> None:
        super().__init__(
            f"{what} reached {reached} of the {settings.durable_replicas} replicas that durable_replicas "
            f"asks for within {settings.durable_timeout:g} s: a failover now could lose it"
        )
        self.reached = reached


class ReplicatedPipeline(Pipeline):
    """A pipeline whose writes are followed, on the connection that sent them, by WAIT; `reached` is
    how many replicas had them all (0 when WAIT itself failed: nothing is known)."""

    def __init__(self, client: Redis, replicas: int, timeout: float, transaction: bool) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, None)
        self.replicas, self.timeout_ms = replicas, max(1, int(timeout * 1000))
        self.reached: int | None = None

    def _execute_transaction(self, connection: Connection, *args: Any, **kwargs: Any) -> Any:
        result = super()._execute_transaction(connection, *args, **kwargs)
        self.reached = replicas_reached(connection, self.replicas, self.timeout_ms)
        return result

    def _execute_pipeline(self, connection: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        result = super()._execute_pipeline(connection, *args, **kwargs)
        self.reached = replicas_reached(connection, self.replicas, self.timeout_ms)
        return result


def replicas_reached(connection: AbstractConnection, replicas: int, timeout_ms: int) -> int:
    """WAIT on this connection. A failure here must not make redis-py run the writes again (its retry
    would), so it reads as no replica. Too few replicas, and the connection is dropped: it may be to a
    master that a failover left behind, and the next one asks the sentinels afresh."""
    try:
        connection.send_command("WAIT", replicas, timeout_ms)
        reached = int(connection.read_response())
    except (ConnectionError, TimeoutError):
        reached = 0
    if reached < replicas:
        connection.disconnect()
    return reached


@contextmanager
def durable_pipeline(
    client: Redis, what: str, transaction: bool = True, settings: Settings | None = None
) -> Iterator[Pipeline]:
    """A pipeline of `client`; with durable_replicas set, NotDurable at the end of the block unless the
    writes it executed reached that many replicas. Without it, a plain pipeline."""
    settings = settings or get_settings()
    if not settings.durable_replicas:
        with client.pipeline(transaction) as plain:
            yield plain
        return
    pipe = ReplicatedPipeline(client, settings.durable_replicas, settings.durable_timeout, transaction)
    with pipe:
        yield pipe
        if pipe.reached is not None and pipe.reached < settings.durable_replicas:
            raise NotDurable(what, pipe.reached, settings)


def check_reached(connection: AbstractConnection, what: str, settings: Settings | None = None) -> None:
    """For writes sent on a bare connection (bulk enqueue): NotDurable unless they reached the replicas."""
    settings = settings or get_settings()
    if settings.durable_replicas:
        timeout_ms = max(1, int(settings.durable_timeout * 1000))
        reached = replicas_reached(connection, settings.durable_replicas, timeout_ms)
        if reached < settings.durable_replicas:
            raise NotDurable(what, reached, settings)
