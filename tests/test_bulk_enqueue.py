"""Bulk enqueue (submit_many, jobs.bulk): the jobs it writes are the ones RQ's own enqueue_many writes,
field by field and in both serializers; stock RQ workers run them; refusals and outages as before."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ResponseError
from rq import Queue, SimpleWorker
from rq.job import Job

from config import RedisUnavailable, get_settings, rq_classes
from jobs import JOBS, submit_many
from jobs.bulk import new_ids
from jobs.errors import JobInputError
from jobs.submission import BULK_BATCH
from launcher.redis_server import free_port
from ops.outcomes import wait_for
from tests.conftest import Media
from tests.pictures import photo
from tests.support import start_python, wait_until

NOBODY_HOME = f"redis://127.0.0.1:{free_port()}/0"
TIMESTAMPS = ("created_at", "enqueued_at")
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
COMPARED = (
    "func_name",
    "args",
    "kwargs",
    "meta",
    "timeout",
    "result_ttl",
    "failure_ttl",
    "ttl",
    "retries_left",
    "retry_intervals",
    "enqueue_at_front_on_retry",
    "description",
    "origin",
    "data",
    "group_id",
)


@pytest.fixture(params=["pickle", "json"])
def serializer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RQKIT_SERIALIZER", request.param)
    get_settings.cache_clear()
    yield request.param


def rq_enqueue_many(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], connection: Redis) -> Job:
    """One job as RQ's own enqueue_many writes it with the registry's options (submit_many before bulk)."""
    spec = JOBS[name]
    queue = rq_classes.Queue(spec.queue, connection=connection)
    data = Queue.prepare_data(spec.func, args, kwargs, **spec.job_options(args, kwargs))
    with connection.pipeline() as pipe:
        [job] = queue.enqueue_many([data], pipeline=pipe)
        pipe.execute()
    return job


def stored(connection: Redis, job_id: str) -> dict[Any, Any]:
    return connection.hgetall(Job.key_for(job_id))


def same_fields(job: Job, reference: Job) -> None:
    for name in COMPARED:
        assert getattr(job, name) == getattr(reference, name), name
    assert job.get_status(refresh=False) == reference.get_status(refresh=False) == "queued"


@pytest.mark.parametrize(
    ("name", "calls", "kwargs"),
    [
        ("sleep", [(0,), (1.5,), (3600,)], {}),
        ("sleep", [()], {"seconds": 2}),
        ("prune-tags", [(), ()], {}),  # retries from the policy
        ("thumbnail", [("a.jpg",), ("b c/ü.png",)], {"sizes": [64, 128], "format": "webp"}),
    ],
)
def test_the_hash_is_the_one_rq_writes(
    serializer: str,
    media: Media,
    connection: Redis,
    name: str,
    calls: list[tuple[Any, ...]],
    kwargs: dict[str, Any],
) -> None:
    (media.root / "b c").mkdir()
    photo(media.root / "a.jpg", (40, 30))
    photo(media.root / "b c" / "ü.png", (40, 30))
    submitted = submit_many(name, calls, kwargs, connection=connection)
    assert submitted.refused == [] and len(submitted.jobs) == len(calls)
    queue = rq_classes.Queue(JOBS[name].queue, connection=connection)
    assert queue.job_ids == submitted.jobs.ids
    assert connection.smembers("rq:queues") == {queue.key.encode()}
    for args, job_id, job in zip(calls, submitted.jobs.ids, submitted.jobs, strict=True):
        reference = rq_enqueue_many(name, args, kwargs, connection)
        ours, theirs = stored(connection, job_id), stored(connection, reference.id)
        for field in TIMESTAMPS:
            assert TIMESTAMP.fullmatch(ours.pop(field.encode())), field
            theirs.pop(field.encode())
        assert ours == theirs
        assert connection.ttl(Job.key_for(job_id)) == -1
        fetched, fetched_reference = (
            rq_classes.Job.fetch(i, connection=connection) for i in (job_id, reference.id)
        )
        same_fields(fetched, fetched_reference)
        assert fetched.created_at <= fetched.enqueued_at  # type: ignore[operator]
        # The Job objects handed back are the ones RQ's enqueue_many hands back, and match Redis.
        assert job.id == job_id and job.key == Job.key_for(job_id)
        same_fields(job, reference)
        assert (job.created_at, job.enqueued_at) == (fetched.created_at, fetched.enqueued_at)
        assert job.serializer is reference.serializer and job.connection is connection
    assert len({id(job.meta) for job in submitted.jobs}) == len(calls)  # each its own, as from RQ


def test_many_batches_keep_their_order(connection: Redis) -> None:
    count = 2 * BULK_BATCH + 3
    submitted = submit_many("sleep", [(n % 60,) for n in range(count)])
    assert len(set(submitted.jobs.ids)) == count
    assert Queue("default", connection=connection).job_ids == submitted.jobs.ids
    assert len(connection.keys("rq:job:*")) == count
    middle = slice(BULK_BATCH - 1, BULK_BATCH + 1)  # the end of a batch and the start of the next
    jobs = rq_classes.Job.fetch_many(submitted.jobs.ids[middle], connection=connection)
    assert [job.args for job in jobs if job] == [((BULK_BATCH - 1) % 60,), (BULK_BATCH % 60,)]
    assert [job.id for job in submitted.jobs[middle]] == submitted.jobs.ids[middle]
    last = submitted.jobs[-1]
    assert last is submitted.jobs[count - 1] and last.args == ((count - 1) % 60,)
    with pytest.raises(IndexError):
        submitted.jobs[count]


def test_a_stock_simple_worker_runs_them(serializer: str, connection: Redis) -> None:
    seconds = [0, 0.01, 0.05, 0]
    submitted = submit_many("sleep", [(s,) for s in seconds])
    worker = SimpleWorker(["default"], connection=connection, serializer=rq_classes.configured_serializer())
    assert worker.work(burst=True)
    for job, s in zip(submitted.jobs, seconds, strict=True):
        assert job.get_status() == "finished"
        assert job.return_value() == {"slept": s}


@pytest.mark.parametrize("flag", [[], ["-S", "rq.serializers.JSONSerializer"]])
def test_a_stock_rq_worker_process_runs_them(
    flag: list[str], monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    monkeypatch.setenv("RQKIT_SERIALIZER", "json" if flag else "pickle")
    get_settings.cache_clear()
    submitted = submit_many("sleep", [(0,), (0.02,)], queue="maintenance")
    worker = start_python(
        "-m", "rq.cli", "worker", "-c", "config.rq", "--burst", "--quiet", *flag, "maintenance"
    )
    assert worker.wait(60) == 0
    fetched = rq_classes.Job.fetch_many(submitted.jobs.ids, connection=connection)
    assert [(job.get_status(), job.return_value()) for job in fetched if job] == [
        ("finished", {"slept": 0}),
        ("finished", {"slept": 0.02}),
    ]


def test_a_waiting_worker_is_woken_by_them(connection: Redis, start_worker: Any) -> None:
    start_worker("default")
    wait_until(lambda: blocked(connection), what="the worker to wait for work")
    submitted = submit_many("sleep", [(0,)] * 3)
    assert [wait_for(job, timeout=30).status for job in submitted.jobs] == ["finished"] * 3


def blocked(connection: Redis) -> bool:
    return any(client["cmd"] in ("blpop", "blmove", "brpoplpush") for client in connection.client_list())


def test_a_failed_batch_raises_and_leaves_the_client_usable(connection: Redis) -> None:
    connection.config_set("maxmemory", 1)  # every write refused: OOM
    try:
        with pytest.raises(ResponseError, match="OOM"):
            submit_many("sleep", [(0,)] * (2 * BULK_BATCH), connection=connection)
    finally:
        connection.config_set("maxmemory", 0)
    assert connection.keys("rq:job:*") == []
    submitted = submit_many("sleep", [(0,)] * 3, connection=connection)
    assert Queue("default", connection=connection).job_ids == submitted.jobs.ids


def test_refused_calls_are_reported_and_nothing_of_theirs_is_written(connection: Redis) -> None:
    calls: list[tuple[Any, ...]] = [(1,), (-1,), ("5",), (2,), (), (1, 2), (float("nan"),), (3,)]
    submitted = submit_many("sleep", calls)
    assert [(repr(args), reason) for args, reason in submitted.refused] == [
        ("(-1,)", "sleep: SECONDS must be a number from 0 to 3600, got -1"),
        ("('5',)", "sleep: SECONDS must be a number from 0 to 3600, got '5'"),
        ("()", "sleep: missing a required argument: 'seconds'"),
        ("(1, 2)", "sleep: too many positional arguments"),
        ("(nan,)", "arguments: nan is not a JSON number"),
    ]
    assert [job.args for job in submitted.jobs] == [(1,), (2,), (3,)]
    assert Queue("default", connection=connection).job_ids == submitted.jobs.ids
    assert len(connection.keys("rq:job:*")) == 3


def test_everything_refused_writes_nothing(connection: Redis) -> None:
    submitted = submit_many("sleep", [(-1,)])
    assert len(submitted.jobs) == 0 and len(submitted.refused) == 1
    assert connection.keys("*") == []


def test_unique_jobs_and_unknown_queues_are_refused(connection: Redis) -> None:
    with pytest.raises(JobInputError, match="unique jobs are enqueued one at a time"):
        submit_many("word-count", [("comment",)])
    with pytest.raises(JobInputError, match="queue 'nope' is not configured"):
        submit_many("sleep", [(1,)], queue="nope")
    assert connection.keys("*") == []


def test_redis_away_is_redis_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", NOBODY_HOME)
    with pytest.raises(RedisUnavailable, match=f"not reachable at {NOBODY_HOME}"):
        submit_many("sleep", [(0,)] * (BULK_BATCH + 1))


def test_ids_are_random_version_4_uuids() -> None:
    ids = new_ids(10_000)
    assert len(set(ids)) == 10_000
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert {job_id[19] for job_id in ids} == set("89ab")
