"""JSON mode end to end: with RQKIT_SERIALIZER=json, enqueue, a real worker, a real rqscheduler, the
CLI views, `rq info` and the dashboard all work, and Redis holds no pickle afterwards."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from config import get_settings, rq_classes
from jobs import enqueue
from launcher.dashboard import create_app
from ops.outcomes import wait_for
from scheduler import sync as schedule_store
from tests.support import python, run, run_json, wait_until

STOCK_SCHEDULER_ARGS = ("--job-class", "config.rq_classes.Job", "--queue-class", "config.rq_classes.Queue")
PICKLE = b"\x80"  # every pickle of protocol 2 and up starts with the PROTO opcode


def decodings(value: bytes) -> Iterator[bytes]:
    """`value` as stored, and as RQ's zlib and base64 wrappings would give it back."""
    yield value
    for step in (zlib.decompress, lambda v: base64.b64decode(v, validate=True)):
        try:
            inner = step(value)
        except (zlib.error, binascii.Error, ValueError):
            continue
        if inner and inner != value:
            yield from decodings(inner)


def pickled_fields(connection: Redis) -> list[str]:
    """Every `key field` of a job hash or result stream that holds a pickle."""
    found = []
    for key in connection.scan_iter("rq:*"):
        kind = connection.type(key)
        if kind == b"hash":
            fields = connection.hgetall(key).items()
        elif kind == b"stream":
            fields = [item for _, entry in connection.xrange(key) for item in entry.items()]
        else:
            continue
        for field, value in fields:
            if any(decoded.startswith(PICKLE) for decoded in decodings(value)):
                found.append(f"{key.decode()} {field.decode()}")
    return found


def test_the_detector_finds_pickle(connection: Redis, run_jobs: Any) -> None:
    """Without JSON mode the same check flags RQ's pickled data and results: it can fail."""
    job = enqueue("sleep", 0)
    run_jobs()
    found = pickled_fields(connection)
    assert f"rq:job:{job.id} data" in found and any(name.startswith(f"rq:results:{job.id}") for name in found)


@pytest.fixture
def json_mode(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "RQKIT_SERIALIZER": "json",
        "RQKIT_SCHEDULE": json.dumps({"tick": {"job": "sleep", "args": [0], "every": 1}}),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return env


def test_json_mode_end_to_end_writes_no_pickle(
    json_mode: dict[str, str], connection: Redis, processes: Any
) -> None:
    schedule_store.sync()
    # The stock rqscheduler, as the README runs it by hand in JSON mode (`up` runs `python -m scheduler`).
    processes("-m", "rq_scheduler.scripts.rqscheduler", *STOCK_SCHEDULER_ARGS, "-i", "1")
    processes("-m", "rq.cli", "worker", "-c", "config.rq", "-S", "json", "--with-scheduler")

    tagged = run_json("enqueue", "sleep", "0", "--tag", "batch:7")
    later = run_json("enqueue", "sleep", "0", "--in", "1s")
    broken = rq_classes.Queue("default", connection=connection).enqueue("jobs.demo.sleep", -1)
    slow = enqueue("sleep", 2)

    # While a job runs: the workers views (rq-dashboard's breaks here in JSON mode without our classes).
    wait_until(lambda: slow.get_status(refresh=True) == "started", what="the slow job to start")
    busy = run_json("workers")
    assert [worker["current_job"] for worker in busy] == [slow.id]
    dashboard = create_app(get_settings()).test_client()
    shown = dashboard.get("/0/data/workers.json", base_url="http://127.0.0.1:9181").get_json()
    assert shown["workers"][0]["current_job"]["job_id"] == slow.id
    info = python("-m", "rq.cli", "info", "-c", "config.rq")
    assert info.returncode == 0 and "1 workers" in info.stdout

    for job_id in (tagged["id"], later["id"], slow.id):
        assert wait_for(rq_classes.Job.fetch(job_id, connection=connection), timeout=30).status == "finished"
    wait_until(lambda: schedule_store.listing()[0]["last_outcome"] == "finished", what="a scheduled run")

    assert run_json("jobs", "show", tagged["id"])["result"] == {"slept": 0}
    assert [job["id"] for job in run_json("jobs", "list", "--tag", "batch:7")] == [tagged["id"]]
    assert run_json("failed", "list")[0]["count"] == 1
    assert run_json("failed", "requeue", broken.id)["requeued"] == [broken.id]
    wait_until(lambda: broken.get_status(refresh=True) == "failed", what="the requeued job to fail again")
    page = dashboard.get(f"/0/data/job/{broken.id}.json", base_url="http://127.0.0.1:9181").get_json()
    assert page["status"] == "failed" and "got -1" in page["exc_info"]
    assert run("info").exit_code == 0

    assert connection.keys("rq:job:*") and pickled_fields(connection) == []
