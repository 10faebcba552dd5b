"""A real redis-server for the session, a clean database per test, and in-process or real workers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from rq import SimpleWorker
from sqlalchemy import Engine

from config import get_settings
from jobs import content
from launcher.redis_server import RedisServer, free_port
from tests.support import start_python
from workers import InProcessWorker

CLEARED = ("REDIS_URL", "RQ_REDIS_URL", "DATABASE_URL", "RQ_CONFIG")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def toolkit_env(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Point every setting at the test server and a private var dir, for this process and its children."""
    config_file = tmp_path_factory.mktemp("config") / "empty.toml"
    config_file.write_text("")
    env = {
        "REDIS_URL": redis_server.url,
        "RQKIT_VAR_DIR": str(tmp_path_factory.mktemp("var")),
        "RQKIT_CONFIG": str(config_file),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in [*CLEARED, *(n for n in os.environ if n.startswith("RQKIT_"))]:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        yield env
    get_settings.cache_clear()


@pytest.fixture
def connection(redis_server: RedisServer) -> Iterator[Redis]:
    """A client of the session's server, flushed before each test."""
    client = Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads settings from its own (monkeypatched) environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(params=[SimpleWorker, InProcessWorker], ids=["rq", "toolkit"])
def run_jobs(connection: Redis, request: pytest.FixtureRequest) -> Callable[[], None]:
    """Run every queued job in-process, then return: each test that uses it runs twice, under RQ's burst
    SimpleWorker and under the toolkit's InProcessWorker, which must give the same outcomes."""

    def run() -> None:
        request.param(list(get_settings().queues), connection=connection).work(burst=True)

    return run


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A fresh SQLite content database for one test, also used by workers started from it."""
    url = f"sqlite:///{tmp_path / 'content.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return content.content_engine(url)


@pytest.fixture
def start_worker(connection: Redis) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a real `rq worker -c config.rq` from the repo root; stopped at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*queues: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        command = ["-m", "rq.cli", "worker", "-c", "config.rq", *queues]
        process = start_python(
            *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()  # warm shutdown; RQ can hang in it (rq#1613), so not for long
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python ARGS` (rqscheduler, `python -m scheduler`, rq worker) in its own session, with
    RQ_REDIS_URL set as the bare rqscheduler reads it; each is killed with its children at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {"RQ_REDIS_URL": os.environ["REDIS_URL"], **(env or {})}
        process = start_python(
            *args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with suppress(ProcessLookupError):  # a test may have stopped it already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Media:
    """A private media root (the current directory) and thumbnails root."""

    root: Path
    thumbs: Path

    def output(self, size: int, relative: str) -> Path:
        return self.thumbs / str(size) / relative


@pytest.fixture
def media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Media:
    root, thumbs = tmp_path / "media", tmp_path / "thumbs"
    root.mkdir()
    monkeypatch.setenv("RQKIT_MEDIA_ROOT", str(root))
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", str(thumbs))
    monkeypatch.chdir(root)
    return Media(root, thumbs)
