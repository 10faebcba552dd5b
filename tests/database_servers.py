"""Throw-away PostgreSQL and MariaDB servers on 127.0.0.1: each in a private temp folder, run as `nobody`
when the caller is root (PostgreSQL refuses root), with a user and password of its own, a free port and
its socket in that folder; stop() ends the server and removes the folder. The tests' fixtures
(tests/databases.py) and bench/sessions_sql.py start them."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from launcher.redis_server import free_port

USER, PASSWORD = "rqkit", "rqkit-test"
UNPRIVILEGED = "nobody"
START_SECONDS = 60


class DatabaseUnavailable(Exception):
    """The server's binaries are missing, or it did not start."""


class DatabaseServer:
    """One server: start() (at once, or begin() in a thread and ready() later), create()/drop() a
    database, url() for SQLAlchemy, stop(). `fast` turns off what makes commits durable (tests only);
    `settings` are more of the server's own (the benchmark's buffer pool)."""

    kind = ""
    scheme = ""
    admin_database = ""
    missing = ""  # what to install when the binaries are not found
    stop_signal = signal.SIGTERM

    def __init__(self, fast: bool = True, settings: dict[str, str] | None = None) -> None:
        self.fast = fast
        self.settings = settings or {}
        self.port = free_port()
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.error: DatabaseUnavailable | None = None
        self.thread: threading.Thread | None = None
        self.admin: Engine | None = None

    def begin(self) -> None:
        """Start in a background thread: the caller goes on while the server initialises."""
        self.thread = threading.Thread(target=self.start_quietly, name=f"start {self.kind}", daemon=True)
        self.thread.start()

    def ready(self) -> None:
        """Wait for a start begun earlier (or start now); raise DatabaseUnavailable if it failed."""
        if self.thread is None:
            self.begin()
        assert self.thread is not None
        self.thread.join()
        if self.error:
            raise self.error

    def start(self) -> DatabaseServer:
        self.ready()
        return self

    def start_quietly(self) -> None:
        """launch(), keeping what stopped it (a missing driver too) for ready() to raise."""
        try:
            self.launch()
        except DatabaseUnavailable as exc:
            self.error = exc
        except Exception as exc:  # in a background thread: the test that waits for it reports it
            self.error = DatabaseUnavailable(f"{self.kind} did not start: {exc!r}\n{self.log_tail()}")

    def launch(self) -> None:
        binaries = self.binaries()
        self.folder = Path(tempfile.mkdtemp(prefix=f"rqkit-{self.kind}-"))
        account = run_as()
        if account:
            os.chown(self.folder, account["user"], account["group"])
        self.initialise(binaries, account)
        with open(self.folder / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(binaries),
                cwd=self.folder,
                env=plain_env(self.folder),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches the tests, not the server
                **account,
            )
        self.admin = create_engine(self.url(self.admin_database), isolation_level="AUTOCOMMIT")
        self.wait_until_up()

    def wait_until_up(self) -> None:
        assert self.process is not None and self.admin is not None
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DatabaseUnavailable(f"{self.kind} exited at start:\n{self.log_tail()}")
            try:
                with self.admin.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError:
                time.sleep(0.05)
        raise DatabaseUnavailable(f"{self.kind} did not answer within {START_SECONDS} s:\n{self.log_tail()}")

    def setup_command(self, command: list[str], account: dict[str, Any]) -> None:
        """Run one step of initialising the data folder, as the server's user."""
        assert self.folder is not None
        done = subprocess.run(
            command, cwd=self.folder, env=plain_env(self.folder), capture_output=True, timeout=120, **account
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise DatabaseUnavailable(f"{self.kind}: {Path(command[0]).name} failed:\n{output}")

    def url(self, database: str) -> str:
        return f"{self.scheme}://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create(self, name: str) -> str:
        """A new, empty database: its URL."""
        self.sql(self.create_sql(name))
        return self.url(name)

    def drop(self, name: str) -> None:
        self.sql(self.drop_sql(name))

    def sql(self, statement: str) -> None:
        assert self.admin is not None
        with self.admin.connect() as conn:
            conn.execute(text(statement))

    def stop(self) -> None:
        """Stop the server (if it started) and remove its folder."""
        if self.thread is not None:
            self.thread.join()
        if self.admin is not None:
            self.admin.dispose()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self) -> str:
        log = self.folder / "server.log" if self.folder else None
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""

    def binaries(self) -> dict[str, str]:
        raise NotImplementedError

    def initialise(self, binaries: dict[str, str], account: dict[str, Any]) -> None:
        raise NotImplementedError

    def command(self, binaries: dict[str, str]) -> list[str]:
        raise NotImplementedError

    def create_sql(self, name: str) -> str:
        raise NotImplementedError

    def drop_sql(self, name: str) -> str:
        raise NotImplementedError


class PostgresServer(DatabaseServer):
    """PostgreSQL (Debian's, under /usr/lib/postgresql/VERSION/bin), its TimeZone 10 h behind UTC all
    year, as a server set to its host's local time may be: a time compared in the wrong zone shows."""

    kind, scheme, admin_database = "postgresql", "postgresql+psycopg", "postgres"
    missing = "Debian's postgresql"
    stop_signal = signal.SIGINT  # fast shutdown

    def binaries(self) -> dict[str, str]:
        folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(f.split("/")[-2]))
        for folder in [*reversed(folders), *(os.path.dirname(p) for p in [shutil.which("postgres")] if p)]:
            found = {name: os.path.join(folder, name) for name in ("initdb", "postgres")}
            if all(os.access(path, os.X_OK) for path in found.values()):
                return found
        raise DatabaseUnavailable(f"no PostgreSQL server here (initdb, postgres): install {self.missing}")

    def initialise(self, binaries: dict[str, str], account: dict[str, Any]) -> None:
        assert self.folder is not None
        password = self.folder / "password"
        password.write_text(PASSWORD)
        if account:
            os.chown(password, account["user"], account["group"])
        self.setup_command(
            [
                *(binaries["initdb"], "-D", str(self.folder / "data"), "-U", USER, f"--pwfile={password}"),
                *("--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C"),
                *("--no-sync", "--no-instructions"),
            ],
            account,
        )

    def command(self, binaries: dict[str, str]) -> list[str]:
        assert self.folder is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.folder),
            "timezone": "Pacific/Honolulu",
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        options = [f"-c{name}={value}" for name, value in (settings | self.settings).items()]
        return [binaries["postgres"], "-D", str(self.folder / "data"), *options]

    def create_sql(self, name: str) -> str:
        return f'CREATE DATABASE "{name}"'

    def drop_sql(self, name: str) -> str:
        return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'  # the toolkit's pools may hold connections


class MariaDBServer(DatabaseServer):
    """MariaDB (Debian's mariadb-server), without any my.cnf (--no-defaults): utf8mb4 as Debian
    configures it, its time zone 10 h behind UTC."""

    kind, scheme, admin_database = "mariadb", "mysql+pymysql", ""
    missing = "Debian's mariadb-server"

    def binaries(self) -> dict[str, str]:
        found = {
            "mariadbd": shutil.which("mariadbd") or "/usr/sbin/mariadbd",
            "install": shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db",
        }
        if not all(os.access(path, os.X_OK) for path in found.values()):
            raise DatabaseUnavailable(
                f"no MariaDB server here (mariadbd, mariadb-install-db): install {self.missing}"
            )
        return found

    def initialise(self, binaries: dict[str, str], account: dict[str, Any]) -> None:
        assert self.folder is not None
        data = self.folder / "data"
        self.setup_command(
            [
                binaries["install"],
                "--no-defaults",
                f"--datadir={data}",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            account,
        )
        (self.folder / "init.sql").write_text(  # run by the server as it starts
            f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1';\n"
        )

    def command(self, binaries: dict[str, str]) -> list[str]:
        assert self.folder is not None
        options: dict[str, object] = {
            "datadir": self.folder / "data",
            "socket": self.folder / "mariadb.sock",
            "pid-file": self.folder / "mariadb.pid",
            "init-file": self.folder / "init.sql",
            "port": self.port,
            "bind-address": "127.0.0.1",
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_general_ci",
            "default-time-zone": "-10:00",
            "performance-schema": "OFF",
        }
        if self.fast:
            options |= {"innodb-flush-log-at-trx-commit": 0, "innodb-doublewrite": 0}
        flags = [f"--{name}={value}" for name, value in (options | self.settings).items()]
        return [binaries["mariadbd"], "--no-defaults", *flags, "--skip-name-resolve"]

    def url(self, database: str) -> str:
        return f"{super().url(database)}?charset=utf8mb4"

    def create_sql(self, name: str) -> str:
        return f"CREATE DATABASE `{name}`"

    def drop_sql(self, name: str) -> str:
        return f"DROP DATABASE IF EXISTS `{name}`"


def run_as() -> dict[str, Any]:
    """Popen's arguments that run a server as `nobody` (no supplementary groups) when we are root."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(UNPRIVILEGED)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def plain_env(folder: Path) -> dict[str, str]:
    """The servers' environment: none of the caller's PG*/MYSQL* settings."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LC_ALL": "C"}
