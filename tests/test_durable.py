"""The durable mode: an enqueue, an email's claim or a schedule's claim that the replicas don't have
in time is an error to its caller, never a silent success; and a master that refuses writes for now
(NOREPLICAS) is waited out by the workers and named by the CLI."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from config.durable import NotDurable
from jobs import submit, submit_many
from jobs.errors import UpstreamError
from jobs.locks import exclusive
from launcher.redis_server import RedisServer
from scheduler.periodic import claim, fire, next_key
from scheduler.sync import sync
from tests.sentinels import SentinelGroup
from tests.support import blocked_clients, python, start_python, wait_until


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A master and one replica, no sentinel."""
    servers = SentinelGroup(tmp_path_factory.mktemp("pair"), replicas=1, sentinels=0).start()
    yield servers
    servers.stop()


@pytest.fixture
def master(pair: SentinelGroup, monkeypatch: pytest.MonkeyPatch) -> Iterator[Redis]:
    """The master, as REDIS_URL, with durable_replicas = 1 and its replica attached."""
    primary, replica = pair.servers
    client = pair.admin(primary)
    pair.admin(replica).replicaof("127.0.0.1", primary.port)
    wait_until(lambda: pair.admin(replica).info("replication")["master_link_status"] == "up")
    client.config_set("min-replicas-to-write", 0)  # these tests are about WAIT alone
    client.flushdb()
    for name, value in {"REDIS_URL": primary.url, "RQKIT_DURABLE_REPLICAS": "1"}.items():
        monkeypatch.setenv(name, value)
    yield client
    client.config_set("min-replicas-to-write", 0)


def detach(pair: SentinelGroup) -> RedisServer:
    """The replica stops following the master: nothing written from now reaches it."""
    replica = pair.servers[1]
    pair.admin(replica).replicaof("NO", "ONE")
    wait_until(lambda: pair.admin(pair.servers[0]).info("replication")["connected_slaves"] == 0)
    return replica


def test_an_enqueue_returns_once_the_replica_has_it(pair: SentinelGroup, master: Redis) -> None:
    job = submit("word-count", ("comment",)).job
    assert pair.admin(pair.servers[1]).exists(f"rq:job:{job.id}")


def test_an_enqueue_the_replicas_lack_is_an_error(pair: SentinelGroup, master: Redis) -> None:
    detach(pair)
    with pytest.raises(
        NotDurable, match=r"job \S+ reached 0 of the 1 replicas .* a failover now could lose it"
    ):
        submit("word-count", ("comment",))
    with pytest.raises(NotDurable, match="the bulk enqueue of 3 jobs reached 0 of the 1"):
        submit_many("sleep", [(0,)] * 3)
    done = python("cli.py", "enqueue", "word-count", "comment")  # pending: that job may not survive either
    assert done.returncode == 1 and "reached 0 of the 1 replicas" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_the_setting_nothing_waits(
    pair: SentinelGroup, master: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    detach(pair)
    monkeypatch.setenv("RQKIT_DURABLE_REPLICAS", "0")
    assert submit("word-count", ("comment",)).job.get_status() == "queued"


def test_once_only_claims_are_let_go_when_the_replicas_lack_them(pair: SentinelGroup, master: Redis) -> None:
    with exclusive(master, "rqkit:email:lock:k", 60, durable=True) as locked:
        assert locked
    assert claim(master, "tick", 100) and not claim(master, "tick", 100)
    detach(pair)
    with pytest.raises(NotDurable, match="the lock rqkit:email:lock:k reached 0"):
        with exclusive(master, "rqkit:email:lock:k", 60, durable=True):
            pass
    assert not master.exists("rqkit:email:lock:k")
    with pytest.raises(NotDurable, match="the run of tick due 200 reached 0"):
        claim(master, "tick", 200)
    assert not master.exists("rqkit:schedule:fired:tick:200")
    assert not claim(master, "tick", 100)  # someone else's claim is neither taken nor let go


def test_an_email_whose_claim_may_not_survive_is_not_sent(
    pair: SentinelGroup, master: Redis, tmp_path: Path
) -> None:
    from jobs.email import send_email  # noqa: PLC0415 - after REDIS_URL points at the pair

    detach(pair)
    with pytest.raises(UpstreamError, match="email: not sent, the lock .* reached 0 of the 1 replicas"):
        send_email(["a@example.com"], "Hi", text="Hello", idempotency_key="k-1")  # and no SMTP server
    assert master.keys("rqkit:email:*") == []


def test_noreplicas_is_named_by_the_cli_and_waited_out_by_a_worker(
    pair: SentinelGroup, master: Redis, tmp_path: Path
) -> None:
    """A master short of the replicas that min-replicas-to-write asks for refuses every write."""
    log = tmp_path / "worker.log"
    worker = start_python(
        "-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.InProcessWorker", "--worker-ttl", "20",
        "maintenance", stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # blocked waiting for a job: past RQ's bootstrap, whose writes (a stock worker's) aren't waited out
        wait_until(lambda: blocked_clients(master), timeout=30)
        master.config_set("min-replicas-to-write", 2)  # one replica is attached: too few
        done = python("cli.py", "enqueue", "word-count", "comment", env={"RQKIT_DURABLE_REPLICAS": "0"})
        assert done.returncode == 1 and "takes no writes for now (NOREPLICAS" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        wait_until(lambda: "refusing writes (NOREPLICAS" in log.read_text(), timeout=60)
        master.config_set("min-replicas-to-write", 0)
        job = submit("word-count", ("comment",)).job
        wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=60)
        assert worker.poll() is None and "Traceback" not in log.read_text()
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_refused_run_of_a_periodic_entry_keeps_its_chain(pair: SentinelGroup, master: Redis) -> None:
    """The next trigger is scheduled before the run's claim: NotDurable for this run, not for the rest."""
    sync(connection=master)
    due = int(time.time()) - 5  # the trigger that fires now
    master.set(next_key("release-due"), f"rqkit-schedule-release-due-{due}")
    detach(pair)
    with pytest.raises(NotDurable, match=f"the run of release-due due {due}"):
        fire("release-due", due)
    upcoming = master.get(next_key("release-due"))
    assert upcoming and int(upcoming.rpartition("-")[2]) > due
