"""`up`: Redis (embedded if needed), workers, rqscheduler, rq-dashboard and the mail sink, as children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import IO

from config import Settings, redacted_url, redis_client
from config.connection import answers
from config.settings import PROJECT_ROOT
from launcher.children import kill_tree
from launcher.dashboard import check_address as check_dashboard_address
from launcher.demo import run_demo as demo_script
from launcher.redis_server import RedisServer, check_free, embeddable_address
from scheduler.sync import sync
from workers.lifetime import die_with_parent

# The same command lines the README gives for running the parts by hand (plus -S, the serializer).
# A job of a worker killed mid-job is found abandoned, and failed or retried, within about 45 s: its
# heartbeat lapses after 5 + 15 s, and a live worker sweeps the registries every 10 to 25 s.
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


@dataclass
class Child:
    """One supervised process; its output is copied line by line with a name prefix."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Stack:
    """Starts the parts, copies their logs, and stops them all, Redis last."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        scheduler: bool = True,
        dashboard: bool = True,
        mail: bool = True,
        out: IO[str] = sys.stdout,
    ) -> None:
        self.settings, self.workers, self.out = settings, workers, out
        self.with_scheduler, self.with_dashboard = scheduler, dashboard
        self.with_mail = mail and not settings.smtp_host  # the sink stands in for an SMTP server
        self.redis: RedisServer | None = None
        self.children: list[Child] = []
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
        """Bring everything up, wait for Ctrl-C, SIGTERM or a child's death, then stop all; the exit code.
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
        return [child.process for child in self.children if child.process and child.process.poll() is None]

    def signal_children(self, signum: int) -> None:
        for process in self.running():
            process.send_signal(signum)

    def start_redis(self) -> None:
        url = self.settings.redis_url
        if answers(url):
            self.say("redis", f"using the server at {redacted_url(url)}")
            return
        host, port = embeddable_address(url)
        self.redis = RedisServer(port, self.settings.var_dir / "redis", host=host).start()
        self.say("redis", f"embedded redis-server on {url}, data in {self.redis.data_dir}")

    def commands(self) -> list[Child]:
        python = sys.executable
        workers = [
            Child(f"worker-{i}", [python, "-m", "rq.cli", *WORKER_ARGS, "-S", self.settings.serializer])
            for i in range(1, self.workers + 1)
        ]
        scheduler = Child(
            "scheduler", [python, "-m", "scheduler", "-i", str(self.settings.scheduler_interval)]
        )
        dashboard = Child("dashboard", [python, "-m", "launcher.dashboard"])
        mail = Child(
            "mail",
            [
                python,
                "-m",
                "launcher.mail_sink",
                "--port",
                str(self.settings.smtp_sink_port),
                "--dir",
                str(self.settings.mail_dir),
            ],
        )
        parts = [(scheduler, self.with_scheduler), (dashboard, self.with_dashboard), (mail, self.with_mail)]
        return workers + [child for child, wanted in parts if wanted]

    def child_env(self) -> dict[str, str]:
        url = self.settings.redis_url
        env = dict(os.environ, REDIS_URL=url, RQ_REDIS_URL=url, PYTHONUNBUFFERED="1")
        env["RQKIT_MEDIA_ROOT"] = str(self.settings.media_root)  # workers resolve job paths as `up` does
        return env

    def start_children(self) -> None:
        """Start every child first, then the log copiers: no thread runs while we fork."""
        env = self.child_env()
        for child in self.commands():
            child.process = subprocess.Popen(
                child.command,
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches `up` only; it decides what each child gets
                preexec_fn=die_with_parent,
            )
            self.children.append(child)
        for child in self.children:
            threading.Thread(target=self.copy_output, args=(child,), daemon=True).start()

    def copy_output(self, child: Child) -> None:
        assert child.process and child.process.stdout
        for raw in child.process.stdout:
            self.say(child.name, raw.decode(errors="replace").rstrip())

    def print_summary(self) -> None:
        s = self.settings
        self.say("up", f"redis      {redacted_url(s.redis_url)}")
        if self.workers:
            queues = ", ".join(s.queues)
            command = " ".join(("rq", *WORKER_ARGS, "-S", s.serializer))
            self.say("up", f"workers    {self.workers} x {command} ({queues})")
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
        """Wait for a stop request (exit 0) or a child that exits by itself (exit 1)."""
        while not self.stop_requested.wait(0.2):
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is not None:
                    self.say("up", f"{child.name} exited with code {code}; stopping everything")
                    return 1
        return 0

    def stop_children(self) -> None:
        """SIGTERM each child (RQ workers: warm shutdown) and wait for all of them."""
        self.warm_sent_at = time.monotonic()
        self.signal_children(signal.SIGTERM)
        for child in self.children:
            if child.process:
                code = child.process.wait()
                self.say(
                    child.name, "stopped" if code in (0, -signal.SIGTERM) else f"stopped (exit code {code})"
                )


def up(
    settings: Settings, workers: int, scheduler: bool = True, dashboard: bool = True, demo: bool = False
) -> int:
    """Run the whole stack until Ctrl-C, SIGTERM or a child's death: the schedule synced first, and the
    demo's jobs once it is up (with `demo`); the exit code."""
    stack = Stack(settings, workers, scheduler, dashboard)

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
