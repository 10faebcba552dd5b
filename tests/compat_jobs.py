"""Job functions that exercise RQ's semantics, for running one suite under RQ's workers and the toolkit's."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Retry, get_current_job


def add(a: int, b: int) -> int:
    return a + b


def nothing() -> None:
    return None


def fail(message: str) -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def keep_in_meta() -> str:
    """Write the job's meta from inside the job, as a job reporting progress does."""
    job = get_current_job()
    assert job is not None
    job.meta["seen_by"] = job.id
    job.save_meta()
    return job.id


def ask_again(times: int) -> Any:
    """Return RQ's `Retry` until the job has run `times` times (RQ requeues a job that returns one)."""
    job = get_current_job()
    assert job is not None
    runs = job.connection.incr(f"compat:runs:{job.id}")
    return Retry(max=times) if runs < times + 1 else runs


def unpicklable() -> Any:
    return lambda: None


def crash() -> None:
    os._exit(3)


def record_success(job: Any, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    connection.set(f"compat:success:{job.id}", repr(result))


def record_failure(job: Any, connection: Any, kind: Any, value: Any, traceback: Any) -> None:
    connection.set(f"compat:failure:{job.id}", repr(value))


def pid() -> int:
    return os.getpid()


def length(text: str) -> int:
    return len(text)


def parent() -> int:
    return os.getppid()


def priority_and_siblings(seconds: float) -> tuple[int, int, dict[int, int]]:
    """After `seconds` asleep: this process's pid and nice value, and the nice value of each other child
    of its parent (a fork server's other horses)."""
    time.sleep(seconds)
    me, parent = os.getpid(), os.getppid()
    siblings = {}
    for pid in map(int, Path(f"/proc/{parent}/task/{parent}/children").read_text().split()):
        with suppress(OSError):
            siblings[pid] = os.getpriority(os.PRIO_PROCESS, pid)
    siblings.pop(me, None)
    return me, os.getpriority(os.PRIO_PROCESS, 0), siblings


def stop_parent() -> int:
    """Stop the process that forked this one (SIGSTOP): a forking worker's fork server. Its pid."""
    os.kill(os.getppid(), signal.SIGSTOP)
    return os.getppid()


def rq_environment() -> tuple[str | None, str | None]:
    """What RQ's work-horse puts in the environment for a job: the worker's name and the job's id."""
    return os.environ.get("RQ_WORKER_ID"), os.environ.get("RQ_JOB_ID")


def leave_a_child(seconds: float) -> int:
    """Fork a process that outlives the job by `seconds` (it keeps the job's file descriptors)."""
    child = os.fork()
    if child == 0:
        time.sleep(seconds)
        os._exit(0)
    return child


def wait_for_a_command(seconds: float) -> float:
    """Count this run in compat:running:ID (a test sends a stop or kill command when it sees it), then
    sleep `seconds`: long enough for a work-horse to be killed first, or the in-process worker's whole job."""
    job = get_current_job()
    assert job is not None
    job.connection.incr(f"compat:running:{job.id}")
    time.sleep(seconds)
    return seconds


KEPT: list[bytearray] = []


def hold(megabytes: int) -> int:
    """Keep `megabytes` of memory for the rest of the process's life (a leak); the process's pid."""
    KEPT.append(bytearray(b"x" * (megabytes << 20)))
    return os.getpid()


def name_the_connection(name: str) -> None:
    """Leave the job's Redis connection named (CLIENT SETNAME)."""
    job = get_current_job()
    assert job is not None
    job.connection.client_setname(name)


SUBSCRIBED: list[Any] = []


def stay_subscribed(channel: str) -> None:
    """Leave a subscription open on a connection of the job's pool."""
    job = get_current_job()
    assert job is not None
    pubsub = job.connection.pubsub()
    pubsub.subscribe(channel)
    SUBSCRIBED.append(pubsub)


def connection_name() -> str | None:
    """The name of the job's Redis connection (CLIENT GETNAME)."""
    job = get_current_job()
    assert job is not None
    name = job.connection.client_getname()
    return name.decode() if isinstance(name, bytes) else name


OWN_CLIENTS: dict[tuple[str, bool], Redis] = {}


def with_own_client(url: str, commands: list[list[Any]], decode: bool = False) -> tuple[int, list[Any]]:
    """Send `commands` through a Redis client of the job's own, kept for the process's life as a task
    module would keep it; its connection's CLIENT ID, and the replies."""
    client = OWN_CLIENTS.setdefault((url, decode), Redis.from_url(url, decode_responses=decode))
    return client.client_id(), [client.execute_command(*command) for command in commands]
