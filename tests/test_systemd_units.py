"""The systemd units in deploy/ hold what production needs, systemd-analyze accepts them, and each unit's
ExecStart, run as systemd runs it (its environment files, its paths moved to this checkout), comes up
and stops on the signal its KillMode sends, within its TimeoutStopSec; a worker stopped mid-job first
finishes the job."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from redis import Redis
from rq.job import JobStatus

from config.rq_classes import Worker
from config.settings import PROJECT_ROOT
from config.urls import has_credentials
from jobs import enqueue
from jobs.registry import JOBS, RERUN_IF_CUT_SHORT
from launcher.redis_server import RedisServer, free_port
from launcher.stack import WORKER_ARGS
from tests.support import wait_until

UNITS = PROJECT_ROOT / "deploy" / "systemd"
ETC = PROJECT_ROOT / "deploy" / "etc" / "rqkit"
INSTALL, VENV, SETTINGS = "/opt/rqkit", "/opt/rqkit/.venv", "/etc/rqkit"
WORKER = "rqkit-worker@.service"
SERVICES = (WORKER, "rqkit-scheduler.service", "rqkit-dashboard.service", "rqkit-metrics.service")
INSTANCE = "api"  # the worker instance that runs here: deploy/etc/rqkit/workers/api.env, the demo's queue
# What every service sets, as systemd spells it.
COMMON = {
    "Type": "exec",
    "User": "rqkit",
    "WorkingDirectory": INSTALL,
    "Restart": "always",
    "KillSignal": "SIGTERM",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
}
SECRET_NAME = re.compile(r"PASSWORD|USERNAME|SECRET|TOKEN|REDIS_URL|DATABASE_URL")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}  # what systemd gives a service
CLEAN_EXIT = (0, -signal.SIGTERM)  # systemd counts a death by SIGTERM as a clean stop
# The most `systemd-analyze security` may rate a service, in tenths: 3.0 (these rate 1.9 on systemd 252).
EXPOSURE = 30
STOP_BOUND = 30.0  # s this test waits for a stop (each unit allows TimeoutStopSec, at least this)
Unit = dict[str, dict[str, list[str]]]


def read_unit(text: str) -> Unit:
    """A unit file's sections: each key's values in order (a key may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for line in (line.strip() for line in text.splitlines()):
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(name: str) -> Unit:
    return read_unit((UNITS / name).read_text())


def last(unit: Unit, section: str, key: str) -> str:
    return unit[section][key][-1]


def seconds(value: str) -> float:
    """A time span as these units write it: 360, 30s or 6min."""
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"not a time span of the form these units use: {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_supervised_confined_and_reads_the_shared_settings(name: str) -> None:
    unit = load(name)
    service = unit["Service"]
    assert {key: service.get(key, [None])[-1] for key in COMMON} == COMMON
    assert service["EnvironmentFile"][0] == f"{SETTINGS}/rqkit.env"
    assert service["ExecStart"][0].startswith(f"{VENV}/bin/")
    assert seconds(last(unit, "Service", "TimeoutStopSec")) >= STOP_BOUND
    assert re.fullmatch(r"\d+[KMG]", last(unit, "Service", "MemoryMax"))
    assert last(unit, "Unit", "PartOf") == last(unit, "Install", "WantedBy") == "rqkit.target"


def test_the_target_starts_with_the_host() -> None:
    assert read_unit((UNITS / "rqkit.target").read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_workers_write_only_to_their_state_directory() -> None:
    service = load(WORKER)["Service"]
    assert service["StateDirectory"] == ["rqkit"]
    assert "RQKIT_VAR_DIR=/var/lib/rqkit" in service["Environment"][0].split()


def test_no_unit_holds_a_secret() -> None:
    for name in (*SERVICES, "rqkit.target"):
        text = (UNITS / name).read_text()
        assigned = [
            word.partition("=")[0]
            for line in load(name).get("Service", {}).get("Environment", [])
            for word in shlex.split(line)
        ]
        assert not [variable for variable in assigned if SECRET_NAME.search(variable)], name
        assert not [word for word in text.split() if "://" in word and has_credentials(word)], name


def test_a_worker_stops_after_every_job_that_must_not_run_twice() -> None:
    """Stopping the worker sends SIGTERM to it alone (its horse finishes the job), and TimeoutStopSec
    outlasts the time-out of every job that is not simply rerun when cut short (the demo's sleep aside)."""
    service = load(WORKER)["Service"]
    assert service["KillMode"] == ["mixed"]
    once = {
        name: spec.policy_options()["timeout"]
        for name, spec in JOBS.items()
        if spec.retry_intervals != RERUN_IF_CUT_SHORT and spec.func.__module__ != "jobs.demo"
    }
    assert once and seconds(service["TimeoutStopSec"][-1]) >= max(once.values()) + 30, once


def test_a_worker_runs_the_command_line_up_runs() -> None:
    words = shlex.split(last(load(WORKER), "Service", "ExecStart"))
    assert words[0] == f"{VENV}/bin/rq"
    assert tuple(words[1 : 1 + len(WORKER_ARGS)]) == WORKER_ARGS
    assert words[1 + len(WORKER_ARGS) :] == ["-S", "${RQKIT_SERIALIZER}", "$WORKER_QUEUES"]


@dataclass
class Installed:
    """The units and their settings files, rewritten to run from this checkout, in a directory."""

    units: Path
    settings: Path

    def unit(self, name: str) -> Unit:
        return read_unit((self.units / name).read_text())


def rewritten(text: str, settings: Path) -> str:
    """A unit or settings file with the install paths moved to this checkout and `settings`."""
    venv = Path(sys.executable).parent.parent  # not resolved: a venv's python may link elsewhere
    return text.replace(VENV, str(venv)).replace(INSTALL, str(PROJECT_ROOT)).replace(SETTINGS, str(settings))


@pytest.fixture
def installed(tmp_path: Path, redis_server: RedisServer, toolkit_env: dict[str, str]) -> Installed:
    """deploy/ as a host would hold it, pointing at the session's Redis, free ports and a private var dir
    (the unit's StateDirectory), with the test session's (empty) settings file in place of a local one."""
    units, settings = tmp_path / "systemd", tmp_path / "etc"
    shutil.copytree(ETC, settings)
    units.mkdir()
    for path in UNITS.iterdir():
        (units / path.name).write_text(rewritten(path.read_text(), settings))
    overrides = {
        "REDIS_URL": redis_server.url,
        "RQKIT_VAR_DIR": str(tmp_path / "var"),
        "RQKIT_CONFIG": toolkit_env["RQKIT_CONFIG"],
        "RQKIT_DASHBOARD_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
    }
    with (settings / "rqkit.env").open("a") as env_file:
        env_file.writelines(f"{name}={value}\n" for name, value in overrides.items())
    return Installed(units, settings)


def test_systemd_analyze_verifies_the_units(installed: Installed) -> None:
    """No warning (an unknown key, a bad value, a missing program), and each service well confined
    (`systemd-analyze security`: 0 is fully confined, 10 not at all; these score about 2)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here: the units are checked as parsed text only")
    services = [str(installed.units / name.replace("@.", f"@{INSTANCE}.")) for name in SERVICES]
    units = [
        *services,
        str(installed.units / WORKER.replace("@.", "@main.")),
        str(installed.units / "rqkit.target"),
    ]
    verified = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in verified.stderr.splitlines() if "rqkit" in line]  # not the host's own units'
    assert verified.returncode == 0 and ours == [], verified.stderr
    for service in services:
        command = [analyze, "security", "--offline=yes", f"--threshold={EXPOSURE}", "--no-pager", service]
        rated = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert rated.returncode == 0, rated.stdout[-300:] + rated.stderr


def environment(unit: Unit, instance: str) -> dict[str, str]:
    """What systemd gives the unit's process: its Environment=, then its EnvironmentFile=s, in order."""
    env = dict(BASE_ENV)
    for line in unit["Service"].get("Environment", []):
        env |= dict(word.split("=", 1) for word in shlex.split(line))
    for file in unit["Service"]["EnvironmentFile"]:
        for line in Path(file.replace("%i", instance)).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                name, _, value = line.partition("=")
                env[name.strip()] = " ".join(shlex.split(value))
    return env


def command(unit: Unit, env: dict[str, str], instance: str) -> list[str]:
    """ExecStart as systemd expands it: ${NAME} in a word, and $NAME alone split into words."""
    words: list[str] = []
    for word in shlex.split(last(unit, "Service", "ExecStart").replace("%i", instance)):
        if re.fullmatch(r"\$\w+", word):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda match: env.get(match[1], ""), word))
    return words


@dataclass
class Running:
    """A unit's process, started as systemd starts it."""

    name: str
    unit: Unit
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def processes(self) -> list[psutil.Process]:
        """The unit's live processes, as its cgroup would hold them: the main one and its descendants
        (a work-horse is in a process group of its own), and any that outlived its parent."""
        found: dict[int, psutil.Process] = {}
        with suppress(psutil.Error):
            main = psutil.Process(self.process.pid)
            found = {process.pid: process for process in (main, *main.children(recursive=True))}
        for process in psutil.process_iter():
            with suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == self.process.pid:
                    found.setdefault(process.pid, process)
        return [process for process in found.values() if alive(process)]

    def stop(self) -> int:
        """Send what systemd sends on `systemctl stop`; the exit code once the main process is gone."""
        mixed = self.unit["Service"].get("KillMode", ["control-group"])[-1] == "mixed"
        processes = self.processes()
        for process in processes[:1] if mixed else processes:  # mixed: the main process alone
            with suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        return self.process.wait(min(seconds(last(self.unit, "Service", "TimeoutStopSec")), STOP_BOUND))


def alive(process: psutil.Process) -> bool:
    with suppress(psutil.Error):
        return process.status() != psutil.STATUS_ZOMBIE
    return False


@pytest.fixture
def start_unit(installed: Installed, tmp_path: Path) -> Iterator[Callable[[str], Running]]:
    """Start a unit's ExecStart in its WorkingDirectory and own session; killed at the end of the test."""
    started: list[Running] = []

    def start(name: str) -> Running:
        unit = installed.unit(name)
        env = environment(unit, INSTANCE)
        with open(tmp_path / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                command(unit, env, INSTANCE),
                cwd=last(unit, "Service", "WorkingDirectory"),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Running(name, unit, env, process))
        return started[-1]

    yield start
    for running in started:
        for process in running.processes():
            with suppress(psutil.Error):
                process.kill()
        running.process.wait()


def tails(logs: Path) -> dict[str, str]:
    """The end of each unit's output, for a failure message."""
    return {log.name: log.read_text()[-1500:] for log in logs.glob("*.log")}


def answers(url: str) -> bool:
    with suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


def registered_worker(connection: Redis, pid: int) -> list[str] | None:
    """The queues of the worker with this pid, once it has registered."""
    return next((w.queue_names() for w in Worker.all(connection=connection) if w.pid == pid), None)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_each_unit_comes_up_and_stops_as_systemd_stops_it(
    start_unit: Callable[[str], Running], connection: Redis, tmp_path: Path
) -> None:
    # Given every unit started as systemd would start it
    units = [start_unit(name) for name in SERVICES]
    worker, _, dashboard, metrics = units
    up = {
        "worker": lambda: registered_worker(connection, worker.process.pid) == ["api", "default"],
        "scheduler": lambda: any(connection.scan_iter("rq:scheduler_instance:*")),
        "dashboard": lambda: answers(f"http://127.0.0.1:{dashboard.env['RQKIT_DASHBOARD_PORT']}/"),
        "metrics": lambda: answers(f"http://127.0.0.1:{metrics.env['METRICS_PORT']}/metrics"),
    }
    for part, is_up in up.items():
        try:
            wait_until(is_up, timeout=45, what=f"the {part} unit to come up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {tails(tmp_path)}") from None

    # When a job is running and every unit is stopped
    job = enqueue("sleep", 3)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, what="the job to start")
    codes = {running.name: running.stop() for running in units}

    # Then each exits cleanly, leaving nothing behind, and the worker finished its job first
    assert {name: code in CLEAN_EXIT for name, code in codes.items()} == dict.fromkeys(SERVICES, True), (
        codes,
        tails(tmp_path),
    )
    wait_until(lambda: not any(r.processes() for r in units), timeout=10, what="every process to end")
    assert job.get_status(refresh=True) == JobStatus.FINISHED, tails(tmp_path)
    assert registered_worker(connection, worker.process.pid) is None
    assert all(connection.hexists(key, "death") for key in connection.scan_iter("rq:scheduler_instance:*"))
