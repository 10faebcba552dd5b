"""Hosts made of Linux network namespaces (root only): a bridge in the root namespace, and per host a
namespace whose only way out is its veth to that bridge, with its processes under the host's own
hostname (a UTS namespace of their own). Names carry the pid, so runs side by side don't clash."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import PROJECT_ROOT

# Runs in the host's namespaces: its own hostname, then the command itself (so its pid is the Popen's).
AS_HOST = 'hostname "$0" && exec "$@"'


def unavailable() -> str | None:
    """Why hosts can't be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the tests as root)"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found (iproute2, util-linux)" if missing else None


def ip(*args: str) -> str:
    """Run `ip ARGS`; its output, or RuntimeError with its error line."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    """One host: a network namespace, its address on the bridge, and the processes started in it."""

    name: str  # its hostname
    netns: str
    address: str
    link: str = "eth0"  # its end of the veth, inside its namespace
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        """`args` as run on this host: in its network namespace, under its hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", AS_HOST, self.name, *args]

    def start(self, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start `args` on this host from the repo root, its output appended to `log`."""
        with log.open("ab") as output:
            process = subprocess.Popen(
                self.command(*args),
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(self, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `args` on this host to completion; its output as text."""
        return subprocess.run(
            self.command(*args), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    def cut_off(self) -> None:
        """Take its link down: the host runs on, but reaches nothing and nothing reaches it."""
        ip("-n", self.netns, "link", "set", self.link, "down")

    def pids(self) -> set[int]:
        """Every process in its network namespace: those started here and all they started."""
        return {int(pid) for pid in ip("netns", "pids", self.netns).split()}


class Fleet:
    """`count` hosts (host1, host2...) on a bridge whose own address, the gateway, is where the test's
    shared servers listen: the hosts reach it only through their veth. `close` removes it all."""

    def __init__(self, count: int) -> None:
        self.tag = f"rqf{os.getpid()}"  # at most 10 characters: link names take 15
        self.bridge = self.tag
        self.hosts: list[Host] = []
        self.made: list[str] = []  # namespaces made so far, for close()
        try:
            network = ipaddress.IPv4Network(free_network())
            self.gateway = str(network[1])
            ip("link", "add", self.bridge, "address", mac_of(self.gateway), "type", "bridge")
            ip("addr", "add", f"{self.gateway}/{network.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for number in range(1, count + 1):
                self.hosts.append(self.add_host(number, network[10 + number], network.prefixlen))
        except BaseException:
            self.close()
            raise

    def add_host(self, number: int, address: ipaddress.IPv4Address, prefix: int) -> Host:
        """host`number`: a namespace with `address` on its eth0, the other end of that veth on the bridge."""
        name = f"host{number}"
        netns, outside, inside = f"{self.tag}-{name}", f"{self.tag}{name}", f"{self.tag}in{number}"
        ip("netns", "add", netns)
        self.made.append(netns)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside, "address", mac_of(str(address)))
        ip("link", "set", inside, "netns", netns)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("-n", netns, "link", "set", inside, "name", "eth0")
        ip("-n", netns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        return Host(name, netns, str(address))

    def stop(self) -> None:
        """Kill every process in the hosts' namespaces (the ones started here and all they started)."""
        for netns in self.made:
            kill_all_in(netns)
        for host in self.hosts:
            for process in host.processes:
                process.wait(10)

    def close(self) -> None:
        """Stop every process, then remove the namespaces (their veths go with them) and the bridge."""
        try:
            self.stop()
        finally:
            for netns in self.made:
                ip("netns", "del", netns)
            if f" {self.bridge}:" in ip("-o", "link", "show"):
                ip("link", "del", self.bridge)


def kill_all_in(netns: str, timeout: float = 10) -> None:
    """SIGKILL every process in namespace `netns` (all of them started by this run) until none is left."""
    deadline = time.monotonic() + timeout
    while pids := ip("netns", "pids", netns).split():
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {', '.join(pids)} in {netns} outlived SIGKILL")
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def mac_of(address: str) -> str:
    """A locally administered MAC address made of an IPv4 address: unique on the bridge. (Left to the
    system, udev may derive a MAC from the interface's name: equal names would give equal MACs.)"""
    return "02:00:" + ":".join(f"{byte:02x}" for byte in ipaddress.ip_address(address).packed)


def free_network() -> str:
    """A 10.213.N.0/24 that no address of this machine is in: one per run, from its pid."""
    taken = ip("-o", "-4", "addr", "show")
    for step in range(254):
        third = (os.getpid() + step) % 254 + 1
        if f" 10.213.{third}." not in taken:
            return f"10.213.{third}.0/24"
    raise RuntimeError("no free 10.213.N.0/24 network on this machine")
