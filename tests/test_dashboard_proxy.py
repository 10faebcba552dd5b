"""Behind a TLS reverse proxy: with RQKIT_DASHBOARD_PROXIES=1 the browser's https Origin matches and its
POSTs go through; with 0 (the default) X-Forwarded-* headers are ignored, so the same POSTs are refused
and forged headers never make a cross-site POST pass. A real proxy (TLS, as nginx's proxy_pass sets the
headers) in front of the real `python cli.py dashboard`, and a real Chromium."""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from redis import Redis
from rq import SimpleWorker
from rq.job import Job

from config.rq_classes import Queue
from tests.test_dashboard import chromium
from tests.test_dashboard_markup import served_dashboard

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
SET_BY_PROXY = {"host", "x-forwarded-host", "x-forwarded-proto", "content-length"}


@contextmanager
def tls_proxy(backend_port: int) -> Iterator[tuple[str, trustme.CA]]:
    """A TLS reverse proxy on a free loopback port to http://127.0.0.1:backend_port, setting the headers
    as nginx does with `proxy_pass http://127.0.0.1:PORT` (Host: the backend's address),
    `X-Forwarded-For $proxy_add_x_forwarded_for`, `X-Forwarded-Proto $scheme` and
    `X-Forwarded-Host $http_host` (replacing what the client sent); its https URL and its CA."""

    class Forward(BaseHTTPRequestHandler):
        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | SET_BY_PROXY}
            prior = self.headers.get("X-Forwarded-For")
            client = self.client_address[0]
            headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
            headers["X-Forwarded-Proto"] = "https"
            headers["X-Forwarded-Host"] = self.headers["Host"]
            backend = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=10)
            backend.request(self.command, self.path, body, headers)  # adds Host: 127.0.0.1:PORT
            answer = backend.getresponse()
            data = answer.read()
            backend.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_HEAD = forward

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}", ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def failed_job(connection: Redis) -> Job:
    job = Queue("default", connection=connection).enqueue("tests.compat_jobs.fail", "boom")
    SimpleWorker(["default"], connection=connection, serializer=job.serializer).work(burst=True)
    assert job.get_status(refresh=True) == "failed"
    return job


@contextmanager
def dashboard_behind_proxy(proxies: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The dashboard on loopback with RQKIT_DASHBOARD_PROXIES=proxies, the TLS proxy in front of it:
    (dashboard URL, proxy URL, a client that trusts the proxy's CA)."""
    monkeypatch.setenv("RQKIT_DASHBOARD_PROXIES", str(proxies))
    with served_dashboard(tmp_path) as direct:
        with tls_proxy(int(direct.rsplit(":", 1)[1])) as (public, ca):
            trusted = ssl.create_default_context()
            ca.configure_trust(trusted)
            with httpx.Client(verify=trusted) as client:
                yield direct, public, client


@pytest.mark.parametrize("proxies", [1, 0])
def test_a_browser_behind_a_tls_proxy_requeues_only_with_the_setting(
    proxies: int, connection: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = failed_job(connection)
    with (
        dashboard_behind_proxy(proxies, tmp_path, monkeypatch) as (_, public, _client),
        chromium() as browser,
    ):
        context = browser.new_context(ignore_https_errors=True)  # the proxy's certificate is a test CA's
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{public}/0/view/job/{job.id}")
        page.locator("#job-data .description-scroll").wait_for()
        with page.expect_response(lambda answer: answer.url.endswith("/requeue")) as requeued:
            page.locator("#requeue-job-btn").click()
        if proxies:
            assert requeued.value.status == 200
            assert job.get_status(refresh=True) == "queued"
        else:  # the https Origin is not the http://127.0.0.1 the dashboard sees without the setting
            assert requeued.value.status == 403
            assert job.get_status(refresh=True) == "failed"
        context.close()


def test_without_the_setting_forged_forwarded_headers_change_nothing(
    connection: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = failed_job(connection)
    with dashboard_behind_proxy(0, tmp_path, monkeypatch) as (direct, _, _client):
        port = direct.rsplit(":", 1)[1]
        forged = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-For": "1.2.3.4",
        }
        for origin in ("https://evil.example", f"https://127.0.0.1:{port}"):
            refused = httpx.post(f"{direct}/job/{job.id}/requeue", headers={**forged, "Origin": origin})
            assert refused.status_code == 403, origin
        assert job.get_status(refresh=True) == "failed"
        # The page sees the request as it came: the forged host is never taken for its own.
        assert httpx.get(f"{direct}/", headers=forged).status_code == 200
        own = httpx.post(f"{direct}/job/{job.id}/requeue", headers={**forged, "Origin": direct})
        assert own.status_code == 200 and job.get_status(refresh=True) == "queued"


def test_with_one_proxy_a_cross_site_post_is_still_refused(
    connection: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = failed_job(connection)
    with dashboard_behind_proxy(1, tmp_path, monkeypatch) as (direct, public, client):
        # Another site's form or fetch, through the proxy, even with its own X-Forwarded-Host (replaced).
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"},
        ):
            refused = client.post(f"{public}/job/{job.id}/requeue", headers=headers)
            assert refused.status_code == 403, headers
        assert client.post(f"{public}/job/{job.id}/requeue").status_code == 403  # no Origin at all
        assert job.get_status(refresh=True) == "failed"
        # Straight to the dashboard by a rebound name, with the forwarded headers a page's fetch can add:
        # the Host it received is not a loopback name, whatever X-Forwarded-Host says.
        port = direct.rsplit(":", 1)[1]
        rebound = f"rebound.example:{port}"
        headers = {"Host": rebound, "X-Forwarded-Host": rebound, "Origin": f"http://{rebound}"}
        assert httpx.post(f"{direct}/job/{job.id}/requeue", headers=headers).status_code == 421
        assert (
            httpx.get(
                f"{direct}/", headers={"Host": rebound, "X-Forwarded-Host": f"127.0.0.1:{port}"}
            ).status_code
            == 421
        )
        assert job.get_status(refresh=True) == "failed"
        # The dashboard's own page, through the proxy: allowed.
        own = client.post(f"{public}/job/{job.id}/requeue", headers={"Origin": public})
        assert own.status_code == 200 and job.get_status(refresh=True) == "queued"
