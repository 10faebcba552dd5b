"""An email is sent at most once per idempotency key also when a run is cut short after DATA went: the reply
lost, the work-horse or the whole worker killed, RQ's retry then. Failures known to come before DATA
are still retried. Real SMTP servers on loopback that take the message, then lose or hold the reply."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from redis import Redis

from config import get_settings
from jobs import enqueue
from jobs.email import digest, send_email
from jobs.email_records import NOT_AGAIN
from jobs.errors import UpstreamError
from launcher.children import kill_tree
from launcher.dead_workers import release_jobs
from launcher.redis_server import free_port
from launcher.stack import WORKER_ARGS
from ops.outcomes import wait_for
from tests.sentinels import SentinelGroup
from tests.smtp_servers import Scripted, Server
from tests.support import blocked_clients, wait_until, work_horses
from tests.test_durable import detach, master, pair  # noqa: F401 - the fixtures, used below
from tests.test_email import A, B, point_at

HELD = 120.0  # s a held reply waits for its release at most: past any test here
RETRY_LINE = re.compile(r"Job ([0-9a-f-]+): enqueued for retry, (\d+) remaining")  # RQ's own


@dataclass
class LosesReplies(Scripted):
    """Takes each message (it has arrived), then, by `after_data`: replies as usual ("reply"), closes the
    connection without a reply ("hang up") or holds the reply until `released` ("hold")."""

    after_data: str = "reply"
    released: threading.Event = field(default_factory=threading.Event)
    before_rcpt: Callable[[], None] | None = None  # runs in the server's thread
    port: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.before_rcpt:
            self.before_rcpt()
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.after_data == "hang up":
            server.transport.close()
        elif self.after_data == "hold":
            await asyncio.to_thread(self.released.wait, HELD)
        return reply


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> Iterator[LosesReplies]:
    """A plain server on 127.0.0.1 that the email job sends to, retrying at once (0 s intervals)."""
    handler = LosesReplies(port=free_port())
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    point_at(monkeypatch, Server(handler, handler.port), "none")
    try:
        yield handler
    finally:
        handler.released.set()
        controller.stop()


def attempt_mark(connection: Redis, key: str) -> dict[str, Any] | None:
    mark = connection.get(f"rqkit:email:attempt:{digest(key)}")
    return json.loads(mark) if mark else None


def cut_off_reason(job_id: str) -> str:
    """The start of the reason a run gives when it finds that an earlier one may have sent the message."""
    return f"RejectedError: email: an earlier attempt was cut off after it began sending (job {job_id} at "


@pytest.mark.parametrize("after_data", ["hang up", "hold"])
def test_a_reply_lost_after_data_fails_the_job_and_no_later_run_sends_it_again(
    after_data: str, smtp: LosesReplies, connection: Redis, run_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server that takes the message, then closes the connection or says nothing past the time-out
    smtp.after_data = after_data
    monkeypatch.setenv("RQKIT_SMTP_TIMEOUT", "3")
    get_settings.cache_clear()
    job = enqueue("email", [A, B], "Once", text="only once", idempotency_key="k-lost")

    # When the job runs
    run_jobs()

    # Then it fails at once, saying the message may have gone, and it arrived once
    outcome = wait_for(job, timeout=5)
    job.refresh()
    lost = "Connection unexpectedly closed" + (": timed out" if after_data == "hold" else "")
    assert outcome.status == "failed" and job.retries_left == 0  # none of its 3 retries used
    assert outcome.reason == (
        f"RejectedError: email: the reply of 127.0.0.1:{smtp.port} to the message was lost ({lost}): "
        f"it may have been delivered; {NOT_AGAIN}"
    )
    assert smtp.envelopes() == [[A, B]]
    mark = attempt_mark(connection, "k-lost")
    assert mark is not None and (mark["job"], mark["to"]) == (job.id, [A, B])
    ttl = connection.ttl(f"rqkit:email:attempt:{digest('k-lost')}")
    assert 29 * 86400 < ttl <= 30 * 86400  # as long as the sent record (RQKIT_EMAIL_SENT_DAYS)

    # And neither a requeue nor another job with the key sends it again; a new key does
    smtp.after_data = "reply"
    job.requeue()
    again = enqueue("email", [A, B], "Once", text="only once", idempotency_key="k-lost")
    anyway = enqueue("email", [A, B], "Once", text="only once", idempotency_key="k-lost-2")
    run_jobs()
    for rerun in (job, again):
        reason = wait_for(rerun, timeout=5).reason or ""
        assert reason.startswith(cut_off_reason(job.id)), reason
        assert reason.endswith(f" UTC, to {A}, {B}); {NOT_AGAIN}"), reason
    assert wait_for(anyway, timeout=5).result["status"] == "sent"
    assert smtp.envelopes() == [[A, B], [A, B]]


@pytest.mark.parametrize("killed", ["work-horse", "worker"])
def test_a_run_killed_mid_send_is_not_sent_again_by_rqs_retry(
    killed: str,
    smtp: LosesReplies,
    connection: Redis,
    processes: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server holds its reply to DATA while the run is killed; RQ then retries the job (it has retries
    left): the worker itself when only its horse died, its abandoned-job handling when the whole worker did
    (here as `up` starts it at once, launcher/dead_workers.py), and the retry runs on a worker."""
    smtp.after_data = "hold"
    monkeypatch.setenv("RQKIT_SMTP_TIMEOUT", str(HELD))  # the horse waits for the reply until killed
    command = ["-m", "rq.cli", *(arg for arg in WORKER_ARGS if arg != "--with-scheduler"), "-n", "mailer"]
    log = tmp_path / "worker.log"
    worker = processes(*command, "email", log=log)
    wait_until(lambda: blocked_clients(connection), what="the worker")
    job = enqueue("email", A, "Once", text="only once", idempotency_key="k-killed")
    wait_until(lambda: smtp.received, 30, "the message at the server")

    killed_at = time.monotonic()
    if killed == "work-horse":
        [horse] = wait_until(lambda: work_horses(worker.pid), 5, "the work-horse")
        os.kill(horse, signal.SIGKILL)
        retried = wait_until(lambda: RETRY_LINE.search(log.read_text()), 30, "RQ's retry line")
        assert retried[1] == job.id and retried[2] == "2", log.read_text()
    else:
        kill_tree(worker.pid)
        worker.wait(10)
        assert release_jobs(connection, "mailer") == [(job.id, "RQ runs it again (retries left: 2)")]
        processes(*command, "email", log=log)

    outcome = wait_for(job, timeout=60)
    print(f"{killed} killed mid-send: the retry failed {time.monotonic() - killed_at:.2f} s later: {outcome}")
    assert (outcome.reason or "").startswith(cut_off_reason(job.id)), (outcome, log.read_text())
    job.refresh()
    assert outcome.status == "failed" and job.retries_left == 0  # RejectedError: no more retries
    smtp.released.set()  # the first run's reply, to a connection long gone
    assert smtp.envelopes() == [[A]]


def test_failures_before_data_or_a_refusal_of_data_are_retried_and_it_goes_once(
    smtp: LosesReplies, connection: Redis, run_jobs: Any
) -> None:
    # Given a server that defers the recipient at RCPT (before DATA), then refuses DATA with a 451
    smtp.rcpt_replies[A] = ["451 4.2.1 mailbox busy", "250 OK"]
    smtp.data_replies = ["451 4.3.0 try again later"]

    # When the job runs
    job = enqueue("email", A, "Retried", text="third time", idempotency_key="k-before")
    run_jobs()

    # Then both were retried, it arrived once, and no mark of an attempt is left
    outcome = wait_for(job, timeout=5)
    job.refresh()
    assert outcome.status == "finished" and outcome.result["status"] == "sent", outcome
    assert job.retries_left == 1 and smtp.envelopes() == [[A]]
    assert connection.keys("rqkit:email:attempt:*") == []


def test_a_run_that_finds_another_attempt_marked_at_data_sends_nothing(
    smtp: LosesReplies, connection: Redis, run_jobs: Any
) -> None:
    """Another run of the key (its lock lapsed, say) marks its attempt after this run looked: this run
    finds the mark as it is about to send DATA, and stops; its retry says why."""
    mark = {"job": "other-job", "at": "2030-01-01 00:00:00 UTC", "to": [A]}
    smtp.before_rcpt = lambda: connection.set(f"rqkit:email:attempt:{digest('k-race')}", json.dumps(mark))
    job = enqueue("email", A, "Raced", text="...", idempotency_key="k-race")
    run_jobs()
    outcome = wait_for(job, timeout=5)
    assert outcome.reason == (
        "RejectedError: email: an earlier attempt was cut off after it began sending (job other-job at "
        f"2030-01-01 00:00:00 UTC, to {A}); {NOT_AGAIN}"
    )
    assert smtp.received == [] and attempt_mark(connection, "k-race") == mark


def test_in_the_durable_mode_an_attempt_mark_the_replicas_lack_sends_nothing(
    pair: SentinelGroup,  # noqa: F811
    master: Redis,  # noqa: F811
    smtp: LosesReplies,
) -> None:
    """With durable_replicas set, DATA goes only once the replicas have the mark, as they have the lock:
    a failover must not lose the one record that stops a second send."""
    smtp.before_rcpt = lambda: detach(pair)  # the lock has reached the replica; the mark won't
    not_durable = r"^email: not sent, the attempt record reached 0 of the 1 replicas"
    with pytest.raises(UpstreamError, match=not_durable):
        send_email([A], "Hi", text="Hello", idempotency_key="k-durable")
    assert smtp.received == [] and master.keys("rqkit:email:*") == []  # no mark, no lock: a retry may send
