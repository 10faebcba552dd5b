"""`up`: Redis (embedded if needed), workers, rqscheduler, rq-dashboard and the mail sink, as children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import IO

from redis.exceptions import RedisError

from config import Settings, ToolkitError, redacted_url, redis_client
from config.connection import answers
from config.sentinel import is_sentinel_url
from config.worker_modes import worker_groups
from launcher.children import FIRST_DELAY, LONGEST_DELAY, Child, Restarts, kill_tree
from launcher.dashboard import check_address as check_dashboard_address
from launcher.dead_workers import release_jobs
from launcher.demo import run_demo as demo_script
from launcher.redis_server import RedisServer, check_free, embeddable_address, open_to_the_network
from scheduler.sync import sync

# The same command lines the README gives for running the parts by hand (plus -S, the serializer, and
# -n, a name `up` knows). When a worker child dies, `up` hands its started jobs to RQ's abandoned-job
# handling at once (launcher/dead_workers.py). A death nobody sees (a lost host) is found by the other
# workers: the job's heartbeat lapses after 5 + 15 s, and an idle worker sweeps the registries every
# 25 s (its wait for a job), so within about 45 s.
WORKER_ARGS = (
    "worker",
    "-c",
    "config.rq",
    "--with-scheduler",
    "-w",
    "workers.ForkingWorker",
    "--worker-ttl",
    "40",
    "--job-monitoring-interval",
    "5",
    "--maintenance-interval",
    "10",
)
COLD_AFTER = 1.5  # seconds between the warm and the cold shutdown signal (RQ wants more than 1)
TICK = 0.2  # s between two looks at the children
RELEASE_TRIES = 8  # to reach Redis for a dead worker's jobs, FIRST_DELAY to LONGEST_DELAY apart: ~2 min


def worker_name(child: str, start: int) -> str:
    """The RQ name of a worker child's `start`th process: unique, so a restart never meets the key of the
    process before it, and known to `up`, which releases that process's jobs when it dies."""
    return f"{child}.{start}.{os.getpid()}@{socket.gethostname()}"


class Stack:
    """Starts the parts, copies their logs, restarts each part that dies, and stops them all, Redis last."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        scheduler: bool = True,
        dashboard: bool = True,
        mail: bool = True,
        out: IO[str] = sys.stdout,
        allow_open_redis: bool = False,
    ) -> None:
        self.settings, self.workers, self.out = settings, workers, out
        self.allow_open_redis = allow_open_redis
        self.with_scheduler, self.with_dashboard = scheduler, dashboard
        self.with_mail = mail and not settings.smtp_host  # the sink stands in for an SMTP server
        self.redis: RedisServer | None = None
        self.redis_restarts = Restarts()
        self.children: list[Child] = []
        self.env: dict[str, str] = {}
        self.stop_requested = threading.Event()
        self.signals = 0
        self.warm_sent_at: float | None = None
        self.lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self.lock:
            self.out.write(f"{name:<10}| {line}\n")
            self.out.flush()

    def run(
        self, prepare: Callable[[], None] | None = None, on_ready: Callable[[], None] | None = None
    ) -> int:
        """Bring everything up, restart what dies until Ctrl-C or SIGTERM, then stop all; the exit code.
        `prepare` runs once Redis answers, before any other part starts (`up` syncs the schedule)."""
        if self.with_dashboard:
            check_dashboard_address(self.settings)
        if self.with_mail:
            check_free("127.0.0.1", self.settings.smtp_sink_port, "mail sink", "RQKIT_SMTP_SINK_PORT")
        previous = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start_redis()
            if prepare:
                prepare()
            self.start_children()
            self.print_summary()
            if on_ready:
                threading.Thread(target=self.run_quietly, args=(on_ready,), name="demo", daemon=True).start()
            return self.supervise()
        finally:
            self.stop_children()
            if self.redis:
                self.redis.stop()
                self.say("redis", "stopped")
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run_quietly(self, task: Callable[[], None]) -> None:
        """Run a side task (the demo); a failure is one log line, never a traceback or a stop."""
        try:
            task()
        except Exception as exc:  # noqa: BLE001 - the stack must outlive its demo
            self.say("up", f"{getattr(task, '__name__', 'task')} stopped: {exc}")

    def on_signal(self, signum: int, frame: object) -> None:
        """First signal: warm shutdown. Second: workers stop their jobs (RQ's cold shutdown). Third: kill."""
        self.signals += 1
        if self.signals == 1:
            self.stop_requested.set()
        elif self.signals == 2:
            threading.Thread(target=self.cold_stop, daemon=True).start()
        else:
            for child in self.running():
                kill_tree(child.pid)

    def cold_stop(self) -> None:
        """The second SIGTERM, once the first is COLD_AFTER old: RQ ignores one within a second of it."""
        while self.warm_sent_at is None or time.monotonic() - self.warm_sent_at < COLD_AFTER:
            time.sleep(0.05)
        self.signal_children(signal.SIGTERM)

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [child.process for child in self.children if child.process and child.running()]

    def signal_children(self, signum: int) -> None:
        for process in self.running():
            process.send_signal(signum)

    def start_redis(self) -> None:
        url = self.settings.redis_url
        if open_to_the_network(url) and not self.allow_open_redis:
            raise ToolkitError(
                f"REDIS_URL ({redacted_url(url)}) is off loopback and has no password: whoever reaches it "
                "can queue jobs, and run code on the workers in pickle mode (docs/security.md). Give it a "
                "password (redis://:PASSWORD@host:6379/0), or pass --allow-open-redis if a network limit "
                "protects it"
            )
        if answers(url):
            self.say("redis", f"using the server at {redacted_url(url)}")
            return
        host, port = embeddable_address(url)
        self.redis = RedisServer(port, self.settings.var_dir / "redis", host=host).start()
        self.redis_restarts.started(time.monotonic())
        self.say("redis", f"embedded redis-server on {url}, data in {self.redis.data_dir}")

    def worker_args(self) -> list[tuple[str, ...]]:
        """`rq worker`'s arguments for each group of queues of one mode (worker_modes): WORKER_ARGS with
        the group's worker class, then its queues (none if it has them all: config.rq names them)."""
        return [
            tuple(worker_class if arg == WORKER_ARGS[5] else arg for arg in WORKER_ARGS)
            + (("-S", self.settings.serializer) + (queues if queues != self.settings.queues else ()))
            for worker_class, queues in worker_groups(self.settings)
        ]

    def commands(self) -> list[Child]:
        python = sys.executable
        cpus = self.worker_cpus()
        numbered = enumerate(((args, cpu) for args in self.worker_args() for cpu in cpus), 1)
        workers = [
            Child(f"worker-{i}", partial(self.worker_command, f"worker-{i}", args), worker=True, cpu=cpu)
            for i, (args, cpu) in numbered
        ]
        interval = str(self.settings.scheduler_interval)
        scheduler = Child("scheduler", lambda _: [python, "-m", "scheduler", "-i", interval])
        dashboard = Child("dashboard", lambda _: [python, "-m", "launcher.dashboard"])
        port, folder = str(self.settings.smtp_sink_port), str(self.settings.mail_dir)
        mail = Child("mail", lambda _: [python, "-m", "launcher.mail_sink", "--port", port, "--dir", folder])
        parts = [(scheduler, self.with_scheduler), (dashboard, self.with_dashboard), (mail, self.with_mail)]
        return workers + [child for child, wanted in parts if wanted]

    def worker_cpus(self) -> list[int | None]:
        """The CPU of each of a mode's workers: one each of the CPUs this process may use, when there are
        exactly as many workers as those CPUs and `pin_workers` is on; else None each (the kernel's to
        place). A worker's fork server and horses then share its CPU's caches (bench/fleet.py: one worker
        per core drains no-op jobs 12-14% faster)."""
        cpus = sorted(os.sched_getaffinity(0))
        if self.settings.pin_workers and self.workers == len(cpus) > 1:
            return list(cpus)
        return [None] * self.workers

    def worker_command(self, child: str, args: tuple[str, ...], start: int) -> list[str]:
        name = worker_name(child, start)
        return [sys.executable, "-m", "rq.cli", *args, "-n", name]

    def child_env(self) -> dict[str, str]:
        url = self.settings.redis_url
        env = {**os.environ, "REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
        env.pop("RQ_REDIS_URL", None)
        if not is_sentinel_url(url):  # stock rq reads it with Redis.from_url, which takes no Sentinel URL
            env["RQ_REDIS_URL"] = url  # (for one, config.rq gives RQ a SENTINEL dict)
        env["RQKIT_MEDIA_ROOT"] = str(self.settings.media_root)  # workers resolve job paths as `up` does
        return env

    def start_children(self) -> None:
        """Start every child first, then the log copiers: no thread runs while we fork."""
        self.env = self.child_env()
        self.children = self.commands()
        for child in self.children:
            child.start(self.env)
        for child in self.children:
            self.copy_output_of(child)

    def copy_output_of(self, child: Child) -> None:
        """Copy the output of the child's current process, in a thread of its own."""
        assert child.process and child.process.stdout
        lines = child.process.stdout
        threading.Thread(target=self.copy_output, args=(child.name, lines), daemon=True).start()

    def copy_output(self, name: str, lines: IO[bytes]) -> None:
        for raw in lines:
            self.say(name, raw.decode(errors="replace").rstrip())

    def print_summary(self) -> None:
        s = self.settings
        self.say("up", f"redis      {redacted_url(s.redis_url)}")
        for args in self.worker_args() if self.workers else []:
            queues = f" ({', '.join(s.queues)})" if args[-2:] == ("-S", s.serializer) else ""
            self.say("up", f"workers    {self.workers} x {' '.join(('rq', *args))}{queues}")
        if self.with_scheduler:
            self.say(
                "up",
                f"scheduler  python -m scheduler (rq-scheduler), checking every {s.scheduler_interval:g}s",
            )
        if self.with_dashboard:
            self.say("up", f"dashboard  http://{s.dashboard_host}:{s.dashboard_port}")
        if self.with_mail:
            self.say("up", f"mail       SMTP sink on 127.0.0.1:{s.smtp_sink_port}, messages in {s.mail_dir}")
        if self.workers:
            self.say("up", "Ctrl-C stops everything (workers finish their job first; twice: stop them now)")
        else:
            self.say("up", "Ctrl-C stops it")

    def supervise(self) -> int:
        """Until a stop request: start again, alone and with back-off, each child that exits by itself
        (a worker's started jobs are released at once) and the embedded Redis; exit 0."""
        while not self.stop_requested.wait(TICK):
            now = time.monotonic()
            self.watch_redis(now)
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    self.died(child.name, code, child.restarts, now)
                    if child.worker:
                        self.release_in_background(child.name, worker_name(child.name, child.starts))
                elif child.restarts.is_due(now):
                    self.restart(child)
        return 0

    def died(self, name: str, code: int, restarts: Restarts, now: float) -> None:
        delay = restarts.died(now)
        row = f" ({restarts.deaths} times in a row)" if restarts.deaths > 1 else ""
        self.say("up", f"{name} exited with code {code}{row}; restarting in {delay:g} s")

    def restart(self, child: Child) -> None:
        try:
            child.start(self.env)
        except OSError as exc:
            delay = child.restarts.died(time.monotonic())
            self.say("up", f"{child.name} did not start ({exc}); trying again in {delay:g} s")
            return
        self.copy_output_of(child)

    def watch_redis(self, now: float) -> None:
        """Start the embedded Redis again if it died: on the same data, whose append-only file holds the
        queued jobs (a crash of the machine can lose the last second's writes). Meanwhile the workers and
        the scheduler wait for it, as for any outage."""
        if self.redis is None or self.redis.process is None:
            return
        if self.redis_restarts.due is None:
            code = self.redis.process.poll()
            if code is not None:
                self.died("redis", code, self.redis_restarts, now)
            return
        if not self.redis_restarts.is_due(now):
            return
        try:
            self.redis.start()
        except (ToolkitError, OSError) as exc:
            delay = self.redis_restarts.died(time.monotonic())
            self.say("redis", f"{exc}; trying again in {delay:g} s")
            return
        self.redis_restarts.started(time.monotonic())
        self.say("redis", f"embedded redis-server started again, data in {self.redis.data_dir}")

    def release_in_background(self, child: str, name: str) -> None:
        """Release a dead worker's jobs in a thread: Redis may be slow to answer, or away."""
        threading.Thread(target=self.release, args=(child, name), name=f"release {name}", daemon=True).start()

    def release(self, child: str, name: str) -> None:
        """Hand the jobs the dead worker `name` had started to RQ's abandoned-job handling now; through a
        Redis outage, a few tries, then they are left to the workers' registry sweep."""
        delay = FIRST_DELAY
        for _ in range(RELEASE_TRIES):
            try:
                released = release_jobs(redis_client(self.settings), name)
            except RedisError as exc:
                self.say("up", f"{child}'s jobs: Redis did not answer ({exc}); trying again in {delay:g} s")
                if self.stop_requested.wait(delay):
                    return
                delay = min(delay * 2, LONGEST_DELAY)
                continue
            for job_id, fate in released:
                self.say("up", f"{child} died during job {job_id}: {fate}")
            return
        self.say("up", f"{child}'s jobs: left to the workers' registry sweep (Redis did not answer)")

    def stop_children(self) -> None:
        """SIGTERM each running child (RQ workers: warm shutdown) and wait for all of them."""
        self.warm_sent_at = time.monotonic()
        running = [child for child in self.children if child.running()]
        self.signal_children(signal.SIGTERM)
        for child in running:
            assert child.process
            code = child.process.wait()
            self.say(child.name, "stopped" if code in (0, -signal.SIGTERM) else f"stopped (exit code {code})")


def up(
    settings: Settings,
    workers: int,
    scheduler: bool = True,
    dashboard: bool = True,
    demo: bool = False,
    allow_open_redis: bool = False,
) -> int:
    """Run the whole stack until Ctrl-C or SIGTERM, each part that dies started again: the schedule synced
    first, and the demo's jobs once it is up (with `demo`); the exit code."""
    stack = Stack(settings, workers, scheduler, dashboard, allow_open_redis=allow_open_redis)

    def sync_schedule() -> None:
        changes = sync(settings, redis_client(settings))
        stack.say(
            "schedule",
            f"synced: {len(changes.added)} added, {len(changes.updated)} updated, "
            f"{len(changes.removed)} removed, {len(changes.unchanged)} unchanged",
        )

    def run_demo() -> None:
        demo_script(settings, partial(stack.say, "demo"))

    return stack.run(prepare=sync_schedule if scheduler else None, on_ready=run_demo if demo else None)
