"""Email: MIME messages sent over SMTP; transient failures retried, each message sent at most once."""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import re
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from functools import cache
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
from rq import get_current_job

from config import Settings, get_settings, redis_client
from config.durable import NotDurable
from config.settings import PROJECT_ROOT
from jobs.email_records import Records, deliver
from jobs.errors import JobInputError, UpstreamError
from jobs.files import bad_character, is_text
from jobs.locks import exclusive
from jobs.media import media_tree, read_files
from jobs.runtime import retry_only_transient
from jobs.smtp import tls_context

logger = logging.getLogger(__name__)

TEMPLATES = PROJECT_ROOT / "templates" / "email"
JOB_TIMEOUT = 300
LOCK_SECONDS = JOB_TIMEOUT + 60  # outlasts the job: no second sender while this one may still send
TEMPLATE_NAME = re.compile(r"[a-z0-9_-]{1,64}")
MAX_RECIPIENTS = 100  # to, cc and bcc together (and reply_to on its own): more is a mailing, not a message
MAX_ATTACHMENTS = 20  # together within email_max_attachment_mb
MAX_SUBJECT = 998  # characters: RFC 5322's longest line
MAX_BODY_BYTES = 2**20  # the text and the HTML part, each, in UTF-8
MAX_KEY = 1000  # characters of an idempotency key


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
    attachments: list[tuple[str, bytes]] = field(default_factory=list)  # names and contents
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
    draft = prepare(settings, message_of(args, kwargs))
    report = deliver_once(draft, build_message(draft, settings), redis_client(settings), settings)
    logger.info("%s: %s to %d recipient(s)", draft.key[:12], report["status"], len(report["accepted"]))
    return report


def check_email(*args: Any, **kwargs: Any) -> None:
    """Enqueue-time check: everything that can be known before sending."""
    prepare(get_settings(), message_of(args, kwargs))


def message_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Message:
    """The job's arguments as a Message, or one line saying which don't fit."""
    try:
        return Message(*args, **kwargs)
    except TypeError as exc:
        raise JobInputError(f"email: {exc}") from None


def warm_up(settings: Settings) -> None:
    """In a worker, before it forks: the TLS context, which takes some 17 ms to build."""
    if settings.smtp_server[2] != "none":
        tls_context(settings.smtp_ca_file)


def prepare(settings: Settings, message: Message) -> Draft:
    """Check every part of a message and render its template; raise JobInputError naming what is wrong."""
    check_kinds(message)
    subject, text, html = message.subject, message.text, message.html
    if isinstance(subject, str):  # blanks around a header's text don't survive the trip: a reader drops them
        subject = subject.strip()
    if message.template is not None:
        rendered = render_template(message.template, message.context or {})
        subject = subject or rendered["subject"]
        text, html = text or rendered["text"], html or rendered["html"]
    if not subject:
        raise JobInputError("email: a subject is needed (or a template that has one)")
    if not text and not html:
        raise JobInputError("email: give text, html or a template")
    tree = media_tree(settings, "email: attachment")
    files = read_files(message.attachments or [], tree, MAX_ATTACHMENTS, settings.email_max_attachment_mb)
    draft = Draft(
        to=addresses(message.to, "to", required=True),
        cc=addresses(message.cc, "cc"),
        bcc=addresses(message.bcc, "bcc"),
        reply_to=addresses(message.reply_to, "reply_to"),
        subject=header_value(subject, "subject"),
        text=body(text, "text"),
        html=body(html, "html"),
        attachments=files,
    )
    if len(draft.recipients) > MAX_RECIPIENTS:
        count = len(draft.recipients)
        raise JobInputError(f"email: {count} recipients (to, cc, bcc); at most {MAX_RECIPIENTS} per message")
    return replace(draft, key=idempotency_key(message, draft))


def check_kinds(message: Message) -> None:
    """The fields that must be of one type, when given."""
    kinds = {"text": str, "html": str, "template": str, "context": dict, "attachments": list}
    for name, kind in kinds.items():
        value = getattr(message, name)
        if value is not None and not isinstance(value, kind):
            raise JobInputError(f"email: {name} must be a {kind.__name__}, got {value!r}")


def idempotency_key(message: Message, draft: Draft) -> str:
    """The caller's key, or one derived from the content and the recipients."""
    key = message.idempotency_key
    if key is None:
        return derived_key(draft, message.template, message.context)
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise JobInputError(f"email: idempotency_key must be a non-empty string, {MAX_KEY} long at most")
    return key


def addresses(value: str | list[str] | None, header: str, required: bool = False) -> list[str]:
    """Plain addresses (a@example.com), each checked; a display name or a newline is refused."""
    if value is not None and not isinstance(value, str | list):
        raise JobInputError(f"email: {header}: give an address or a list of them, got {value!r}")
    items = [value] if isinstance(value, str) else list(value or [])
    if required and not items:
        raise JobInputError(f"email: {header}: at least one address is needed")
    if len(items) > MAX_RECIPIENTS:
        raise JobInputError(f"email: {header}: {len(items)} addresses; at most {MAX_RECIPIENTS} per message")
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
    """A header's text, refused if it could break its line (and so inject another header)."""
    if not isinstance(value, str):
        raise JobInputError(f"email: {header} must be text, got {value!r}")
    char = bad_character(value)
    if char is not None:
        raise JobInputError(
            f"email: {header} must be one line of text, without {char!r} (it could inject headers)"
        )
    if len(value) > MAX_SUBJECT:
        raise JobInputError(f"email: {header} is over {MAX_SUBJECT} characters")
    return value


def body(value: str | None, part: str) -> str | None:
    """A body part that can be encoded and sent: UTF-8 text, no NUL, within MAX_BODY_BYTES."""
    if value is None:
        return None
    if "\x00" in value or not is_text(value):
        raise JobInputError(f"email: {part} must be UTF-8 text without NUL (no lone surrogates)")
    if len(value.encode()) > MAX_BODY_BYTES:
        raise JobInputError(f"email: {part} is over {MAX_BODY_BYTES // 1024} KB")
    return value


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
    if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name) or not (TEMPLATES / name).is_dir():
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
    content.append([hashlib.sha256(data).hexdigest() for _, data in draft.attachments])  # content, not name
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
    for name, data in draft.attachments:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


def deliver_once(
    draft: Draft, message: EmailMessage, connection: Redis, settings: Settings
) -> dict[str, Any]:
    """Send to the recipients not yet accepted for this key, in its lock (jobs/email_records.py)."""
    key = digest(draft.key)
    run = getattr(get_current_job(), "id", None)  # a rerun of the same job takes over its lock
    try:
        with exclusive(connection, f"rqkit:email:lock:{key}", LOCK_SECONDS, run, durable=True) as locked:
            if not locked:
                raise UpstreamError("email: another job is sending this message right now")
            return deliver(draft.key, draft.recipients, message, Records(connection, key, run, settings))
    except NotDurable as exc:  # not sent: a failover could lose the claim, and run this job again
        raise UpstreamError(f"email: not sent, {exc}") from None
