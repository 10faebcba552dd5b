"""A Redis write is not code execution: the toolkit's workers run only the registry's job functions, the
schedule's trigger and what RQKIT_JOB_FUNCTIONS lists. A job naming anything else (its function or a
callback), written to Redis by a plain client, fails with a readable reason and nothing is imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Callback, Queue
from rq.serializers import DefaultSerializer, JSONSerializer

from config import get_settings
from ops.outcomes import wait_for
from workers import ForkingWorker, InProcessWorker

SERIALIZERS = {"pickle": DefaultSerializer, "json": JSONSerializer}


@pytest.fixture
def trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module `trapdoor` on the path that, once imported, leaves a file behind: its run() too."""
    (tmp_path / "trapdoor.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'imported')!r}).touch()\n"
        "def run(*args, **kwargs):\n"
        f"    Path({str(tmp_path / 'ran')!r}).touch()\n"
        "    return 'ran'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    yield tmp_path
    sys.modules.pop("trapdoor", None)


def enqueue_raw(connection: Redis, serializer: str, func: str, *args: object, **options: object) -> str:
    """What any client of the Redis can do: queue a job naming any function, in either serializer."""
    queue = Queue("default", connection=connection, serializer=SERIALIZERS[serializer])
    return queue.enqueue(func, *(args or ("touch /tmp/never",)), **options).id


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("worker_class", [InProcessWorker, ForkingWorker])
def test_a_job_naming_a_function_outside_the_registry_fails_unimported(
    connection: Redis, trap: Path, serializer: str, worker_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_SERIALIZER", serializer)
    monkeypatch.setenv("RQKIT_JOB_FUNCTIONS", "")
    get_settings.cache_clear()
    ids = [
        enqueue_raw(connection, serializer, "os.system"),
        enqueue_raw(connection, serializer, "trapdoor.run"),
        enqueue_raw(connection, serializer, "jobs.demo.sleep", 0, on_success=Callback("trapdoor.run")),
        enqueue_raw(connection, serializer, "subprocess.run"),
    ]
    worker_class(["default"], connection=connection).work(burst=True)

    queue = Queue("default", connection=connection, serializer=SERIALIZERS[serializer])
    failed = {job_id: queue.fetch_job(job_id) for job_id in ids}
    reasons = {job_id: job.latest_result().exc_string for job_id, job in failed.items()}  # type: ignore[union-attr]
    for job_id, reason in reasons.items():
        assert failed[job_id].get_status() == "failed"  # type: ignore[union-attr]
        assert "is not a job this worker runs" in reason and "RQKIT_JOB_FUNCTIONS" in reason
    assert "'os.system'" in reasons[ids[0]] and "callback 'trapdoor.run'" in reasons[ids[2]]
    assert not (trap / "imported").exists() and not (trap / "ran").exists()


def test_a_refused_job_is_not_retried(connection: Redis) -> None:
    from rq import Retry

    job_id = Queue("default", connection=connection).enqueue("os.getcwd", retry=Retry(max=3, interval=0)).id
    InProcessWorker(["default"], connection=connection).work(burst=True)
    outcome = wait_for(Queue("default", connection=connection).fetch_job(job_id), timeout=5)  # type: ignore[arg-type]
    assert outcome.status == "failed" and "not a job this worker runs" in (outcome.reason or "")
    assert len(list(Queue("default", connection=connection).fetch_job(job_id).results())) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("listed", ["trapdoor.run", "trapdoor.*", "*"])
def test_the_operators_own_functions_run_when_listed(
    connection: Redis, trap: Path, listed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_JOB_FUNCTIONS", listed)
    get_settings.cache_clear()
    job_id = enqueue_raw(connection, "pickle", "trapdoor.run")
    InProcessWorker(["default"], connection=connection).work(burst=True)
    assert Queue("default", connection=connection).fetch_job(job_id).return_value() == "ran"  # type: ignore[union-attr]


def test_a_module_pattern_reaches_no_deeper_than_its_module(
    connection: Redis, trap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trapdoor.*` allows trapdoor's functions, not `trapdoor.Path.touch` nor a module below it."""
    monkeypatch.setenv("RQKIT_JOB_FUNCTIONS", "trapdoor.*")
    get_settings.cache_clear()
    job_id = enqueue_raw(connection, "pickle", "trapdoor.Path.touch")
    InProcessWorker(["default"], connection=connection).work(burst=True)
    assert Queue("default", connection=connection).fetch_job(job_id).get_status() == "failed"  # type: ignore[union-attr]
    assert not (trap / "imported").exists()


def test_a_real_rq_worker_of_the_toolkit_refuses_what_a_plain_client_queued(
    connection: Redis, trap: Path
) -> None:
    """`rq worker -c config.rq -w workers.ForkingWorker --burst`, as `up` runs it (RQ passes its own
    job class): the JSON job naming os.system fails, the registry's job runs."""
    refused = enqueue_raw(connection, "pickle", "os.system")
    allowed = Queue("default", connection=connection).enqueue("jobs.demo.sleep", 0).id
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "-c",
            "config.rq",
            "-w",
            "workers.ForkingWorker",
            "--burst",
            "default",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    queue = Queue("default", connection=connection)
    assert queue.fetch_job(refused).get_status() == "failed"  # type: ignore[union-attr]
    assert queue.fetch_job(allowed).get_status() == "finished"  # type: ignore[union-attr]


def test_rqs_own_worker_with_the_toolkits_settings_module_refuses_it_too(
    connection: Redis, trap: Path
) -> None:
    """`rq worker -c config.rq -S json`, RQ's own worker class, as docs/configuration.md starts it in
    JSON mode: config.rq gates RQ's Job class in that process."""
    refused = enqueue_raw(connection, "json", "trapdoor.run")
    allowed = (
        Queue("default", connection=connection, serializer=JSONSerializer).enqueue("jobs.demo.sleep", 0).id
    )
    done = subprocess.run(
        [sys.executable, "-m", "rq.cli", "worker", "-c", "config.rq", "-S", "json", "--burst", "default"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    queue = Queue("default", connection=connection, serializer=JSONSerializer)
    assert queue.fetch_job(refused).get_status() == "failed"  # type: ignore[union-attr]
    assert "is not a job this worker runs" in queue.fetch_job(refused).latest_result().exc_string  # type: ignore[union-attr]
    assert queue.fetch_job(allowed).get_status() == "finished"  # type: ignore[union-attr]
    assert not (trap / "imported").exists()
