"""A loopback HTTP proxy in front of the test store that can answer errors or stall: a store that is
slow, or fails one request of several, as S3 does under load. Requests pass through unchanged (the
Host header too, so boto3's signatures still hold)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_BODY = b"<Error><Code>ServiceUnavailable</Code><Message>injected by the test proxy</Message></Error>"


@dataclass
class Faults:
    """What the proxy does to the requests it passes: fail the ones numbered in `fail` (counted per
    method from 1), and those to a path in `fail_paths`, with `status`; hold every one `delay`
    seconds first."""

    fail: dict[str, set[int]] = field(default_factory=dict)
    status: int = 503
    delay: float = 0.0
    seen: dict[str, int] = field(default_factory=dict)
    fail_paths: set[tuple[str, str]] = field(default_factory=set)  # (method, path ending): always

    def failing(self, method: str, path: str) -> bool:
        self.seen[method] = number = self.seen.get(method, 0) + 1
        refused = any(method == m and path.split("?")[0].endswith(end) for m, end in self.fail_paths)
        return refused or number in self.fail.get(method, set())


@contextmanager
def s3_proxy(upstream_port: int) -> Iterator[tuple[int, Faults]]:
    """A proxy to 127.0.0.1:`upstream_port`: its port, and the faults to set on it."""
    faults = Faults()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                fail, delay = faults.failing(self.command, self.path), faults.delay
            time.sleep(delay)
            if fail:
                self.send_response(faults.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(ERROR_BODY)))
                self.end_headers()
                self.wfile.write(ERROR_BODY)
                return
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            try:
                headers = {name: value for name, value in self.headers.items() if name.lower() != "expect"}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
            finally:
                upstream.close()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], faults
    finally:
        server.shutdown()
        server.server_close()
