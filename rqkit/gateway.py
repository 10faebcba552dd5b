"""The process behind rqkit.Toolkit: reads a JSON request per line on stdin, answers a JSON line on
stdout ({"ok": ...} or {"error": "refused" | "unavailable" | "failed", "message": ...}), until stdin
closes. Run by the Toolkit as `python -P -m rqkit.gateway`, never imported by the web app."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from redis.exceptions import RedisError

from config import ConfigError, RedisUnavailable, ToolkitError, get_settings, redis_client
from config.durable import NotDurable
from config.history import job_type
from jobs.errors import JobInputError
from jobs.stats import MODELS, total_word_count
from jobs.submission import submit
from ops.outcomes import failure_reason
from ops.views import fetch, iso

logger = logging.getLogger("rqkit.gateway")


def do_submit(request: dict[str, Any]) -> dict[str, Any]:
    at = datetime.fromisoformat(request["at"]) if request.get("at") else None
    done = submit(
        request["name"],
        tuple(request.get("args") or ()),
        request.get("kwargs") or {},
        queue=request.get("queue"),
        at=at,
        at_front=bool(request.get("at_front")),
        timeout=request.get("timeout"),
        tags=request.get("tags"),
    )
    job = done.job
    return {
        "id": job.id,
        "job": request["name"],
        "queue": job.origin,
        "status": job.get_status(refresh=False).value,
        "duplicate": done.duplicate,
    }


def do_job(request: dict[str, Any]) -> dict[str, Any] | None:
    try:
        job = fetch(str(request["id"]), redis_client())
    except JobInputError:
        return None
    status = job.get_status().value
    return {
        "id": job.id,
        "job": job_type(job),
        "queue": job.origin,
        "status": status,
        "result": job.return_value() if status == "finished" else None,
        "reason": failure_reason(job) if status in ("failed", "stopped", "canceled") else None,
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
    }


def do_word_counts(request: dict[str, Any]) -> dict[str, int | None]:
    connection = redis_client()
    return {model: total_word_count(model, connection) for model in MODELS}


def do_locations(request: dict[str, Any]) -> dict[str, str]:
    settings = get_settings()
    roots = {"media_root": settings.media_root, "thumbnails_root": settings.thumbnails_root}
    return {name: str(root.resolve() if isinstance(root, Path) else root) for name, root in roots.items()}


OPS = {"submit": do_submit, "job": do_job, "word_counts": do_word_counts, "locations": do_locations}


def answer(request: Any) -> dict[str, Any]:
    """The reply to one request: its outcome, or the kind of error and its one-line message."""
    try:
        if not isinstance(request, dict) or request.get("op") not in OPS:
            raise JobInputError(f"unknown request {request!r:.80}; known: {', '.join(OPS)}")
        return {"ok": OPS[request["op"]](request)}
    except (JobInputError, ConfigError, KeyError, TypeError, ValueError) as exc:
        return {"error": "refused", "message": str(exc) if isinstance(exc, ToolkitError) else repr(exc)}
    except (RedisUnavailable, NotDurable) as exc:
        return {"error": "unavailable", "message": str(exc)}
    except RedisError as exc:
        return {"error": "unavailable", "message": f"Redis: {exc}"}
    except Exception as exc:  # the app gets a line; the traceback goes to the log
        logger.exception("rqkit gateway: %s failed", request.get("op"))
        return {"error": "failed", "message": f"{type(exc).__name__}: {exc}"}


def serve(requests: IO[bytes], replies: IO[str]) -> None:
    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message, default=str) + "\n")
        replies.flush()

    try:
        get_settings()
    except ConfigError as exc:  # settings that can't load: every call would fail alike
        reply({"error": "refused", "message": str(exc)})
        return
    reply({"ok": "ready"})
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError as exc:
            reply({"error": "refused", "message": f"not a JSON request: {exc}"})
            continue
        reply(answer(request))


def main() -> None:
    # Ctrl-C in the app's terminal reaches its whole process group: the app decides whether to stop, and
    # the gateway goes when the app closes its pipe (no KeyboardInterrupt traceback, no request cut off).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the pipe is the protocol's alone:
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever else prints goes to the app's stderr
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
