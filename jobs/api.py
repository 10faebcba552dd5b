"""3rd-party HTTP calls and outgoing webhooks: allow-listed hosts, polite retries, shared rate limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis import Redis
from rq import get_current_job

from config import Settings, get_settings, redis_client
from config.connection import RESERVED_PREFIXES
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
SECRET_NAME = re.compile(r"^[A-Z0-9_]+$")
SECRET_PREFIX = "RQKIT_SECRET_"
SLEEP_LIMIT = (
    1.0  # rate-limit waits up to this are slept (shorter than the scheduler's tick); longer deferred
)
MAX_RETRY_AFTER = 24 * 3600
EXCERPT = 200
USER_AGENT = f"rqkit/{version('rqkit')} (background jobs on RQ)"

# GCRA: each call reserves the next slot of its host (one every `interval` ms) and learns how long to
# wait for it. Redis's own clock, so that every machine agrees.
RESERVE_SLOT = """
redis.replicate_commands()
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 60000)
return {tat - now, now}
"""


class DisallowedHost(JobInputError):
    """The request (or a redirect) goes to a host that is not on the allow-list."""


class Deferred(UpstreamError):
    """Over the host's rate limit: put back until its reserved slot, without using up a retry."""


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
    """Enqueue-time check of a call: method, allowed URL, headers, names of secrets."""
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise JobInputError(f"api-call: method must be one of {', '.join(sorted(METHODS))}, got {method!r}")
    check_url(url, get_settings())
    check_mappings(params, headers, secret_headers)
    for name, value in (("idempotency_key", idempotency_key), ("store_as", store_as)):
        if value is not None and (not isinstance(value, str) or not value):
            raise JobInputError(f"api-call: {name} must be a non-empty string, got {value!r}")
    if isinstance(store_as, str) and store_as.startswith(RESERVED_PREFIXES):
        raise JobInputError(
            f"api-call: store_as {store_as!r} would overwrite the queues' or the toolkit's keys"
        )


def check_mappings(params: object, headers: object, secret_headers: object) -> None:
    """Names to one-line strings; secret headers name secrets, they don't hold them."""
    mappings: dict[str, dict[str, str]] = {}
    for name, mapping in (("params", params), ("headers", headers), ("secret_headers", secret_headers)):
        if mapping is None:
            continue
        if not (
            isinstance(mapping, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
        ):
            raise JobInputError(f"api-call: {name} must map names to strings, got {mapping!r}")
        mappings[name] = mapping
    for header, text in {**mappings.get("headers", {}), **mappings.get("secret_headers", {})}.items():
        if "\r" in header + text or "\n" in header + text:
            raise JobInputError(f"api-call: header {header!r} must be one line")
    for env_name in mappings.get("secret_headers", {}).values():
        check_secret_name(env_name)


def check_url(url: object, settings: Settings) -> str:
    """An http(s) URL whose host is on the allow-list; its host."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobInputError(f"api: not an http(s) URL: {url!r}")
    if parts.hostname not in {host.lower() for host in settings.api_allowed_hosts}:  # urlsplit lowercases
        raise DisallowedHost(f"api: host {parts.hostname} is not allowed (RQKIT_API_ALLOWED_HOSTS)")
    return parts.hostname


def check_secret_name(name: object) -> None:
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise JobInputError(f"api: a secret is named by NAME (read from ${SECRET_PREFIX}NAME), got {name!r}")


def secret(name: str) -> str:
    """The value of $RQKIT_SECRET_<name>, read where the job runs; it never reaches a log or a result."""
    check_secret_name(name)
    value = os.environ.get(SECRET_PREFIX + name)
    if not value:
        raise RejectedError(f"api: the secret {SECRET_PREFIX}{name} is not set where the job runs")
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
    sent_headers = {**(headers or {}), **{name: secret(env) for name, env in (secret_headers or {}).items()}}
    if method in NON_IDEMPOTENT:
        sent_headers["Idempotency-Key"] = idempotency_key or stable_key(method, url, json)
    # With secrets in the headers, a redirect is reported, not followed: httpx only strips Authorization.
    reply = perform(
        method,
        url,
        settings,
        follow_redirects=not secret_headers,
        json=json,
        params=params,
        headers=sent_headers,
    )
    result = summarize(reply)
    if store_as:
        store(store_as, result["body"], settings)
    logger.info("%s %s: %s", method, url, reply.status)
    return result


def store(key: str, body: Any, settings: Settings) -> None:
    """The seed's DataCache: the parsed body under `key`, for api_store_ttl seconds."""
    redis_client(settings).set(key, json.dumps(body), ex=settings.api_store_ttl)


@retry_only_transient
def deliver_webhook(url: str, event: str, payload: Any, secret_name: str) -> dict[str, Any]:
    """Job: POST a signed event: X-Rqkit-Signature = sha256=HMAC-SHA256(secret, "<timestamp>." + body)."""
    settings = get_settings()
    check_webhook(url, event, payload, secret_name)
    body = json.dumps({"event": event, "payload": payload}, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    delivery = stable_key("POST", url, {"event": event, "payload": payload})
    headers = {
        "Content-Type": "application/json",
        "X-Rqkit-Event": event,
        "X-Rqkit-Delivery": delivery,
        "X-Rqkit-Timestamp": timestamp,
        "X-Rqkit-Signature": "sha256=" + sign(secret(secret_name).encode(), timestamp, body),
        "Idempotency-Key": delivery,
    }
    return summarize(perform("POST", url, settings, content=body, headers=headers))


def check_webhook(url: object, event: object, payload: object, secret_name: object) -> None:
    check_url(url, get_settings())
    if not isinstance(event, str) or not event or "\n" in event or "\r" in event:
        raise JobInputError(f"webhook: event must be a one-line name, got {event!r}")
    check_secret_name(secret_name)


def sign(secret_value: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret_value, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret_value: bytes, timestamp: str, body: bytes, signature: str, tolerance: int = 300
) -> bool:
    """For receivers: the signature matches and the timestamp is recent (no replay of old deliveries)."""
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
    method: str, url: str, settings: Settings, follow_redirects: bool = True, **request: Any
) -> Reply:
    """Send within the host's rate limit; raise per the failure policy, with the wait decided here."""
    take_slot(check_url(url, settings), settings, redis_client(settings))
    timeout = httpx.Timeout(settings.api_read_timeout, connect=settings.api_connect_timeout)
    hooks = {"request": [lambda outgoing: check_url(str(outgoing.url), settings)]}  # redirects included
    headers = {"User-Agent": USER_AGENT, **request.pop("headers")}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=follow_redirects, event_hooks=hooks) as client:
            with client.stream(method, url, headers=headers, **request) as response:
                reply = read_reply(response, settings.api_max_body_kb * 1024)
    except httpx.TooManyRedirects as exc:
        raise RejectedError(f"api: {method} {url}: {exc}") from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        retry_in(backoff(settings))
        raise UpstreamError(f"api: {method} {url}: {type(exc).__name__}: {exc}") from None
    if reply.status == 429 or reply.status >= 500:
        retry_in(retry_after(reply.headers) or backoff(settings))
        raise UpstreamError(f"api: {method} {url}: {reply.status} {excerpt(reply)}")
    if reply.status >= 400:
        raise RejectedError(f"api: {method} {url}: {reply.status} {excerpt(reply)}")
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


def excerpt(reply: Reply) -> str:
    text = " ".join(reply.text()[:EXCERPT].split())
    return (reply.reason + (f": {text}" if text else "")).strip()


def summarize(reply: Reply) -> dict[str, Any]:
    """Status, the headers worth keeping, and the body (parsed if JSON and whole)."""
    body: Any = reply.text()
    if not reply.truncated and "json" in reply.headers.get("content-type", ""):
        try:
            body = json.loads(reply.content)
        except ValueError:
            pass
    headers = {name: reply.headers[name] for name in KEPT_HEADERS if name in reply.headers}
    return {"status": reply.status, "headers": headers, "body": body, "truncated": reply.truncated}


def retry_intervals(settings: Settings) -> list[int]:
    """The retry budget RQ gets at enqueue time; each failure then sets its own next interval."""
    return [math.ceil(settings.api_backoff_seconds)] * settings.api_max_retries


def backoff(settings: Settings) -> float:
    """Exponential in the attempts made so far, with jitter: half fixed, half random."""
    job = get_current_job()
    attempt = settings.api_max_retries - (job.retries_left or 0) if job is not None else 0
    ceiling = min(settings.api_backoff_max, settings.api_backoff_seconds * 2**attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or an HTTP date), at most a day."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # a "-0000" zone parses naive: it is UTC
        moment = moment.replace(tzinfo=UTC)
    return min(max(0.0, (moment - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER)


def retry_in(seconds: float) -> None:
    """Have RQ schedule this job's next attempt that far ahead (in its scheduler, not a sleeping worker)."""
    job = get_current_job()
    if job is not None:  # RQ reads the next retry's interval from here, and truncates the time it makes
        job.retry_intervals = [math.ceil(seconds) + 1 if seconds > 0 else 0]  # to whole seconds: never early


def take_slot(host: str, settings: Settings, connection: Redis) -> None:
    """Wait for this host's next free slot: sleep if it is under a second away, else defer the job."""
    rate = settings.api_rates.get(host)
    if not rate:
        return
    job = get_current_job()
    reserved = job.meta.pop("rqkit_slot", None) if job is not None else None
    if reserved is None:
        wait_ms, now_ms = connection.eval(RESERVE_SLOT, 1, f"rqkit:rate:{host}", math.ceil(1000 / rate))
        reserved, wait = now_ms + wait_ms, wait_ms / 1000
    else:  # back from a deferral: Redis's clock again, as every machine shares it
        seconds, micros = connection.time()
        wait = (reserved - (seconds * 1000 + micros // 1000)) / 1000
    if wait <= SLEEP_LIMIT or job is None:  # outside a job (a direct call) there is no scheduler to defer to
        time.sleep(max(0.0, wait))
        return
    if job.retries_left is None:
        raise UpstreamError(
            f"api: rate limit of {host}: the next slot is {wait:.0f}s away, and without retries "
            "this job cannot be deferred to it (RQKIT_API_MAX_RETRIES)"
        )
    job.meta["rqkit_slot"] = reserved
    job.save_meta()
    job.retries_left += 1  # a deferral is not a failed attempt
    retry_in(wait)
    raise Deferred(f"api: rate limit of {host}: deferred {wait:.1f}s to its reserved slot")
