"""Email benchmark: messages/second through one rq worker into the local SMTP sink.

Starts a private redis-server and the sink (`python -m launcher.mail_sink`) on free loopback ports,
enqueues N distinct messages in bulk, runs one `rq worker --burst email` (a work-horse forked per
job, as in production) and counts the .eml files the sink stored: every message exactly once.
Usage: .venv/bin/python bench/mail.py [--messages 500]   (not bench/email.py: a file of that name
would hide the standard library's email package from every script in bench/)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config import get_settings
from config.connection import answers
from config.settings import PROJECT_ROOT
from jobs import enqueue
from launcher.redis_server import RedisServer, free_port


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"the sink did not start on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500)
    count = parser.parse_args().messages
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = RedisServer(free_port(), work / "redis").start()
        sink_port, mail_dir = free_port(), work / "mail"
        (work / "none.toml").write_text("")
        os.environ.update(
            REDIS_URL=server.url,
            RQKIT_CONFIG=str(work / "none.toml"),
            RQKIT_VAR_DIR=str(work),
            RQKIT_SMTP_SINK_PORT=str(sink_port),
        )
        get_settings.cache_clear()
        sink = subprocess.Popen(
            [sys.executable, "-m", "launcher.mail_sink", "--port", str(sink_port), "--dir", str(mail_dir)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            assert answers(server.url)
            wait_for_port(sink_port)
            start = time.perf_counter()
            for i in range(count):
                enqueue("email", "reader@example.com", f"Message {i}", text=f"Body {i}")
            enqueue_seconds = time.perf_counter() - start
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "rq.cli", "worker", "-c", "config.rq", "--burst", "--quiet", "email"],
                cwd=PROJECT_ROOT,
                check=True,
            )
            seconds = time.perf_counter() - start
            stored = len(list(mail_dir.glob("*.eml")))
        finally:
            sink.terminate()
            sink.wait()
            server.stop()
    print(f"{'measure':<52}{'value':>12}")
    print(f"{'messages':<52}{count:>12}")
    print(f"{'enqueue one by one (checks, template-free)':<52}{count / enqueue_seconds:>10.0f}/s")
    print(f"{'one rq worker, into the local sink (start included)':<52}{count / seconds:>10.1f}/s")
    print(f"{'  per message':<52}{1000 * seconds / count:>9.1f} ms")
    print(f"{'.eml files stored (each message exactly once)':<52}{stored:>12}")


if __name__ == "__main__":
    main()
