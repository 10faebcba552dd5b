"""Email: MIME messages sent over SMTP; transient failures retried, each message sent at most once."""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import re
import smtplib
import ssl
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from functools import cache
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)
from redis import Redis
from rq.utils import as_text

from config import Settings, get_settings, redis_client
from config.settings import PROJECT_ROOT
from jobs.errors import JobInputError, RejectedError, UpstreamError
from jobs.locks import exclusive
from jobs.media import inside_media_root
from jobs.runtime import retry_only_transient

logger = logging.getLogger(__name__)

TEMPLATES = PROJECT_ROOT / "templates" / "email"
JOB_TIMEOUT = 300
LOCK_SECONDS = JOB_TIMEOUT + 60  # outlasts the job: no second sender while this one may still send
TEMPLATE_NAME = re.compile(r"^[a-z0-9_-]+$")
Reply = tuple[int, str]


@dataclass(frozen=True)
class Draft:
    """A checked message: addresses valid, no newline in a header, template rendered, files found."""

    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str
    text: str | None
    html: str | None
    attachments: list[Path] = field(default_factory=list)
    key: str = ""

    @property
    def recipients(self) -> list[str]:
        return list(dict.fromkeys(self.to + self.cc + self.bcc))


@dataclass(frozen=True)
class Message:
    """What a caller asks to send: the email job's arguments, by name (the one list of them)."""

    to: str | list[str]
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    template: str | None = None
    context: dict[str, Any] | None = None
    attachments: list[str] | None = None
    idempotency_key: str | None = None
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    reply_to: str | list[str] | None = None


@retry_only_transient
def send_email(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Job: send one message (the fields of a Message), at most once per idempotency key."""
    settings = get_settings()
    draft = prepare(settings, Message(*args, **kwargs))
    report = deliver_once(draft, build_message(draft, settings), redis_client(settings), settings)
    logger.info("%s: %s to %d recipient(s)", draft.key[:12], report["status"], len(report["accepted"]))
    return report


def check_email(*args: Any, **kwargs: Any) -> None:
    """Enqueue-time check: everything that can be known before sending."""
    prepare(get_settings(), Message(*args, **kwargs))


def warm_up(settings: Settings) -> None:
    """In a worker, before it forks: the TLS context, which takes some 17 ms to build."""
    if settings.smtp_server[2] != "none":
        tls_context(settings.smtp_ca_file)


def prepare(settings: Settings, message: Message) -> Draft:
    """Check every part of a message and render its template; raise JobInputError naming what is wrong."""
    for name, kind in [
        ("text", str),
        ("html", str),
        ("template", str),
        ("context", dict),
        ("attachments", list),
    ]:
        value = getattr(message, name)
        if value is not None and not isinstance(value, kind):
            raise JobInputError(f"email: {name} must be a {kind.__name__}, got {value!r}")
    subject, text, html = message.subject, message.text, message.html
    if message.template is not None:
        rendered = render_template(message.template, message.context or {})
        subject = subject or rendered["subject"]
        text, html = text or rendered["text"], html or rendered["html"]
    if not subject:
        raise JobInputError("email: a subject is needed (or a template that has one)")
    if not text and not html:
        raise JobInputError("email: give text, html or a template")
    draft = Draft(
        to=addresses(message.to, "to", required=True),
        cc=addresses(message.cc, "cc"),
        bcc=addresses(message.bcc, "bcc"),
        reply_to=addresses(message.reply_to, "reply_to"),
        subject=header_value(subject, "subject"),
        text=text,
        html=html,
        attachments=[attachment(path, settings) for path in message.attachments or []],
    )
    key = message.idempotency_key
    if key is None:
        key = derived_key(draft, message.template, message.context)
    if not isinstance(key, str) or not key.strip():
        raise JobInputError(f"email: idempotency_key must be a non-empty string, got {key!r}")
    return replace(draft, key=key)


def addresses(value: str | list[str] | None, header: str, required: bool = False) -> list[str]:
    """Plain addresses (a@example.com), each checked; a display name or a newline is refused."""
    if value is not None and not isinstance(value, str | list):
        raise JobInputError(f"email: {header}: give an address or a list of them, got {value!r}")
    items = [value] if isinstance(value, str) else list(value or [])
    if required and not items:
        raise JobInputError(f"email: {header}: at least one address is needed")
    checked = []
    for item in items:
        if not isinstance(item, str):
            raise JobInputError(f"email: {header}: not an address: {item!r}")
        try:
            checked.append(validate_email(item, check_deliverability=False).normalized)
        except EmailNotValidError as exc:
            raise JobInputError(f"email: {header}: {item!r} is not a valid address: {exc}") from None
    return checked


def header_value(value: object, header: str) -> str:
    """A header's text, refused if it could inject another header."""
    if not isinstance(value, str):
        raise JobInputError(f"email: {header} must be text, got {value!r}")
    if "\r" in value or "\n" in value:
        raise JobInputError(f"email: {header} must be one line (a newline there could inject headers)")
    return value


def attachment(path: object, settings: Settings) -> Path:
    """An existing file under the media root, within the size limit."""
    if not isinstance(path, str) or not path:
        raise JobInputError(f"email: an attachment must be a path, got {path!r}")
    resolved = inside_media_root(path, settings.media_root.resolve(), "email: attachment")
    if not resolved.is_file():
        raise JobInputError(f"email: attachment not found: {path}")
    if resolved.stat().st_size > settings.email_max_attachment_mb * 2**20:
        raise JobInputError(f"email: attachment {path} is over {settings.email_max_attachment_mb} MB")
    return resolved


@cache
def templates() -> Environment:
    """Jinja2 over templates/email: HTML auto-escaped, an undefined variable is an error."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def render_template(name: str, context: dict[str, Any]) -> dict[str, str | None]:
    """The template's subject, text and HTML parts rendered with `context`."""
    if not isinstance(name, str) or not TEMPLATE_NAME.match(name) or not (TEMPLATES / name).is_dir():
        known = ", ".join(sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir()))
        raise JobInputError(f"email: no template {name!r} (known: {known})")
    if not isinstance(context, dict):
        raise JobInputError(f"email: context must be a dictionary, got {context!r}")
    parts: dict[str, str | None] = {}
    for part, filename in (("subject", "subject.txt"), ("text", "body.txt"), ("html", "body.html")):
        try:
            parts[part] = templates().get_template(f"{name}/{filename}").render(context)
        except TemplateNotFound:
            parts[part] = None
        except TemplateError as exc:
            raise JobInputError(f"email: template {name}/{filename}: {exc}") from None
    parts["subject"] = (parts["subject"] or "").strip() or None
    return parts


def derived_key(draft: Draft, template: str | None, context: dict[str, Any] | None) -> str:
    """A key from the content and the recipients: the same message to the same people is one message."""
    content = [draft.to, draft.cc, draft.bcc, draft.subject, draft.text, draft.html, template, context]
    content.append(
        [hashlib.sha256(path.read_bytes()).hexdigest() for path in draft.attachments]
    )  # content, not name
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def build_message(draft: Draft, settings: Settings) -> EmailMessage:
    """The MIME message: text and/or HTML alternative, attachments, a Message-ID made from the key."""
    message = EmailMessage()
    sender = parseaddr(settings.email_sender)[1]
    message["From"] = settings.email_sender
    message["To"] = ", ".join(draft.to)
    if draft.cc:
        message["Cc"] = ", ".join(draft.cc)
    if draft.reply_to:
        message["Reply-To"] = ", ".join(draft.reply_to)
    message["Subject"] = draft.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{digest(draft.key)}@{sender.rpartition('@')[2]}>"  # the same on every attempt
    if draft.text:
        message.set_content(draft.text)
        if draft.html:
            message.add_alternative(draft.html, subtype="html")
    else:
        message.set_content(draft.html or "", subtype="html")
    for path in draft.attachments:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message


def deliver_once(
    draft: Draft, message: EmailMessage, connection: Redis, settings: Settings
) -> dict[str, Any]:
    """Send to the recipients not yet accepted for this key; remember who accepted, and that it is sent."""
    key = digest(draft.key)
    sent, accepted_set = (f"rqkit:email:{part}:{key}" for part in ("sent", "accepted"))
    with exclusive(connection, f"rqkit:email:lock:{key}", LOCK_SECONDS) as locked:
        if not locked:
            raise UpstreamError("email: another job is sending this message right now")
        with connection.pipeline(transaction=False) as pipe:
            pipe.get(sent)
            pipe.smembers(accepted_set)
            previous, members = pipe.execute()
        if previous:
            return {**json.loads(previous), "status": "already sent"}
        done = {as_text(member) for member in members}
        remaining = [address for address in draft.recipients if address not in done]
        refused = send(message, remaining, settings) if remaining else {}
        accepted = [address for address in remaining if address not in refused]
        later = {address: reply for address, reply in refused.items() if reply[0] < 500}
        everyone = sorted(done | set(accepted))
        record: dict[str, Any] = {"key": draft.key, "message_id": message["Message-ID"], "accepted": everyone}
        remember(
            connection, accepted_set, accepted, sent, record if everyone and not later else None, settings
        )
        if later:
            raise UpstreamError(f"email: will retry {describe_refusals(later)}")
        if refused:
            delivered = f" (delivered to {', '.join(everyone)})" if everyone else ""
            raise RejectedError(f"email: refused {describe_refusals(refused)}{delivered}")
        return {**record, "status": "sent"}


def remember(
    connection: Redis,
    accepted_set: str,
    accepted: list[str],
    sent: str,
    record: dict[str, Any] | None,
    settings: Settings,
) -> None:
    """Record who accepted and, once nobody is left to retry, that the message is sent: one transaction."""
    ttl = settings.email_sent_days * 86400
    with connection.pipeline() as pipe:
        if accepted:
            pipe.sadd(accepted_set, *accepted)
            pipe.expire(accepted_set, ttl)
        if record:
            pipe.set(sent, json.dumps(record), ex=ttl)
        pipe.execute()


def describe_refusals(refused: dict[str, Reply]) -> str:
    return "; ".join(f"{address}: {code} {text}" for address, (code, text) in refused.items())


def send(message: EmailMessage, recipients: list[str], settings: Settings) -> dict[str, Reply]:
    """Send over SMTP; the recipients the server refused, with its reply. Raise per the failure policy."""
    host, port, security = settings.smtp_server
    sender = parseaddr(settings.email_sender)[1]
    try:
        client = connect(host, port, security, settings)
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


def connect(host: str, port: int, security: str, settings: Settings) -> smtplib.SMTP:
    """A logged-in client; TLS verifies the certificate and the host name."""
    timeout = settings.smtp_timeout
    if security == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            host, port, timeout=timeout, context=tls_context(settings.smtp_ca_file)
        )
    else:
        client = smtplib.SMTP(host, port, timeout=timeout)
    try:
        if security == "starttls":
            client.starttls(context=tls_context(settings.smtp_ca_file))
        if settings.smtp_username:
            client.login(settings.smtp_username, settings.smtp_password)
    except BaseException:
        client.close()
        raise
    return client
