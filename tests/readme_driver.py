"""Run every shell example of README.md and docs/*.md as printed, in the process layout they imply:
PID 1 of network and PID namespaces of its own (tests/test_readme_examples.py starts it under
`unshare`), so that the defaults they rely on (Redis on 127.0.0.1:6379, the dashboard on :9181, the
SMTP sink on :8025) are private to the run. The long-running commands (Redis, the sink, workers,
schedulers, dashboard, metrics, the example web apps) start first, in the order printed, and must stay
up; then every other command runs, in the order printed, and must exit 0. Writes REPORT (JSON): what
failed, and why.
Usage: python -m tests.readme_driver REPORT (from a copy of the repo, which it may write into)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from config.connection import answers
from tests.rq_suite.namespace import loopback_up

DOCUMENTS = ["README.md", *sorted(str(p) for p in Path("docs").glob("*.md"))]
SERVICES = (
    ["python", "cli.py", "redis"],
    ["python", "cli.py", "mail", "serve"],
    ["python", "cli.py", "dashboard"],
    ["python", "cli.py", "metrics"],
    ["python", "-m", "scheduler"],
    ["rq", "worker"],
    ["rqscheduler"],
    ["flask", "--app"],  # the example web apps (README: From a web app)
    ["python", "examples/django_site/manage.py", "runserver"],
)
NOT_RUN = ("scripts/", "source ")  # the quick start and the suite itself (tests/test_up.py runs `up`)
SETTLE = 8.0  # s the services get to start before the examples run
COMMAND_TIMEOUT = 120.0
MISSED_SETTING = r"is not allowed|is not set where the job runs"  # the jobs' words for a setting they lack


@dataclass
class Example:
    """One command as printed: where, its words, and the variables it sets (`VAR=value command`)."""

    where: str
    line: str
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_service(self) -> bool:
        return any(self.words[: len(start)] == start for start in SERVICES)


def examples() -> list[Example]:
    """Every command in a ```sh block of the documents, continuation lines joined, comments dropped."""
    found = []
    for document in DOCUMENTS:
        blocks = re.findall(r"^```sh\n(.*?)^```", Path(document).read_text(), flags=re.M | re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if not words or line.startswith(NOT_RUN):
                    continue
                env = {}
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                    name, _, value = words.pop(0).partition("=")
                    env[name] = value
                if words:  # a line of assignments alone sets shell variables: nothing runs
                    found.append(Example(document, " ".join(line.split()), words, env))
    return found


def make_pictures() -> None:
    """The files the examples name, under the media root (the current directory by default)."""
    Path("photos").mkdir(exist_ok=True)
    for name in ("path.jpg", "a.jpg", "b.png", "photos/cat.jpg"):
        Image.new("RGB", (640, 480), (200, 120, 40)).save(name)


def start(example: Example, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{len(list(logs.iterdir())):02d}-{example.words[-1].replace('/', '_')}.log").open("wb")
    return subprocess.Popen(
        example.words, env=env | example.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def exported(listed: list[Example]) -> dict[str, str]:
    """What the `export` lines set: the environment of the whole setup, workers included (as the
    README says: settings that jobs read count where the workers run)."""
    words = [word for example in listed if example.words[0] == "export" for word in example.words[1:]]
    return dict(word.split("=", 1) for word in words)


def run(example: Example, env: dict[str, str], placeholders: dict[str, str]) -> dict[str, str] | None:
    """Run one command; None if it exited 0, else what went wrong."""
    if example.words[0] == "export":
        return None
    words = [placeholders.get(word, word) for word in example.words]
    try:
        done = subprocess.run(
            words, env=env | example.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"problem": f"still running after {COMMAND_TIMEOUT:g}s"}
    if done.returncode == 0 and "Traceback" not in done.stderr:
        return None
    return {"problem": f"exit {done.returncode}", "output": (done.stdout + done.stderr)[-2000:]}


def settings_that_missed_the_workers(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Failed jobs whose setting an example gave the enqueuing command but not the workers."""
    command = ["python", "cli.py", "failed", "list", "--json"]
    listed = subprocess.run(command, env=env, capture_output=True, text=True)
    groups = json.loads(listed.stdout) if listed.returncode == 0 else []
    return {
        f"a {group['job']} job the examples enqueued": {"problem": group["reason"]}
        for group in groups
        if re.search(MISSED_SETTING, group["reason"])
    }


def main(report: Path) -> int:
    if os.getpid() != 1:
        sys.exit("readme_driver runs as PID 1 of a namespace of its own: unshare --net --pid --fork")
    loopback_up()
    listed = examples()
    env = dict(os.environ) | exported(listed)
    logs = report.parent / "logs"
    logs.mkdir(exist_ok=True)
    unique = {tuple(example.words): example for example in reversed(listed) if example.is_service}
    services = [example for example in listed if unique.get(tuple(example.words)) is example]  # once each
    started = []
    for example in services:
        started.append((example, start(example, env, logs)))
        if example.words == ["python", "cli.py", "redis"]:
            deadline = time.monotonic() + 30
            while not answers("redis://127.0.0.1:6379/0") and time.monotonic() < deadline:
                time.sleep(0.1)
    time.sleep(SETTLE)
    make_pictures()
    pending = subprocess.run(
        ["python", "cli.py", "enqueue", "sleep", "5", "--in", "1h", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    placeholders = {"ID": json.loads(pending.stdout)["id"]} if pending.returncode == 0 else {}
    failures = {}
    for example in listed:
        if not example.is_service and (problem := run(example, env, placeholders)):
            failures[f"{example.where}: {example.line}"] = problem
    time.sleep(SETTLE)  # the jobs the examples enqueued without --wait get to run
    failures |= settings_that_missed_the_workers(env)
    for example, process in started:
        if process.poll() is not None:
            failures[f"{example.where}: {example.line}"] = {"problem": f"exited {process.returncode} early"}
    for _, process in reversed(started):
        os.killpg(process.pid, signal.SIGINT)
    report.write_text(
        json.dumps(
            {"ran": len(listed), "services": len(services), "failures": failures, "logs": str(logs)}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
