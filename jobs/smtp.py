"""Talking SMTP: one logged-in, verified connection per message, and the failure policy by reply code."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import parseaddr
from functools import cache
from pathlib import Path
from typing import Any

from rq.utils import as_text

from config import Settings
from jobs.errors import RejectedError, UpstreamError

Reply = tuple[int, str]


class Unanswered(RejectedError):
    """The DATA command went out and no reply came back: the server may have delivered the message."""


class Client(smtplib.SMTP):
    """An SMTP client that calls `before_data` right before the DATA command, and notes that it did."""

    def __init__(self, *args: Any, before_data: Callable[[], None], **kwargs: Any) -> None:
        self.before_data, self.began_data = before_data, False
        super().__init__(*args, **kwargs)

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.before_data()
        self.began_data = True
        return super().data(msg)


class SSLClient(Client, smtplib.SMTP_SSL):
    """Client over TLS from the first byte."""


def send(
    message: EmailMessage, recipients: list[str], settings: Settings, before_data: Callable[[], None]
) -> dict[str, Reply]:
    """Send over SMTP, calling `before_data` right before DATA; the recipients the server refused, with
    its reply. Raise per the failure policy; Unanswered when DATA was sent but its reply was lost."""
    host, port, security = settings.smtp_server
    sender = parseaddr(settings.email_sender)[1]
    client: Client | None = None
    try:
        client = connect(host, port, security, settings, before_data)
        try:
            refused = client.send_message(message, from_addr=sender, to_addrs=recipients)
        finally:
            hang_up(client)
    except smtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients  # every one refused: each with its own reply
    except smtplib.SMTPResponseException as exc:
        raise by_reply(exc.smtp_code, exc.smtp_error, f"{host}:{port}") from None
    except ssl.SSLCertVerificationError as exc:
        raise RejectedError(
            f"email: the TLS certificate of {host}:{port} is not trusted: {exc.verify_message}"
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise RejectedError(f"email: {host}:{port}: {exc}") from None
    except (smtplib.SMTPException, OSError) as exc:
        if client is not None and client.began_data:
            raise Unanswered(
                f"email: the reply of {host}:{port} to the message was lost ({exc or type(exc).__name__}): "
                "it may have been delivered"
            ) from None
        raise UpstreamError(f"email: cannot talk to {host}:{port}: {exc or type(exc).__name__}") from None
    return {address: (code, as_text(text)) for address, (code, text) in refused.items()}


def hang_up(client: smtplib.SMTP) -> None:
    """QUIT, ignoring its reply: once DATA was accepted, a bad goodbye must not make us send again."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def by_reply(code: int, text: bytes | str, server: str) -> Exception:
    """4xx replies (and the odd non-SMTP code) are transient; 5xx are permanent, reason = the reply."""
    reply = f"{code} {as_text(text)}"
    if 500 <= code < 600:
        return RejectedError(f"email: {server} refused: {reply}")
    return UpstreamError(f"email: {server} answered {reply}")


@cache
def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the certificate and the host name. Made once: loading the CA bundle takes some 17 ms."""
    return ssl.create_default_context(cafile=ca_file)


def connect(
    host: str, port: int, security: str, settings: Settings, before_data: Callable[[], None]
) -> Client:
    """A logged-in client; TLS verifies the certificate and the host name."""
    timeout = settings.smtp_timeout
    if security == "ssl":
        context = tls_context(settings.smtp_ca_file)
        client: Client = SSLClient(host, port, timeout=timeout, context=context, before_data=before_data)
    else:
        client = Client(host, port, timeout=timeout, before_data=before_data)
    try:
        if security == "starttls":
            client.starttls(context=tls_context(settings.smtp_ca_file))
        if settings.smtp_username:
            client.login(settings.smtp_username, settings.smtp_password)
    except BaseException:
        client.close()
        raise
    return client
