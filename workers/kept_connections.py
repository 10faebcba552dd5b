"""The Redis connections a fork server keeps for its work-horses (config/connection.py's HandedConnection):
a set of two lent to each horse as it is forked (its own, and one for a job's own client), and lent again
once the worker says the horse gave it back. A horse forked while another runs (a spare) gets a set of its
own, so no two live horses share one."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from config.connection import HandedConnection

Lent = dict[bool, HandedConnection]  # a set, by for_job
Returned = dict[int, dict[bool, float] | None]  # sets back from horses that ended, by id: what each gave back


class KeptConnections:
    """In the fork server: the sets lent to live horses, by id, and those given back, to lend again."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.enabled = True  # False: Redis too old to tell a session (before 6.2): each horse connects itself
        self.lent: dict[int, Lent] = {}
        self.free: list[Lent] = []
        self.last_id = 0

    def settle(self, returned: Returned, drop_all: bool) -> None:
        """Take back the sets of horses that ended: the connections each gave back (with when their next
        health check is due) to lend again, the others closed (for every process that holds them). All
        closed first if `drop_all` (Redis went away, or failed over). A set not lent (closed since) is
        passed over."""
        if drop_all:
            for lent in [*self.lent.values(), *self.free]:
                close(lent)
            self.lent, self.free = {}, []
        for set_id, given in returned.items():
            if set_id not in self.lent:
                continue
            lent = self.lent.pop(set_id)
            kept = {for_job: connection for for_job, connection in lent.items() if given and for_job in given}
            close({for_job: connection for for_job, connection in lent.items() if for_job not in kept})
            for for_job, connection in kept.items():
                connection.taken_back(given[for_job])  # type: ignore[index]
            self.free.append(kept)

    def lend(self) -> tuple[int, Lent]:
        """A set for the next horse, and its id: one given back, completed with connections made now (none
        if Redis is away: the horse connects itself)."""
        lent = self.free.pop() if self.free else {}
        if self.enabled:
            try:
                for for_job in (False, True):
                    if for_job not in lent:
                        lent[for_job] = HandedConnection(self.client, for_job)
            except ResponseError:  # no CLIENT INFO (Redis before 6.2): each horse connects itself
                self.enabled = False
                close(lent)
                lent = {}
            except (RedisError, OSError):
                pass
        self.last_id += 1
        self.lent[self.last_id] = lent
        return self.last_id, lent


def close(lent: Lent) -> None:
    for connection in lent.values():
        connection.close()
