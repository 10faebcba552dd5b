"""Random programs of enqueues (now, at a past time, later; with dependencies, retries, failures and
time-outs), cancels, requeues, stop and kill commands and burst runs, each run once under RQ's workers
and once under the toolkit's: the jobs, their statuses, registries, results and every key must end
the same (tests/outcomes.py says what is compared)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue, Retry, SimpleWorker
from rq.command import send_kill_horse_command, send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from tests import compat_jobs
from tests.outcomes import snapshot
from workers import ForkingWorker, InProcessWorker

pytestmark = pytest.mark.slow

# kind -> (function, arguments, options); "stop" and "kill" jobs wait for the command sent them.
KINDS: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {
    "add": (compat_jobs.add, (2, 3), {}),
    "nothing": (compat_jobs.nothing, (), {"result_ttl": 0}),
    "fail": (compat_jobs.fail, ("boom",), {}),
    "time-out": (compat_jobs.sleep, (3,), {"job_timeout": 1}),
    "ask-again": (compat_jobs.ask_again, (1,), {}),
    "callbacks": (
        compat_jobs.add,
        (1, 1),
        {
            "on_success": rq.Callback(compat_jobs.record_success),
            "on_failure": rq.Callback(compat_jobs.record_failure),
        },
    ),
    "stop": (compat_jobs.wait_for_a_command, (), {}),
    "kill": (compat_jobs.wait_for_a_command, (), {}),
}
COMMANDED = ("stop", "kill")
# How long a commanded job sleeps: a horse is killed well before; an in-process job just ends (RQ's
# SimpleWorker has no horse to kill, and ignores both commands).
COMMANDED_SLEEP = {True: 10.0, False: 0.2}


@dataclass(frozen=True)
class Enqueue:
    kind: str
    when: str = "now"  # now, past (enqueue_at a minute ago), later (enqueue_in an hour)
    depends_on: int | None = None  # on the job made by the Nth Enqueue (modulo how many there are)
    retries: int = 0
    retry_interval: int = 0  # s; 60 leaves the retry scheduled past the run
    at_front: bool = False


@dataclass(frozen=True)
class Cancel:
    job: int


@dataclass(frozen=True)
class Requeue:
    job: int


@dataclass(frozen=True)
class Run:
    """A fresh worker works the queue in burst mode, with its scheduler (due scheduled jobs move first)."""


Step = Enqueue | Cancel | Requeue | Run

enqueues = st.builds(
    Enqueue,
    kind=st.sampled_from(list(KINDS)),
    when=st.sampled_from(["now", "now", "now", "past", "later"]),
    depends_on=st.none() | st.integers(0, 9),
    retries=st.sampled_from([0, 0, 1, 2]),
    retry_interval=st.sampled_from([0, 0, 60]),
    at_front=st.booleans(),
)
steps = st.one_of(
    enqueues, enqueues, st.builds(Cancel, st.integers(0, 9)), st.builds(Requeue, st.integers(0, 9))
)
programs = st.lists(
    st.lists(steps, min_size=1, max_size=6).map(lambda phase: [*phase, Run()]), min_size=1, max_size=3
).map(lambda phases: [step for phase in phases for step in phase])

EVERYTHING: list[Step] = [
    Enqueue("add"),
    Enqueue("fail", retries=2),
    Enqueue("add", depends_on=1),
    Enqueue("time-out", retries=1, retry_interval=60),
    Enqueue("stop", at_front=True),
    Enqueue("kill", retries=1),
    Enqueue("callbacks", when="past"),
    Enqueue("ask-again", when="later"),
    Enqueue("nothing"),
    Cancel(8),
    Run(),
    Requeue(1),
    Requeue(0),
    Cancel(2),
    Enqueue("fail", depends_on=0),
    Run(),
]


def enqueue(queue: Queue, step: Enqueue, made: list[str], forking: bool) -> str:
    function, args, options = KINDS[step.kind]
    options = dict(options, at_front=step.at_front)
    if step.kind in COMMANDED:
        args = (COMMANDED_SLEEP[forking],)
    if step.retries:
        options["retry"] = Retry(max=step.retries, interval=step.retry_interval)
    if step.depends_on is not None and made:
        options["depends_on"] = made[step.depends_on % len(made)]
    if step.when == "past":
        return queue.enqueue_at(datetime.now(UTC) - timedelta(minutes=1), function, *args, **options).id
    if step.when == "later":
        return queue.enqueue_in(timedelta(hours=1), function, *args, **options).id
    return queue.enqueue(function, *args, **options).id


@contextmanager
def commander(
    connection: Redis, worker: rq.worker.BaseWorker, commanded: dict[str, str], sent: dict[str, int]
) -> Iterator[None]:
    """While the block runs, send each commanded job ({id: "stop" or "kill"}) its command each time it
    starts a run (it counts its runs in compat:running:ID; `sent` counts the commands sent it so far)."""
    done = threading.Event()

    def send() -> None:
        while not done.wait(0.02):
            for job_id, kind in commanded.items():
                runs = int(connection.get(f"compat:running:{job_id}") or 0)
                if runs > sent.get(job_id, 0):
                    sent[job_id] = runs
                    if kind == "stop":
                        send_stop_job_command(connection, job_id)
                    else:
                        send_kill_horse_command(connection, worker.name)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)


def run_program(connection: Redis, worker_class: type[rq.worker.BaseWorker], program: list[Step]) -> Any:
    """Carry out `program` on a flushed database: what it left, and what each cancel and requeue got."""
    connection.flushdb()
    queue = Queue("default", connection=connection)
    forking = not issubclass(worker_class, (SimpleWorker, InProcessWorker))
    made: list[str] = []
    commanded: dict[str, str] = {}
    sent: dict[str, int] = {}
    said: list[str] = []
    workers: list[str] = []
    for step in program:
        if isinstance(step, Enqueue):
            made.append(enqueue(queue, step, made, forking))
            if step.kind in COMMANDED:
                commanded[made[-1]] = step.kind
        elif isinstance(step, Run):
            worker = worker_class([queue], connection=connection)
            with commander(connection, worker, commanded, sent):
                worker.work(burst=True, with_scheduler=True)
            workers.append(worker.name)
        elif made:
            job_id = made[step.job % len(made)]
            said.append(f"{step}: {act(queue, step, job_id)}")
    return snapshot(connection, {f"j{i}": job_id for i, job_id in enumerate(made)}, workers) | {"said": said}


def act(queue: Queue, step: Cancel | Requeue, job_id: str) -> str:
    """Cancel or requeue a job as a user would; what RQ said."""
    try:
        if isinstance(step, Cancel):
            Job.fetch(job_id, connection=queue.connection).cancel()
        else:
            queue.failed_job_registry.requeue(job_id)
    except (InvalidJobOperation, NoSuchJobError) as refused:
        return f"refused: {str(refused).replace(job_id, 'JOB')}"
    return "done"


@pytest.mark.parametrize(
    ("stock", "toolkit"),
    [(SimpleWorker, InProcessWorker), (rq.Worker, ForkingWorker)],
    ids=["in-process", "forking"],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(program=EVERYTHING)
@given(program=programs)
def test_a_random_program_ends_the_same_under_rq_and_the_toolkit(
    connection: Redis,
    stock: type[rq.worker.BaseWorker],
    toolkit: type[rq.worker.BaseWorker],
    program: list[Step],
) -> None:
    expected = run_program(connection, stock, program)
    got = run_program(connection, toolkit, program)
    for name, job in expected["jobs"].items():
        assert got["jobs"][name] == job, name
    assert got["said"] == expected["said"]
    assert got["workers"] == expected["workers"]
    assert [k for k in got["keys"] if k not in expected["keys"]] == []
    assert [k for k in expected["keys"] if k not in got["keys"]] == []


def test_the_program_that_does_everything_reaches_every_state(connection: Redis) -> None:
    """The fixed example above exercises what it claims: read back through RQ, under RQ's worker."""
    found = run_program(connection, rq.Worker, EVERYTHING)
    jobs = found["jobs"]
    statuses = [job.get("status") for job in jobs.values()]
    assert statuses == [
        *("finished", "failed", "canceled", "scheduled", "stopped"),
        *("failed", "finished", "scheduled", "canceled", "failed"),
    ]
    assert jobs["j1"]["retries_left"] == 0 and jobs["j3"]["registries"] == ["scheduled"]  # retry in 60 s
    assert jobs["j5"]["error"] == ["Work-horse terminated unexpectedly; waitpid returned 9 (signal 9);"]
    assert jobs["j6"]["callbacks"] == ["success"]
    assert [said.split(":")[1] for said in found["said"]] == [" done", " done", " refused", " done"]
