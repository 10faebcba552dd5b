"""`BatchWorker`: a work-horse runs up to `horse_jobs` jobs, claiming each next one itself, and is replaced
after the last, after a time-out, once it has grown `horse_growth_mb`, or when it dies, which fails only
the job it was running; RQ's semantics (get_current_job, failures, stop commands, warm stop) hold for
the jobs it claimed. `up` starts the worker class of each queue's mode (`worker_modes`)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any, cast

import pytest
import rq
from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus

from config import ConfigError, get_settings, load_settings
from launcher.redis_server import free_port
from launcher.stack import Stack
from tests import compat_jobs
from tests.support import wait_until, work_horses
from workers import BatchWorker
from workers.fork_server import LOWEST, may_raise_priority

WORKER = ("-m", "rq.cli", "worker", "-c", "config.rq", "-w", "workers.BatchWorker", "default")


def run(connection: Redis, monkeypatch: pytest.MonkeyPatch, horse_jobs: int, *calls: tuple) -> list[Job]:
    """Enqueue the calls (function, args, options), drain them with one BatchWorker; the jobs."""
    monkeypatch.setenv("RQKIT_HORSE_JOBS", str(horse_jobs))
    get_settings.cache_clear()
    queue = Queue("default", connection=connection)
    jobs = [queue.enqueue(function, *args, **options) for function, args, options in calls]
    BatchWorker(["default"], connection=connection).work(burst=True)
    return [Job.fetch(job.id, connection=connection) for job in jobs]


def enqueue(connection: Redis, *calls: tuple) -> list[Job]:
    queue = Queue("default", connection=connection)
    return [queue.enqueue(function, *args) for function, *args in calls]


def running(connection: Redis, job: Job) -> bool:
    """Whether `job` (a compat_jobs.wait_for_a_command) has begun its wait."""
    return connection.get(f"compat:running:{job.id}") is not None


def test_a_horse_runs_n_jobs_then_a_fresh_one_takes_over(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = run(connection, monkeypatch, 3, *[(compat_jobs.pid, (), {})] * 7)
    assert [job.get_status() for job in jobs] == ["finished"] * 7
    pids = [cast(int, job.return_value()) for job in jobs]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert os.getpid() not in pids
    for pid in set(pids):  # none left behind: the last one waiting was stopped with the worker
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_each_job_of_a_batch_sees_its_own_id_in_the_environment(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RQ_JOB_ID", raising=False)  # an in-process worker's test before this one sets it
    jobs = run(connection, monkeypatch, 100, *[(compat_jobs.rq_environment, (), {})] * 3)
    workers = {cast(tuple, job.return_value())[0] for job in jobs}
    assert len(workers) == 1 and None not in workers
    assert [cast(tuple, job.return_value())[1] for job in jobs] == [job.id for job in jobs]
    assert "RQ_JOB_ID" not in os.environ  # set in the horses only


def test_a_batch_horse_and_its_jobs_own_client_each_take_over_a_connection_the_worker_keeps(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A horse's claims and a job's own client (connecting first) each take over one the worker keeps,
    handed on from horse to horse (two sets when a horse is forked while a batch runs): a fresh horse opens
    none."""
    kwargs = connection.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/{int(kwargs.get('db') or 0)}"
    before = connection.info("stats")["total_connections_received"]
    jobs = run(connection, monkeypatch, 3, *[(compat_jobs.with_own_client, (url, [["PING"]]), {})] * 9)
    opened = connection.info("stats")["total_connections_received"] - before
    assert [cast(tuple, job.return_value())[1] for job in jobs] == [[True]] * 9
    assert len({cast(tuple, job.return_value())[0] for job in jobs}) <= 2  # a connection of each set
    # The worker's own (RQ's command listener among them) and two sets of two it keeps; each horse's claims
    # opened a connection of their own, and each job's client another, when the worker kept none.
    assert opened <= 6, opened


@pytest.mark.skipif(not may_raise_priority(), reason="this process may not raise its priority again")
def test_the_next_horse_is_forked_while_a_batch_runs_at_the_lowest_priority_and_runs_its_jobs_at_ours(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = run(connection, monkeypatch, 2, *[(compat_jobs.priority_and_siblings, (0.2,), {})] * 4)
    results = [cast(tuple, job.return_value()) for job in jobs]
    (first, _, _), (again, _, ahead), (second, _, _), (fourth, _, _) = results
    assert first == again != second == fourth
    assert ahead == {second: LOWEST}  # forked during the first batch, waiting at the lowest priority
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert {nice for _, nice, _ in results} == {ours} != {LOWEST}


def test_a_failure_keeps_the_horse_a_time_out_or_a_crash_replaces_it(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = [
        (compat_jobs.pid, (), {}),
        (compat_jobs.fail, ("boom",), {}),
        (compat_jobs.pid, (), {}),
        (compat_jobs.sleep, (3,), {"job_timeout": 1}),
        (compat_jobs.keep_in_meta, (), {}),
        (compat_jobs.pid, (), {}),
        (compat_jobs.crash, (), {}),
        (compat_jobs.pid, (), {}),
    ]
    first, failed, after_failure, timed_out, meta, after_time_out, crashed, last = run(
        connection, monkeypatch, 100, *calls
    )
    assert [job.get_status() for job in (first, after_failure, meta, after_time_out, last)] == [
        "finished"
    ] * 5
    assert [job.get_status() for job in (failed, timed_out, crashed)] == ["failed"] * 3
    assert "JobTimeoutException" in str(timed_out.latest_result().exc_string)  # type: ignore[union-attr]
    assert "Work-horse terminated unexpectedly" in str(crashed.latest_result().exc_string)  # type: ignore[union-attr]
    assert meta.meta["seen_by"] == meta.id  # RQ's get_current_job in a job the horse claimed
    pids = [
        first.return_value(),
        after_failure.return_value(),
        after_time_out.return_value(),
        last.return_value(),
    ]
    assert pids[0] == pids[1] != pids[2] != pids[3] != pids[0]


def test_a_horse_that_grew_too_much_is_replaced_after_its_job(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQKIT_HORSE_GROWTH_MB", "20")
    small, big, after_big, last = run(
        connection,
        monkeypatch,
        100,
        (compat_jobs.hold, (1,), {}),
        (compat_jobs.hold, (40,), {}),
        (compat_jobs.pid, (), {}),
        (compat_jobs.pid, (), {}),
    )
    assert small.return_value() == big.return_value() != after_big.return_value() == last.return_value()


@pytest.mark.slow
def test_a_horse_killed_mid_job_fails_only_that_job(connection: Redis, processes: Any) -> None:
    """The victim is a job the horse claimed itself, which the worker knows from the shared slot."""
    jobs = enqueue(connection, (compat_jobs.pid,), (compat_jobs.pid,), (compat_jobs.wait_for_a_command, 30))
    first, second, victim = jobs
    worker = processes(*WORKER)
    wait_until(lambda: running(connection, victim), what="the long job to start")
    horses = work_horses(worker.pid)
    assert first.return_value(refresh=True) in horses  # the same horse runs them all
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: victim.get_status(refresh=True) == JobStatus.FAILED, what="the job to fail")
    assert "Work-horse terminated unexpectedly" in str(victim.latest_result().exc_string)  # type: ignore[union-attr]
    assert [job.get_status(refresh=True) for job in (first, second)] == ["finished"] * 2
    after = enqueue(connection, *[(compat_jobs.pid,)] * 3)
    wait_until(lambda: all(job.get_status(refresh=True) == JobStatus.FINISHED for job in after))
    assert (
        len({job.return_value() for job in after}) == 1 and not {job.return_value() for job in after} & horses
    )


@pytest.mark.slow
def test_a_stop_command_stops_a_job_the_horse_claimed(connection: Redis, processes: Any) -> None:
    first, victim = enqueue(connection, (compat_jobs.pid,), (compat_jobs.wait_for_a_command, 30))
    processes(*WORKER)
    wait_until(lambda: running(connection, victim), what="the long job to start")
    send_stop_job_command(connection, victim.id)
    wait_until(lambda: victim.get_status(refresh=True) == JobStatus.STOPPED, what="the job to stop")
    assert first.get_status(refresh=True) == JobStatus.FINISHED
    (follow,) = enqueue(connection, (compat_jobs.add, 1, 2))
    wait_until(lambda: follow.get_status(refresh=True) == JobStatus.FINISHED, what="the worker goes on")


@pytest.mark.slow
def test_a_warm_stop_ends_the_batch_after_the_running_job(connection: Redis, processes: Any) -> None:
    first, slow, *rest = enqueue(
        connection,
        (compat_jobs.pid,),
        (compat_jobs.wait_for_a_command, 2),
        (compat_jobs.pid,),
        (compat_jobs.pid,),
    )
    worker = processes(*WORKER)
    wait_until(lambda: running(connection, slow), what="the slow job to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert [job.get_status(refresh=True) for job in (first, slow)] == ["finished"] * 2
    assert [job.get_status(refresh=True) for job in rest] == ["queued"] * 2
    assert not rq.Worker.all(connection=connection)


def test_up_starts_the_worker_class_of_each_queues_mode() -> None:
    settings = load_settings({**os.environ, "RQKIT_WORKER_MODES": "images=batch,maintenance=in-process"})
    out = io.StringIO()
    stack = Stack(settings, 2, scheduler=False, dashboard=False, mail=False, out=out)
    commands = [child.command(1) for child in stack.commands()]
    classes = [command[command.index("-w") + 1] for command in commands]
    assert (
        classes
        == ["workers.BatchWorker"] * 2 + ["workers.ForkingWorker"] * 2 + ["workers.InProcessWorker"] * 2
    )
    assert [command[command.index("-S") + 2 : command.index("-n")] for command in commands[::2]] == [
        ["images"],
        ["email", "api", "default"],
        ["maintenance"],
    ]
    stack.print_summary()
    assert out.getvalue().count("workers    2 x rq worker") == 3
    default = Stack(load_settings(), 2, scheduler=False, dashboard=False, mail=False).commands()
    assert [child.command(1)[-4:-2] for child in default] == [["-S", "pickle"]] * 2  # every queue, as before


@pytest.mark.slow
def test_up_runs_each_queue_in_its_mode(connection: Redis, processes: Any, tmp_path: Path) -> None:
    env = {
        "RQKIT_WORKER_MODES": "images=batch,maintenance=in-process",
        "RQKIT_SMTP_SINK_PORT": str(free_port()),
    }
    up = processes(
        "cli.py", "up", "--workers", "1", "--no-scheduler", "--no-dashboard", env=env, log=tmp_path / "up.log"
    )
    wait_until(lambda: len(rq.Worker.all(connection=connection)) == 3, what="three workers", timeout=60)
    queues = {name: Queue(name, connection=connection) for name in ("images", "maintenance", "default")}
    jobs = {name: [queue.enqueue(compat_jobs.pid) for _ in range(2)] for name, queue in queues.items()}
    done = [job for pair in jobs.values() for job in pair]
    wait_until(lambda: all(job.get_status(refresh=True) == JobStatus.FINISHED for job in done), timeout=60)
    pids = {name: [job.return_value() for job in pair] for name, pair in jobs.items()}
    workers = {tuple(worker.queue_names()): worker.pid for worker in rq.Worker.all(connection=connection)}
    assert pids["images"][0] == pids["images"][1] != workers[("images",)]  # one horse, two jobs
    assert pids["maintenance"] == [workers[("maintenance",)]] * 2  # in the worker itself
    assert pids["default"][0] != pids["default"][1]  # a horse per job
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0, (tmp_path / "up.log").read_text()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RQKIT_HORSE_JOBS": "0"}, "RQKIT_HORSE_JOBS: must be at least 1"),
        ({"RQKIT_HORSE_GROWTH_MB": "-1"}, "RQKIT_HORSE_GROWTH_MB: must be at least 1"),
        (
            {"RQKIT_WORKER_MODES": "images=bulk"},
            "'images=bulk': the mode must be one of fork, batch, in-process",
        ),
        ({"RQKIT_WORKER_MODES": "imgs=batch"}, "'imgs=batch': no queue 'imgs' in RQKIT_QUEUES"),
        ({"RQKIT_WORKER_MODES": "images"}, "'images' is not queue=mode"),
        ({"RQKIT_WORKER_MODES": "images=batch,images=fork"}, "queue 'images' has two modes"),
    ],
)
def test_bad_worker_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({**os.environ, **env})


def test_worker_modes_come_from_the_config_file_too(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('worker_modes = ["images=batch"]\nhorse_jobs = 50\n')
    settings = load_settings({**os.environ, "RQKIT_CONFIG": str(config)})
    assert (settings.worker_modes, settings.horse_jobs) == (("images=batch",), 50)
