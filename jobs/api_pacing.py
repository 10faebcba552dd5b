"""How fast the api jobs call a host: shared rate limits, back-off and Retry-After, all through RQ's
scheduler rather than a sleeping worker."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from redis import Redis
from rq import get_current_job

from config import Settings
from jobs.errors import UpstreamError

SLEEP_LIMIT = (
    1.0  # rate-limit waits up to this are slept (shorter than the scheduler's tick); longer deferred
)
MAX_RETRY_AFTER = 24 * 3600

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


class Deferred(UpstreamError):
    """Over the host's rate limit: put back until its reserved slot, without using up a retry."""


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
