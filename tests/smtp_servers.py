"""Real SMTP servers on loopback for the email tests (aiosmtpd), with scripted replies."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from launcher.redis_server import free_port

USER, PASSWORD = "mailer", "s3cret-pass"


@dataclass
class Scripted:
    """Accepts everything, except the replies queued for a recipient (RCPT) or for the next DATA."""

    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    received: list[tuple[list[str], bytes]] = field(default_factory=list)
    quit_reply: str = "221 Bye"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        queued = self.rcpt_replies.get(address)
        reply = (
            (queued.pop(0) if len(queued) > 1 else queued[0]) if queued else "250 OK"
        )  # the last one stays
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK: queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return self.quit_reply

    def envelopes(self) -> list[list[str]]:
        return [recipients for recipients, _ in self.received]


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@dataclass
class Server:
    handler: Scripted
    port: int
    ca_file: str | None = None


@contextmanager
def smtp_server(security: str, ca: trustme.CA | None = None) -> Iterator[Server]:
    """A server on 127.0.0.1: `none` (plain, no AUTH), `starttls` or `ssl` (both with AUTH over TLS)."""
    handler, port = Scripted(), free_port()
    options: dict[str, Any] = {}
    if security != "none":
        assert ca is not None
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        options = {"authenticator": authenticate, "auth_require_tls": True}
        if security == "starttls":
            options |= {"tls_context": tls, "require_starttls": True}
        else:
            options |= {"ssl_context": tls, "auth_require_tls": False}  # TLS from the first byte
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield Server(handler, port)
    finally:
        controller.stop()
