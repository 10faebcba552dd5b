"""Job-run metrics survive a Redis outage: kept on the host's disk while Redis is away, added when it
answers (by the next run, or a scrape), none twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError

from config import get_settings
from jobs import enqueue
from jobs.metrics_spool import send
from jobs.runtime import BUCKETS, RUNS, SECONDS, metrics_spool, run_counts
from launcher.redis_server import RedisServer, free_port
from launcher.stack import WORKER_ARGS
from ops.metrics import ToolkitCollector
from ops.outcomes import wait_for
from tests.support import blocked_clients, wait_until


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and start again on the same data, and a var dir."""
    server = RedisServer(free_port(), tmp_path / "redis").start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("RQKIT_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield server
    server.stop()


def scraped(connection: Redis, spool: Path) -> dict[str, float]:
    """The job-run samples a scrape of the exporter shows, as name{label values, by label name}."""
    families = ToolkitCollector(connection, spool).job_metrics()
    return {
        f"{sample.name}{{{','.join(value for _, value in sorted(sample.labels.items()))}}}": sample.value
        for family in families
        for sample in family.samples
    }


def test_counts_kept_through_an_outage_are_added_once_by_a_scrape(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    connection = Redis.from_url(own_redis.url)
    spool = tmp_path / "spool"
    own_redis.stop()
    for seconds in (0.2, 2.0, 0.3):  # three runs while Redis is away
        with pytest.raises(ConnectionError):
            send(connection, run_counts("sleep", "default", True, seconds), spool)
    assert len(list(spool.glob("*.json"))) == 1  # merged: the spool grows with kinds of job, not runs

    own_redis.start()
    samples = scraped(connection, spool)
    assert samples["rqkit_job_runs_total{sleep,succeeded,default}"] == 3
    assert samples["rqkit_job_duration_seconds_count{sleep}"] == 3
    assert samples["rqkit_job_duration_seconds_sum{sleep}"] == pytest.approx(2.5)
    assert samples["rqkit_job_duration_seconds_bucket{sleep,0.5}"] == 2
    assert not spool.exists()
    assert scraped(connection, spool) == samples  # added once: a second scrape adds nothing


@pytest.mark.slow
def test_a_run_that_ends_while_redis_is_away_is_counted_when_it_is_back(
    own_redis: RedisServer, processes: Any, tmp_path: Path
) -> None:
    """A work-horse finishes its job while Redis is stopped: its metrics wait in the spool (one warning
    line), and the next run recorded on the host adds them; both runs count, once each."""
    connection = Redis.from_url(own_redis.url)
    log = tmp_path / "worker.log"
    args = [arg for arg in WORKER_ARGS if arg != "--with-scheduler"]  # (RQ's scheduler dies of an outage)
    processes("-m", "rq.cli", *args, "default", log=log)
    wait_until(lambda: blocked_clients(connection), what="the worker")
    job = enqueue("sleep", 2)
    wait_until(lambda: job.get_status(refresh=True) == "started", what="the job to start")
    own_redis.stop()
    spool = metrics_spool(get_settings().var_dir)
    wait_until(lambda: list(spool.glob("*.json")), 20, "the run's metrics in the spool")

    own_redis.start()
    assert wait_for(job, timeout=60).status == "finished"
    assert wait_for(enqueue("sleep", 0), timeout=60).status == "finished"
    assert int(connection.hget(RUNS, "sleep\tdefault\tsucceeded") or 0) == 2
    assert int(connection.hget(SECONDS, "sleep\tcount") or 0) == 2
    assert float(connection.hget(SECONDS, "sleep\tsum") or 0) >= 2
    assert int(connection.hget(BUCKETS, "sleep\t5.0") or 0) == 2
    assert not spool.exists()
    assert "Redis took no metrics for sleep (" in log.read_text() and "Traceback" not in log.read_text()
