"""The toolkit from a web app: enqueue jobs and read how they went, in a few milliseconds, without
importing the toolkit's packages into the app (`config`, `jobs` and `scheduler` are names that Django
and Flask projects use for their own).

    from rqkit import Toolkit
    toolkit = Toolkit()                                   # once per process, at start-up
    job = toolkit.enqueue("thumbnail", "uploads/cat.jpg")  # {"id": ..., "status": "queued", ...}
    toolkit.job(job["id"])                                # {"status": "finished", "result": ...}

A Toolkit runs the toolkit in a child process of its own (`python -P -m rqkit.gateway`, with the
toolkit's folder first on its path), which takes the app's environment (REDIS_URL, RQKIT_*), checks
each call as `python cli.py enqueue` does and answers over a pipe, a JSON line each way. This module
imports nothing but the standard library. A Toolkit is safe to share between threads; a process
forked from one (a pre-forking server) starts a gateway of its own on its first call.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["Refused", "Toolkit", "ToolkitError", "Unavailable"]

ROOT = Path(__file__).resolve().parent.parent  # the toolkit's folder: its packages live here
START_TIMEOUT = 60.0  # s for the gateway's imports, on a busy machine


class ToolkitError(RuntimeError):
    """The toolkit failed to do what was asked; the message says why, in one line."""


class Refused(ToolkitError, ValueError):
    """The toolkit refused the call for good (an unknown job, bad arguments, a queue no worker serves):
    the job was not enqueued, and asking again won't help."""


class Unavailable(ToolkitError, ConnectionError):
    """Redis (or the gateway) could not be reached in time, or a durable enqueue may not survive a
    failover: the job may or may not be enqueued. Ask again (an email with its idempotency key, or a
    unique job, is never sent or run twice)."""


ERRORS = {"refused": Refused, "unavailable": Unavailable, "failed": ToolkitError}


class Toolkit:
    """The toolkit's jobs, through a gateway process of its own."""

    def __init__(self, *, python: str | None = None, timeout: float = 10.0) -> None:
        """`python`: the interpreter that has the toolkit's dependencies (RQKIT_PYTHON, else this one);
        `timeout`: seconds to wait for each answer before giving up with Unavailable."""
        self.python = python or os.environ.get("RQKIT_PYTHON") or sys.executable
        self.timeout = timeout
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._pid = 0
        self._pending = b""
        with self._lock:
            self._start()  # its imports run while the app starts

    def enqueue(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Enqueue job `name` (as `python cli.py jobs` lists them) with these arguments."""
        return self.submit(name, args, kwargs)

    def submit(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        at: datetime | None = None,
        at_front: bool = False,
        timeout: int | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Enqueue with options: another queue, a time to run `at` (timezone-aware), the front of the
        queue, a time-out in seconds, tags. The job's id, name, queue and status, and whether it was a
        pending duplicate of a unique job."""
        if at is not None and at.tzinfo is None:
            raise Refused("at: give a timezone-aware datetime (datetime.now(UTC) + ...)")
        return self._ask(
            "submit",
            name=name,
            args=list(args),
            kwargs=kwargs or {},
            queue=queue,
            at=at.isoformat() if at else None,
            at_front=at_front,
            timeout=timeout,
            tags=tags,
        )

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's status, its result once finished or its one-line reason once failed, and its
        times; None if there is no such job (never was, or expired)."""
        answer: dict[str, Any] | None = self._ask("job", id=job_id)
        return answer

    def word_counts(self) -> dict[str, int | None]:
        """The cached total word count of each model (None until a word-count job has run): one GET each."""
        return self._ask("word_counts")

    def locations(self) -> dict[str, str]:
        """Where the jobs' files are: the media root (uploads go below it, and jobs take paths relative to
        it) and the thumbnails root, as absolute folders or s3:// locations: {"media_root": ...,
        "thumbnails_root": ...}."""
        return self._ask("locations")

    def close(self) -> None:
        """Stop the gateway (it also stops by itself when this process ends)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> Toolkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, op: str, **request: Any) -> Any:
        line = json.dumps({"op": op, **request}).encode() + b"\n"
        with self._lock:
            if self._child is None or self._pid != os.getpid() or self._child.poll() is not None:
                self._start()
            try:
                assert self._child is not None and self._child.stdin is not None
                self._child.stdin.write(line)
                self._child.stdin.flush()
                answer = json.loads(self._read_line(self.timeout))
            except (OSError, EOFError, ValueError, TimeoutError) as exc:
                self._stop(kill=True)
                raise Unavailable(
                    f"the toolkit's gateway did not answer ({exc}); the call may or may not "
                    "have been carried out"
                ) from None
        if "error" in answer:
            raise ERRORS.get(answer["error"], ToolkitError)(answer["message"])
        return answer["ok"]

    def _start(self) -> None:
        """A new gateway, and its first line (that it is ready); the one a parent process forked with
        is left to the parent."""
        if self._pid == os.getpid():
            self._stop()
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), path)))}
        self._pending, self._pid = b"", os.getpid()
        try:
            self._child = subprocess.Popen(
                [self.python, "-P", "-m", "rqkit.gateway"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            self._child = None
            raise Unavailable(f"cannot start the toolkit's gateway with {self.python}: {exc}") from None
        try:
            ready = json.loads(self._read_line(START_TIMEOUT))
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            self._stop(kill=True)
            raise Unavailable(f"the toolkit's gateway did not start ({exc}); its error is above") from None
        if "error" in ready:
            self._stop()
            raise ERRORS.get(ready["error"], ToolkitError)(ready["message"])

    def _read_line(self, timeout: float) -> bytes:
        assert self._child is not None and self._child.stdout is not None
        fd, deadline = self._child.stdout.fileno(), time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise TimeoutError(f"no answer within {timeout:g} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("it exited")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def _stop(self, kill: bool = False) -> None:
        """Close the gateway's pipes (it exits when its input ends), and kill it if it must go now or
        has not gone within 5 s."""
        child, self._child = self._child, None
        if child is None:
            return
        if kill:
            child.kill()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                with suppress(OSError):
                    stream.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
