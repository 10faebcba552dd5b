"""An email's records in Redis, per idempotency key: who accepted it, that it is sent, and the attempt in
flight, marked right before DATA and kept while its outcome is unknown; and the send that keeps them,
which never sends again a message that an earlier attempt may have sent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from redis import Redis
from rq.utils import as_text

from config import Settings
from config.durable import NotDurable, durable_pipeline
from jobs.errors import RejectedError, UpstreamError
from jobs.smtp import Reply, Unanswered, send

NOT_AGAIN = "not sent again: check the mailbox, then enqueue with a new idempotency key to send anyway"
# Marks an attempt unless the message is sent, another attempt is marked or one of these recipients has
# it already: a check and a write that two runs of a key (a lock that lapsed, a job rerun while its
# first run lives on) can't both pass.
BEGIN = """
if redis.call('EXISTS', KEYS[1], KEYS[3]) > 0 then return 0 end
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then return 0 end
end
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
return 1
"""


@dataclass
class Records:
    """The records of one message (`key`: the digest of its idempotency key), and this run's attempt."""

    connection: Redis
    key: str
    run: str | None  # the RQ job's id
    settings: Settings
    begun: bool = False  # this run marked an attempt that has not ended

    def name(self, record: str) -> str:
        """The Redis key of one of the message's records: sent, accepted, attempt."""
        return f"rqkit:email:{record}:{self.key}"

    @property
    def ttl(self) -> int:
        """How long the records last, in seconds (RQKIT_EMAIL_SENT_DAYS)."""
        return self.settings.email_sent_days * 86400

    def read(self) -> tuple[bytes | None, bytes | None, set[bytes]]:
        """The sent record, the attempt in flight and who accepted."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.get(self.name("sent"))
            pipe.get(self.name("attempt"))
            pipe.smembers(self.name("accepted"))
            sent, attempt, accepted = pipe.execute()
        return sent, attempt, accepted

    def begin(self, recipients: list[str]) -> None:
        """Mark the attempt, durably, before DATA goes; UpstreamError if another run got there first."""
        mark = {"job": self.run, "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC", "to": recipients}
        keys = [self.name(record) for record in ("sent", "accepted", "attempt")]
        try:
            with durable_pipeline(self.connection, "the attempt record", False, self.settings) as pipe:
                pipe.eval(BEGIN, len(keys), *keys, json.dumps(mark), self.ttl, *recipients)
                self.begun = bool(pipe.execute()[0])
        except NotDurable:  # not sent: the message's lock says so to the caller
            self.end()
            raise
        if not self.begun:
            raise UpstreamError("email: another run of this message began sending first")

    def end(self) -> None:
        """The server answered DATA, or DATA never went: a later run may send."""
        if self.begun:
            self.connection.delete(self.name("attempt"))
            self.begun = False

    def remember(self, accepted: list[str], sent: dict[str, Any] | None) -> None:
        """Record who accepted and, once nobody is left to retry, that it is sent; end the attempt: one
        transaction."""
        with self.connection.pipeline() as pipe:
            if accepted:
                pipe.sadd(self.name("accepted"), *accepted)
                pipe.expire(self.name("accepted"), self.ttl)
            if sent:
                pipe.set(self.name("sent"), json.dumps(sent), ex=self.ttl)
            pipe.delete(self.name("attempt"))
            pipe.execute()
        self.begun = False


def deliver(key: str, recipients: list[str], message: EmailMessage, records: Records) -> dict[str, Any]:
    """In the message's lock: send to the recipients not yet accepted for idempotency key `key`, unless
    it is sent or an earlier attempt may have sent it; remember who accepted, and that it is sent."""
    previous, earlier, members = records.read()
    if previous:
        return {**json.loads(previous), "status": "already sent"}
    if earlier:
        raise RejectedError(
            f"email: an earlier attempt was cut off after it began sending ({describe_attempt(earlier)}); "
            f"{NOT_AGAIN}"
        )
    done = {as_text(member) for member in members}
    remaining = [address for address in recipients if address not in done]
    refused = send_marked(message, remaining, records) if remaining else {}
    accepted = [address for address in remaining if address not in refused]
    later = {address: reply for address, reply in refused.items() if reply[0] < 500}
    everyone = sorted(done | set(accepted))
    record: dict[str, Any] = {"key": key, "message_id": message["Message-ID"], "accepted": everyone}
    records.remember(accepted, record if everyone and not later else None)
    if later:
        raise UpstreamError(f"email: will retry {describe_refusals(later)}")
    if refused:
        delivered = f" (delivered to {', '.join(everyone)})" if everyone else ""
        raise RejectedError(f"email: refused {describe_refusals(refused)}{delivered}")
    return {**record, "status": "sent"}


def send_marked(message: EmailMessage, recipients: list[str], records: Records) -> dict[str, Reply]:
    """send(), with the attempt marked right before DATA and ended once the server's answer is known."""
    try:
        return send(message, recipients, records.settings, lambda: records.begin(recipients))
    except Unanswered as exc:  # the mark stays: no later run of the key sends it again
        raise RejectedError(f"{exc}; {NOT_AGAIN}") from None
    except (UpstreamError, RejectedError):  # a reply that refused it, or a failure before DATA
        records.end()
        raise


def describe_attempt(mark: bytes) -> str:
    """Who began an attempt, when, to whom: for the reason a later run gives."""
    attempt = json.loads(mark)
    by = f"job {attempt['job']}" if attempt["job"] else "a run outside RQ"
    return f"{by} at {attempt['at']}, to {', '.join(attempt['to'])}"


def describe_refusals(refused: dict[str, Reply]) -> str:
    return "; ".join(f"{address}: {code} {text}" for address, (code, text) in refused.items())
