"""A real redis-server for the session, a clean database per test, and in-process or real workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from redis import Redis
from rq import SimpleWorker
from sqlalchemy import Engine

from config import get_settings
from jobs import content, objects
from jobs.runtime import metrics_spool
from launcher.redis_server import RedisServer, free_port
from tests.s3 import S3Store
from tests.support import start_python
from workers import InProcessWorker

pytest_plugins = ["tests.databases"]  # database_url: SQLite, PostgreSQL and MariaDB

CLEARED = ("REDIS_URL", "RQ_REDIS_URL", "DATABASE_URL", "RQ_CONFIG")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"), admin_commands=True).start()
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
        "RQKIT_JOB_FUNCTIONS": "tests.compat_jobs.*",  # the tests' own job functions, beside the registry's
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
def fresh_settings(toolkit_env: dict[str, str]) -> Iterator[None]:
    """Each test reads settings from its own (monkeypatched) environment, and finds no job-run counts
    that an earlier test's outage left in the spool (they would be added to this test's Redis)."""
    get_settings.cache_clear()
    shutil.rmtree(metrics_spool(Path(toolkit_env["RQKIT_VAR_DIR"])), ignore_errors=True)
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

    def start(
        *args: str, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`log`: a file for the process's output (else it is dropped)."""
        env = {"RQ_REDIS_URL": os.environ["REDIS_URL"], **(env or {})}
        with open(log or os.devnull, "wb") as output:
            process = start_python(
                *args, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
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


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    """A real S3-compatible store (SeaweedFS) on loopback for the session, with one bucket."""
    store = S3Store(tmp_path_factory.mktemp("s3"))
    store.start()
    store.bucket(BUCKET)
    yield store
    store.stop()


BUCKET = "rqkit"


@dataclass
class BucketMedia:
    """A private media root and thumbnails root as prefixes of the store's bucket."""

    store: S3Store
    media: str  # "t<id>/media/"
    thumbs: str  # "t<id>/thumbs/"

    def put(self, key: str, data: bytes, **options: Any) -> None:
        """An object under the media prefix."""
        self.store.client().put_object(Bucket=BUCKET, Key=self.media + key, Body=data, **options)

    def head(self, key: str) -> dict[str, Any]:
        """An object's HEAD, by its whole key."""
        return dict(self.store.client().head_object(Bucket=BUCKET, Key=key))

    def get(self, key: str) -> bytes:
        return bytes(self.store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, in order."""
        pages = self.store.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [entry["Key"] for page in pages for entry in page.get("Contents", [])]

    def output(self, size: int, relative: str) -> str:
        return f"{self.thumbs}{size}/{relative}"


@pytest.fixture
def bucket_media(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[BucketMedia]:
    """Media and thumbnails in the bucket, under prefixes of this test's own; the toolkit reaches the
    store through the environment, as an operator sets it."""
    test = f"t{uuid4().hex[:12]}/"
    found = BucketMedia(s3_store, f"{test}media/", f"{test}thumbs/")
    for name, value in s3_store.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RQKIT_MEDIA_ROOT", f"s3://{BUCKET}/{found.media}")
    monkeypatch.setenv("RQKIT_THUMBNAILS_DIR", f"s3://{BUCKET}/{found.thumbs}")
    monkeypatch.chdir(tmp_path)
    fresh_clients()
    yield found
    fresh_clients()


def fresh_clients() -> None:
    """The toolkit's S3 clients made afresh: a process reads its credentials once, as its first
    client is made, and a test may change them."""
    objects.session.cache_clear()
    objects._clients.clear()
