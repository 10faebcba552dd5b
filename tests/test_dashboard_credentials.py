"""A Redis password never reaches what the dashboard serves or logs, nor the metrics: a real redis-server
with requirepass, reached by a URL with the password in its query (redis-py's form, unix sockets too)
or in its userinfo; every page and JSON the dashboard serves, its log, the metrics and their output."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from launcher.redis_server import find_redis_server, free_port
from tests.support import start_python, wait_until

PASSWORD = "pw-" + secrets.token_hex(12)
WRONG = "wrong-" + secrets.token_hex(12)


@dataclass
class LockedRedis:
    port: int
    socket: Path

    def urls(self, password: str) -> dict[str, str]:
        """Each way to give redis-py the password, by name."""
        return {
            "query": f"redis://127.0.0.1:{self.port}/0?password={password}",
            "userinfo": f"redis://:{password}@127.0.0.1:{self.port}/0",
            "user-and-password": f"redis://default:{password}@127.0.0.1:{self.port}/0",
            "unix-socket": f"unix://{self.socket}?db=0&password={password}",
        }


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedRedis]:
    """A redis-server that asks for PASSWORD, on a loopback port and a unix socket."""
    data = tmp_path_factory.mktemp("locked-redis")
    port = free_port()
    command = [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--requirepass", PASSWORD]
    command += [
        "--unixsocket",
        str(data / "redis.sock"),
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Redis(port=port, password=PASSWORD)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except OSError:
            return False
        except Exception:  # noqa: BLE001 - still starting
            return process.poll() is not None

    wait_until(answers, 10, "the password-protected redis-server")
    yield LockedRedis(port, data / "redis.sock")
    client.close()
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def planted(locked_redis: LockedRedis) -> dict[str, str]:
    """A failed and a finished job on the locked server (pickle mode); their ids."""
    client = Redis(port=locked_redis.port, password=PASSWORD)
    client.flushdb()
    queue = Queue("default", connection=client)
    failed = queue.enqueue("tests.compat_jobs.fail", "boom")
    done = queue.enqueue("tests.compat_jobs.add", 1, 2)
    SimpleWorker([queue], connection=client).work(burst=True)
    client.close()
    return {"failed": failed.id, "finished": done.id}


@contextmanager
def served(command: list[str], url: str, log: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`python cli.py COMMAND` with REDIS_URL=url, its output to `log`, until `url` answers."""
    monkeypatch.setenv("REDIS_URL", url)
    with log.open("wb") as output:
        process = start_python("cli.py", *command, stdout=output, stderr=subprocess.STDOUT)

        def up() -> bool:
            try:
                return bool(httpx.get(url_of(command), timeout=2).status_code)
            except httpx.TransportError:
                return process.poll() is not None

        try:
            wait_until(up, what=" ".join(command))
            assert process.poll() is None, log.read_text()
            yield
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(20)


def url_of(command: list[str]) -> str:
    port = command[command.index("--port") + 1]
    return f"http://127.0.0.1:{port}" + ("/metrics" if command[0] == "metrics" else "/")


def everything_shown(base: str, jobs: dict[str, str]) -> dict[str, httpx.Response]:
    """Every page and JSON the dashboard serves, error pages included."""
    paths = [
        "/",
        "/0/view/queues",
        "/0/view/workers",
        "/0/view/jobs",
        "/0/view/jobs/default/failed/8/asc/1",
        f"/0/view/job/{jobs['failed']}",
        f"/0/view/job/{jobs['finished']}",
        "/0/data/queues.json",
        "/0/data/workers.json",
        "/0/data/jobs/default/failed/8/asc/1.json",
        "/0/data/jobs/default/finished/8/asc/1.json",
        f"/0/data/job/{jobs['failed']}.json",
        f"/0/data/job/{jobs['finished']}.json",
        "/0/view/job/no-such-job",  # errors: a 500 of rq-dashboard's, logged with its traceback
        "/1/view/queues",
        "/no-such-page",
        "/static/js/jquery-3.5.1.min.js",
    ]
    return {path: httpx.get(base + path, follow_redirects=True, timeout=10) for path in paths}


def assert_hidden(secret: str, responses: dict[str, httpx.Response], log: Path) -> None:
    for path, response in responses.items():
        assert secret not in response.text, path
        assert not [value for value in response.headers.values() if secret in value], path
    assert secret not in log.read_text(errors="replace")


@pytest.mark.parametrize("form", ["query", "userinfo", "user-and-password", "unix-socket"])
def test_the_dashboard_never_shows_the_password(
    form: str,
    locked_redis: LockedRedis,
    planted: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = locked_redis.urls(PASSWORD)[form]
    port = str(free_port())
    log = tmp_path / "dashboard.log"
    with served(["dashboard", "--port", port], url, log, monkeypatch):
        base = f"http://127.0.0.1:{port}"
        shown = everything_shown(base, planted)
        time.sleep(0.2)  # the log lines of the last requests
    assert_hidden(PASSWORD, shown, log)
    assert shown["/"].status_code == 200 and shown["/0/data/queues.json"].status_code == 200
    assert "default" in shown["/0/data/queues.json"].text  # it did reach the server, with the password
    assert "boom" in shown[f"/0/data/job/{planted['failed']}.json"].text
    assert "***" in shown["/"].text  # the URL is shown (its menu of Redis instances), the password hidden


@pytest.mark.parametrize("form", ["query", "userinfo"])
def test_a_wrong_password_is_not_shown_either(
    form: str, locked_redis: LockedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = locked_redis.urls(WRONG)[form]
    port = str(free_port())
    log = tmp_path / "dashboard.log"
    with served(["dashboard", "--port", port], url, log, monkeypatch):
        shown = everything_shown(f"http://127.0.0.1:{port}", {"failed": "x", "finished": "y"})
        time.sleep(0.2)
    assert_hidden(WRONG, shown, log)
    down = shown["/0/data/queues.json"]
    assert down.status_code == 503 and "Redis is not reachable at redis://" in down.text
    assert "***" in down.text


@pytest.mark.parametrize("form", ["query", "userinfo", "unix-socket"])
def test_the_metrics_never_show_the_password(
    form: str,
    locked_redis: LockedRedis,
    planted: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for password in (PASSWORD, WRONG):
        url = locked_redis.urls(password)[form]
        port = str(free_port())
        log = tmp_path / f"metrics-{password[:2]}.log"
        with served(["metrics", "--port", port], url, log, monkeypatch):
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
            other = httpx.get(f"http://127.0.0.1:{port}/no-such-path")
        if password == PASSWORD:
            assert (
                scraped.status_code == 200
                and 'rqkit_queue_jobs{queue="default",state="failed"} 1.0' in scraped.text
            )
        else:
            assert scraped.status_code == 503 and "Redis is not reachable at " in scraped.text
            assert "***" in scraped.text
        assert_hidden(password, {"/metrics": scraped, "/no-such-path": other}, log)
