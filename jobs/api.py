"""3rd-party HTTP calls and outgoing webhooks: allow-listed hosts, polite retries, shared rate limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from contextlib import suppress
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import httpx
from rq import get_current_job

from config import Settings, get_settings, redis_client
from jobs.api_guard import DisallowedHost, Redactor, checked_transport
from jobs.api_pacing import backoff, retry_after, retry_in, take_slot
from jobs.errors import JobInputError, RejectedError, UpstreamError
from jobs.runtime import retry_only_transient

logger = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
NON_IDEMPOTENT = frozenset({"POST", "PATCH"})
KEPT_HEADERS = (
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "location",
    "retry-after",
    "x-request-id",
)
SECRET_NAME = re.compile(r"[A-Z0-9_]+")
SECRET_PREFIX = "RQKIT_SECRET_"
TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # an RFC 9110 field name
FIELD_VALUE = re.compile(r"(?:[!-~](?:[ \t!-~]*[!-~])?)?")  # visible ASCII, inner blanks: what h11 sends
URL_TEXT = re.compile(r"[!-\[\]-~]+")  # printable ASCII but the backslash, which parsers read differently
MAX_FIELD = 8000  # URL or header value: past this, common servers refuse the request
SET_BY_CLIENT = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"}
)
DEFAULT_PORTS = {"http": 80, "https": 443}
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
STORE_PREFIX = "rqkit:api:store:"  # store_as NAME is kept at rqkit:api:store:NAME, and nowhere else
EXCERPT = 200
USER_AGENT = f"rqkit/{version('rqkit')} (background jobs on RQ)"


def check_call(
    method: object,
    url: object,
    json: object = None,
    params: object = None,
    headers: object = None,
    idempotency_key: object = None,
    store_as: object = None,
    secret_headers: object = None,
) -> None:
    """Enqueue-time check of a call: everything the job would refuse when run is refused here."""
    if not isinstance(method, str) or not method.isascii() or method.upper() not in METHODS:
        raise JobInputError(
            f"api-call: method must be one of {', '.join(sorted(METHODS))}, got {shown(method)}"
        )
    check_url(url, get_settings())
    request_body(json)
    for name, value in string_map("params", params).items():
        if not utf8(name + value):
            raise JobInputError(f"api-call: params must be UTF-8 text, got {shown(name)}: {shown(value)}")
    for name, value in string_map("headers", headers).items():
        check_header(name, value)
    for name, env_name in string_map("secret_headers", secret_headers).items():
        check_header(name, "")
        check_secret_name(env_name)
    if idempotency_key is not None:
        check_field("api-call: idempotency_key", idempotency_key)
    if store_as is not None:
        store_key(store_as)


def shown(value: object) -> str:
    """A value in an error message: its repr, on one line, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def utf8(text: str) -> bool:
    return text.encode("utf-8", errors="replace").decode("utf-8") == text


def string_map(name: str, mapping: object) -> dict[str, str]:
    """A mapping of strings to strings (None: an empty one)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise JobInputError(f"api-call: {name} must map names to strings, got {shown(mapping)}")
    return mapping


def check_header(name: str, value: str) -> None:
    """An RFC 9110 field name (not one the client sets itself) and a one-line visible-ASCII value."""
    if not TOKEN.fullmatch(name) or name.lower() in SET_BY_CLIENT:
        raise JobInputError(
            f"api-call: {shown(name)} is not a header name to send (letters, digits and !#$%&'*+-.^_`|~; "
            f"not {', '.join(sorted(SET_BY_CLIENT))})"
        )
    check_field(f"api-call: header {name}", value, empty=True)


def check_field(what: str, value: object, kind: str = "value", empty: bool = False) -> str:
    """A header value: printable ASCII on one line, no blank at either end, not too long."""
    if (
        not isinstance(value, str)
        or not FIELD_VALUE.fullmatch(value)
        or len(value) > MAX_FIELD
        or not (value or empty)
    ):
        raise JobInputError(
            f"{what} must be a one-line {kind}{'' if empty else ' (not empty)'} in printable ASCII, "
            f"without blanks at its ends (at most {MAX_FIELD} characters), got {shown(value)}"
        )
    return value


def request_body(value: object) -> bytes | None:
    """The JSON body as sent (None: no body); refused if it can't be sent as JSON."""
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobInputError(f"api: the body can't be sent as JSON: {exc}") from None


def store_key(name: object) -> str:
    """Where store_as NAME keeps the body: under the toolkit's own prefix, whatever the name."""
    if not isinstance(name, str) or not STORE_NAME.fullmatch(name):
        raise JobInputError(
            "api-call: store_as must be 1 to 200 letters, digits and ._:/- (from a letter or digit), "
            f"got {shown(name)}"
        )
    return STORE_PREFIX + name


def check_url(url: object, settings: Settings) -> str:
    """An http(s) URL, read the same by every parser, whose host is on the allow-list; its host."""
    if not isinstance(url, str) or not URL_TEXT.fullmatch(url) or len(url) > MAX_FIELD:
        raise JobInputError(f"api: not an http(s) URL in printable ASCII, without blanks: {shown(url)}")
    try:
        parts, parsed = urlsplit(url), httpx.URL(url)
        port = DEFAULT_PORTS.get(parts.scheme) if parts.port is None else parts.port
    except (ValueError, httpx.InvalidURL) as exc:
        raise JobInputError(f"api: not a valid URL ({exc}): {shown(url)}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or not port:
        raise JobInputError(f"api: not an http(s) URL with a host and a port in 1-65535: {shown(url)}")
    if parts.username is not None:
        raise JobInputError("api: a URL can't carry credentials: send them with secret_headers")
    if (parsed.host, parsed.port or DEFAULT_PORTS[parts.scheme]) != (parts.hostname, port):
        raise JobInputError(f"api: a URL read two ways (host or port): {shown(url)}")
    if parts.hostname not in {host.lower() for host in settings.api_allowed_hosts}:  # urlsplit lowercases
        raise DisallowedHost(f"api: host {parts.hostname} is not allowed (RQKIT_API_ALLOWED_HOSTS)")
    return parts.hostname


def check_secret_name(name: object) -> None:
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise JobInputError(
            f"api: a secret is named by NAME (read from ${SECRET_PREFIX}NAME), got {shown(name)}"
        )


def secret(name: str) -> str:
    """The value of $RQKIT_SECRET_<name>, read where the job runs; it never reaches a log or a result."""
    check_secret_name(name)
    value = os.environ.get(SECRET_PREFIX + name)
    if not value:
        raise RejectedError(f"api: the secret {SECRET_PREFIX}{name} is not set where the job runs")
    return value


def secret_header(name: str) -> str:
    """A secret to send as a header value: one that h11 can send."""
    value = secret(name)
    if not FIELD_VALUE.fullmatch(value):
        raise RejectedError(f"api: the secret {SECRET_PREFIX}{name} is not a header value (printable ASCII)")
    return value


@retry_only_transient
def call_api(
    method: str,
    url: str,
    json: Any = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    store_as: str | None = None,
    secret_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Job: one HTTP request; its response as the result, and with `store_as` its body in Redis."""
    check_call(method, url, json, params, headers, idempotency_key, store_as, secret_headers)
    settings = get_settings()
    method = method.upper()
    secrets = {name: secret_header(env) for name, env in (secret_headers or {}).items()}
    sent_headers = {**(headers or {}), **secrets}
    if method in NON_IDEMPOTENT:
        sent_headers["Idempotency-Key"] = idempotency_key or stable_key(method, url, json)
    if json is not None and "content-type" not in {name.lower() for name in sent_headers}:
        sent_headers["Content-Type"] = "application/json"
    redactor = Redactor(secrets.values())
    with redactor.guarding():
        # With secrets in the headers, a redirect is reported, not followed: httpx only strips Authorization.
        reply = perform(
            method,
            url,
            settings,
            redactor,
            follow_redirects=not secrets,
            content=request_body(json),
            params=params,
            headers=sent_headers,
        )
        result = summarize(reply, redactor)
    if store_as:
        store(store_as, result["body"], settings)
    logger.info("%s %s: %s", method, url, reply.status)
    return result


def store(name: str, body: Any, settings: Settings) -> None:
    """The seed's DataCache: the parsed body at rqkit:api:store:NAME, for api_store_ttl seconds."""
    redis_client(settings).set(store_key(name), json.dumps(body), ex=settings.api_store_ttl)


@retry_only_transient
def deliver_webhook(url: str, event: str, payload: Any, secret_name: str) -> dict[str, Any]:
    """Job: POST a signed event: X-Rqkit-Signature = sha256=HMAC-SHA256(secret, "<timestamp>." + body)."""
    settings = get_settings()
    check_webhook(url, event, payload, secret_name)
    key = secret(secret_name)
    body = request_body({"event": event, "payload": payload}) or b""
    timestamp = str(int(time.time()))
    delivery = stable_key("POST", url, {"event": event, "payload": payload})
    headers = {
        "Content-Type": "application/json",
        "X-Rqkit-Event": event,
        "X-Rqkit-Delivery": delivery,
        "X-Rqkit-Timestamp": timestamp,
        "X-Rqkit-Signature": "sha256=" + sign(key.encode(), timestamp, body),
        "Idempotency-Key": delivery,
    }
    redactor = Redactor([key])
    with redactor.guarding():
        return summarize(perform("POST", url, settings, redactor, content=body, headers=headers), redactor)


def check_webhook(url: object, event: object, payload: object, secret_name: object) -> None:
    """Enqueue-time check of a delivery: an allowed URL, an event that can be a header, a JSON payload."""
    check_url(url, get_settings())
    check_field("webhook: event", event, kind="name")
    request_body(payload)
    check_secret_name(secret_name)


def sign(secret_value: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret_value, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret_value: bytes | str, timestamp: str, body: bytes, signature: str, tolerance: int = 300
) -> bool:
    """For receivers: the signature matches and the timestamp is recent (no replay of old deliveries).
    The secret as bytes, or as the text of RQKIT_SECRET_<NAME>."""
    if isinstance(secret_value, str):
        secret_value = secret_value.encode()
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature, "sha256=" + sign(secret_value, timestamp, body))


def stable_key(method: str, url: str, body: Any) -> str:
    """The same on every retry: from the RQ job's id, else from the request itself."""
    job = get_current_job()
    if job is not None:
        return f"rqkit-{job.id}"
    return hashlib.sha256(json.dumps([method, url, body], sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Reply:
    """What came back: status, headers, and the body read up to the size limit (never more)."""

    status: int
    reason: str
    headers: httpx.Headers
    content: bytes
    truncated: bool
    encoding: str

    def text(self) -> str:
        return self.content.decode(self.encoding, errors="replace")


def perform(
    method: str,
    url: str,
    settings: Settings,
    redactor: Redactor,
    follow_redirects: bool = True,
    **request: Any,
) -> Reply:
    """Send within the host's rate limit; raise per the failure policy, with the wait decided here."""
    take_slot(check_url(url, settings), settings, redis_client(settings))
    timeout = httpx.Timeout(settings.api_read_timeout, connect=settings.api_connect_timeout)
    hooks = {"request": [lambda outgoing: check_url(str(outgoing.url), settings)]}  # redirects included
    headers = {"User-Agent": USER_AGENT, **request.pop("headers")}
    transport = checked_transport(settings.api_allowed_hosts)
    options: dict[str, Any] = {"follow_redirects": follow_redirects, "event_hooks": hooks, "trust_env": False}
    try:
        with httpx.Client(timeout=timeout, transport=transport, **options) as client:
            with client.stream(method, url, headers=headers, **request) as response:
                reply = read_reply(response, settings.api_max_body_kb * 1024)
    except httpx.TooManyRedirects as exc:
        raise RejectedError(f"api: {method} {url}: {exc}") from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        retry_in(backoff(settings))
        raise UpstreamError(f"api: {method} {url}: {type(exc).__name__}: {exc}") from None
    if reply.status == 429 or reply.status >= 500:
        retry_in(retry_after(reply.headers) or backoff(settings))
        raise UpstreamError(f"api: {method} {url}: {reply.status} {excerpt(reply, redactor)}")
    if reply.status >= 400:
        raise RejectedError(f"api: {method} {url}: {reply.status} {excerpt(reply, redactor)}")
    return reply


def read_reply(response: httpx.Response, limit: int) -> Reply:
    """Read at most `limit` bytes (+1 to know it was cut): a huge body can't exhaust the work-horse."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    content = b"".join(chunks)
    return Reply(
        response.status_code,
        response.reason_phrase,
        response.headers,
        content[:limit],
        size > limit,
        response.encoding or "utf-8",
    )


def excerpt(reply: Reply, redactor: Redactor) -> str:
    """The reason phrase and the start of the body, on one line, without secrets."""
    text = " ".join(redactor.text(reply.text())[:EXCERPT].split())
    return (redactor.text(reply.reason) + (f": {text}" if text else "")).strip()


def summarize(reply: Reply, redactor: Redactor) -> dict[str, Any]:
    """Status, the headers worth keeping, and the body (parsed if JSON and whole), without secrets."""
    body: Any = redactor.text(reply.text(), cut=reply.truncated)
    if not reply.truncated and "json" in reply.headers.get("content-type", ""):
        with suppress(ValueError):
            body = redactor.json(reply.content)
    headers = {name: redactor.text(reply.headers[name]) for name in KEPT_HEADERS if name in reply.headers}
    return {"status": reply.status, "headers": headers, "body": body, "truncated": reply.truncated}


def retry_intervals(settings: Settings) -> list[int]:
    """The retry budget RQ gets at enqueue time; each failure then sets its own next interval."""
    return [math.ceil(settings.api_backoff_seconds)] * settings.api_max_retries
