"""`up`'s parts that need no running stack: the restart back-off and the children's environment."""

from __future__ import annotations

import os

import pytest

from config.settings import load_settings
from launcher.children import LONGEST_DELAY, STEADY_AFTER, Restarts
from launcher.stack import Stack


def test_restarts_wait_twice_as_long_after_each_death_in_a_row_up_to_a_cap() -> None:
    restarts = Restarts()
    restarts.started(0.0)
    delays = []
    now = 0.0
    for _ in range(8):
        now += 2.0  # dies two seconds after each start
        delays.append(restarts.died(now))
        assert not restarts.is_due(now) and restarts.is_due(now + delays[-1])
        restarts.started(now + delays[-1])
        now += delays[-1]
    assert delays == [1, 2, 4, 8, 16, LONGEST_DELAY, LONGEST_DELAY, LONGEST_DELAY]
    assert restarts.deaths == 8


def test_a_steady_run_ends_the_row_of_deaths() -> None:
    restarts = Restarts()
    restarts.started(0.0)
    assert [restarts.died(t) for t in (1.0, 2.0, 3.0)] == [1, 2, 4]
    restarts.started(10.0)
    assert restarts.died(10.0 + STEADY_AFTER) == 1 and restarts.deaths == 1


@pytest.mark.parametrize(
    ("url", "rq_url"),
    [
        ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
        ("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0", None),
    ],
    ids=["redis", "sentinel"],
)
def test_children_get_rq_redis_url_only_where_stock_rq_can_read_it(
    url: str, rq_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock rq reads RQ_REDIS_URL with Redis.from_url, which takes no Sentinel URL (config.rq gives it a
    SENTINEL dict instead): a Sentinel URL's children get none, not even one `up` inherited."""
    monkeypatch.setenv("RQ_REDIS_URL", "redis://127.0.0.1:1/0")
    env = Stack(load_settings({"REDIS_URL": url, "RQKIT_CONFIG": "/dev/null"}), workers=1).child_env()
    assert env["REDIS_URL"] == url
    assert env.get("RQ_REDIS_URL") == rq_url


@pytest.mark.parametrize(
    ("environment", "workers", "pinned"),
    [
        ({}, 2, True),
        ({"RQKIT_WORKER_MODES": "b=in-process"}, 2, True),
        ({}, 3, False),
        ({}, 1, False),
        ({"RQKIT_WORKER_MODES": "b=in-process"}, 1, False),
        ({"RQKIT_PIN_WORKERS": "false"}, 2, False),
    ],
    ids=["one-per-cpu", "one-per-cpu-each-mode", "more-than-cpus", "fewer-than-cpus", "one-a-mode", "off"],
)
def test_workers_run_one_per_cpu_only_where_there_is_one_per_cpu(
    environment: dict[str, str], workers: int, pinned: bool
) -> None:
    """With the CPUs this process may use cut to two (a container's cpuset, say), each mode's workers go
    one to each CPU where they are as many as the CPUs; more or fewer are the kernel's to place, as are
    the other children."""
    two = sorted(os.sched_getaffinity(0))[:2]
    if len(two) < 2:
        pytest.skip("one CPU: nothing to pin")
    settings = load_settings({**environment, "RQKIT_CONFIG": "/dev/null", "RQKIT_QUEUES": "a,b"})
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, two)
    try:
        children = Stack(settings, workers=workers).commands()
    finally:
        os.sched_setaffinity(0, allowed)
    cpus = [child.cpu for child in children if child.worker]
    modes = 2 if "RQKIT_WORKER_MODES" in environment else 1
    assert cpus == (two * modes if pinned else [None] * workers * modes)
    assert all(child.cpu is None for child in children if not child.worker)
