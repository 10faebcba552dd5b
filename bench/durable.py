"""Durable-mode benchmark: what Redis's WAIT after each enqueue costs (issue 19).

Two private groups of redis-server processes on loopback (temp dirs): a master with one replica, and a
master with two. Enqueues one by one, per call p50 and p99 and per second: plain LPUSH and MULTI/EXEC
(redis-py), the latter followed by WAIT 1 in a second round trip or sent with it in one write; and
submit("sleep", (0,)) with durable_replicas off and on (1 with one replica, 2 with two). Then
submit_many of N jobs at once, off and on. Every configuration runs once per round and the rounds take
them in turn; a rate is the median of its runs, a percentile is over all rounds' calls.
Usage: .venv/bin/python bench/durable.py [--jobs 2000] [--bulk 10000] [--rounds 5] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import rq
from redis import Redis

from config import get_settings
from config.durable import NotDurable
from jobs import submit, submit_many
from launcher.redis_server import RedisServer, free_port

BULK_RUNS = 3  # submit_many runs per configuration and round
WARM_UP = 50  # calls before each timed run, not counted (connections, caches)


@dataclass(eq=False)  # each group is itself: hashed by identity
class Group:
    """A master and its replicas; `admin` is a client of the master."""

    servers: list[RedisServer]
    admin: Redis

    @property
    def replicas(self) -> int:
        return len(self.servers) - 1

    @property
    def label(self) -> str:
        return f"master+{self.replicas}"

    def synced(self, timeout_ms: int = 10_000) -> None:
        """Return once every replica has all the master's writes (a flush before a run included)."""
        reached = self.admin.wait(self.replicas, timeout_ms)
        if reached < self.replicas:
            raise RuntimeError(f"{self.label}: {reached} of {self.replicas} replicas in sync")


def start_group(root: Path, replicas: int) -> Group:
    """A master on a free port and `replicas` replicas of it, all caught up."""
    servers = [
        RedisServer(free_port(), root / f"redis-{i}", admin_commands=True) for i in range(1 + replicas)
    ]
    for server in servers:
        server.start()
    master, *followers = servers
    for follower in followers:
        Redis(port=follower.port).replicaof("127.0.0.1", master.port)
    group = Group(servers, Redis(port=master.port, socket_timeout=30))
    group.admin.set("bench:ready", 1)
    group.synced(timeout_ms=20_000)  # WAIT counts a replica only once its first sync is done
    return group


Call = Callable[[Redis], Callable[[], object]]  # given a plain client of the master: one enqueue


@dataclass(frozen=True)
class Way:
    """One configuration: one enqueue (`call`; None for submit_many), on which group, with which
    durable_replicas; `base` is the row whose time it adds to."""

    label: str
    group: Group
    call: Call | None = None
    durable: int = 0
    base: Way | None = None


@dataclass
class Runs:
    """What a configuration's runs gave: per-call seconds (one by one), and each run's rate."""

    calls: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    not_durable: int = 0


def use(way: Way) -> None:
    """Point the toolkit's settings at this configuration."""
    os.environ.update(REDIS_URL=way.group.servers[0].url, RQKIT_DURABLE_REPLICAS=str(way.durable))
    get_settings.cache_clear()


def one_by_one(runs: Runs, n: int, call: Callable[[], object]) -> None:
    """n timed calls, after a warm-up; a NotDurable is counted, not raised."""
    for _ in range(WARM_UP):
        call()
    clock = time.perf_counter
    seconds = []
    start = clock()
    for _ in range(n):
        before = clock()
        try:
            call()
        except NotDurable:
            runs.not_durable += 1
        seconds.append(clock() - before)
    runs.rates.append(n / (clock() - start))
    runs.calls.extend(seconds)


def in_bulk(runs: Runs, way: Way, n: int) -> None:
    """BULK_RUNS timed submit_many calls of n jobs, each on an empty, synced database."""
    calls = [(0,)] * n
    for _ in range(BULK_RUNS):
        way.group.admin.flushdb()
        way.group.synced()
        start = time.perf_counter()
        try:
            submitted = submit_many("sleep", calls)
            assert not submitted.refused, submitted.refused[:1]
        except NotDurable:
            runs.not_durable += 1
        runs.rates.append(n / (time.perf_counter() - start))


def message() -> str:
    return json.dumps({"id": uuid.uuid4().hex, "args": [0]})


def lpush(client: Redis) -> Callable[[], object]:
    """A plain redis-py LPUSH of a small JSON message, the floor under any enqueue."""
    return lambda: client.lpush("bench:lpush", message())


def transaction(client: Redis) -> Callable[[], object]:
    """MULTI, LPUSH, EXEC: one round trip, as submit() makes without the durable mode."""

    def call() -> None:
        with client.pipeline() as pipe:
            pipe.lpush("bench:lpush", message())
            pipe.execute()

    return call


def then_wait(client: Redis) -> Callable[[], object]:
    """The transaction, then WAIT 1 as a second round trip on the same connection (as config/durable.py)."""
    run = transaction(client)

    def call() -> None:
        run()
        acknowledged(client.wait(1, 1000))  # WAIT counts this connection's writes: the pool's last one

    return call


def wait_in_one_write(client: Redis) -> Callable[[], object]:
    """MULTI, LPUSH, EXEC and WAIT 1 sent in one write (WAIT after EXEC, outside the MULTI), replies
    read after: the same guarantee, one round trip."""

    def call() -> None:
        connection = client.connection_pool.get_connection()
        try:
            commands = [("MULTI",), ("LPUSH", "bench:lpush", message()), ("EXEC",), ("WAIT", 1, 1000)]
            connection.send_packed_command(connection.pack_commands(commands))
            replies = [connection.read_response() for _ in commands]
            acknowledged(replies[-1])
        finally:
            client.connection_pool.release(connection)

    return call


def acknowledged(reached: int) -> None:
    if reached < 1:
        raise NotDurable("the transaction", reached, get_settings())


def toolkit(client: Redis) -> Callable[[], object]:
    """The toolkit's enqueue of one job (on its own shared client, not this one)."""
    return lambda: submit("sleep", (0,))


def measure(ways: list[Way], n: int, bulk: int, rounds: int) -> dict[Way, Runs]:
    """Every configuration once per round, in turn: this machine's speed drifts within minutes."""
    results = {way: Runs() for way in ways}
    plain = {group: Redis.from_url(group.servers[0].url) for group in {way.group for way in ways}}
    for round_ in range(1, rounds + 1):
        print(f"round {round_} of {rounds}", flush=True)
        for way in ways:
            use(way)
            if way.call is None:
                in_bulk(results[way], way, bulk)
                continue
            way.group.admin.flushdb()
            way.group.synced()
            one_by_one(results[way], n, way.call(plain[way.group]))
    return results


def pin(groups: list[Group]) -> str:
    """Every redis-server on the first CPU, this process on the others (as bench/peers.py does: left to
    the kernel, where it placed the processes changed a loopback round trip by half)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    for server in (server for group in groups for server in group.servers):
        assert server.process
        os.sched_setaffinity(server.process.pid, {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))
    return f"redis-servers pinned to CPU {cpus[0]}, this process to CPU {','.join(map(str, cpus[1:]))}"


def machine(admin: Redis) -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    server = admin.info("server")["redis_version"]
    return (
        f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, redis-server {server}, "
        f"rq {rq.__version__}, redis-py {redis.__version__}"
    )


def row(label: str, *cells: str) -> None:
    print(f"{label:<36}" + "".join(f"{cell:>11}" for cell in cells[:-1]) + f"{cells[-1]:>20}")


def print_tables(ways: list[Way], results: dict[Way, Runs], n: int, bulk: int, rounds: int) -> None:
    """One table one by one, one in bulk; `+us` is what a row adds per enqueue to its base row."""
    p50s: dict[Way, float] = {}
    print(f"\none by one, {n:,} calls x {rounds} rounds")
    row("enqueue", "servers", "p50 us", "p99 us", "+us p50", "per s", "range per s")
    for way in (way for way in ways if way.call):
        runs = results[way]
        cuts = statistics.quantiles(runs.calls, n=100, method="inclusive")
        p50s[way] = cuts[49] * 1e6
        added = f"{p50s[way] - p50s[way.base]:+.0f}" if way.base else ""
        rate = statistics.median(runs.rates)
        row(
            way.label, way.group.label, f"{p50s[way]:.0f}", f"{cuts[98] * 1e6:.0f}", added, *rates(rate, runs)
        )
    print(f"\nsubmit_many of {bulk:,} jobs, {BULK_RUNS} x {rounds} rounds")
    row("enqueue", "servers", "us/job", "", "+us/job", "jobs/s", "range jobs/s")
    per_job: dict[Way, float] = {}
    for way in (way for way in ways if way.call is None):
        runs = results[way]
        rate = statistics.median(runs.rates)
        per_job[way] = 1e6 / rate
        added = f"{per_job[way] - per_job[way.base]:+.2f}" if way.base else ""
        row(way.label, way.group.label, f"{per_job[way]:.2f}", "", added, *rates(rate, runs))
    failed = sum(runs.not_durable for runs in results.values())
    print(f"\nNotDurable raised: {failed} (durable_timeout {get_settings().durable_timeout:g} s)")


def rates(median: float, runs: Runs) -> tuple[str, str]:
    return f"{median:,.0f}", f"{min(runs.rates):,.0f} to {max(runs.rates):,.0f}"


def configurations(pair: Group, trio: Group) -> list[Way]:
    """The rows, in the order they run in each round."""
    bare = Way("MULTI/EXEC (redis-py)", pair, transaction)
    pair_off = Way("submit(), durable off", pair, toolkit)
    trio_off = Way("submit(), durable off", trio, toolkit)
    bulk_pair_off = Way("submit_many, durable off", pair)
    bulk_trio_off = Way("submit_many, durable off", trio)
    return [
        Way("LPUSH (redis-py)", pair, lpush),
        bare,
        Way("MULTI/EXEC, then WAIT 1", pair, then_wait, 1, bare),
        Way("MULTI/EXEC + WAIT 1, one write", pair, wait_in_one_write, 1, bare),
        pair_off,
        Way("submit(), durable_replicas=1", pair, toolkit, 1, pair_off),
        trio_off,
        Way("submit(), durable_replicas=2", trio, toolkit, 2, trio_off),
        bulk_pair_off,
        Way("submit_many, durable_replicas=1", pair, None, 1, bulk_pair_off),
        bulk_trio_off,
        Way("submit_many, durable_replicas=2", trio, None, 2, bulk_trio_off),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=2000, help="enqueues one by one, per configuration and round"
    )
    parser.add_argument("--bulk", type=int, default=10_000, help="jobs per submit_many call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="see pin()")
    options = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "none.toml").write_text("")
        os.environ.update(RQKIT_VAR_DIR=tmp, RQKIT_CONFIG=str(Path(tmp, "none.toml")))
        groups: list[Group] = []
        try:
            groups.append(start_group(Path(tmp, "pair"), replicas=1))
            groups.append(start_group(Path(tmp, "trio"), replicas=2))
            pinned = pin(groups) if options.pin else "not pinned"
            ways = configurations(*groups)
            results = measure(ways, options.jobs, options.bulk, options.rounds)
            print(f"\n{machine(groups[0].admin)}; {pinned}")
        finally:
            for server in (server for group in groups for server in group.servers):
                server.stop()
    print_tables(ways, results, options.jobs, options.bulk, options.rounds)
    print(f"whole run: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
