"""PID 1 of the network and PID namespaces of one run of RQ's suite (started by suite.py under `unshare`):
loopback up, a fresh redis-server on 127.0.0.1:6379 (the address RQ's tests hard-code), then
`python -m pytest ARGS` in the current directory. When this process ends, every process the run left
behind in the namespace dies with it. Usage: namespace.py WORKDIR PYTEST_ARGS..."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from config.connection import answers
from launcher.redis_server import find_redis_server

URL = "redis://127.0.0.1:6379/0"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: the interface's name and its flags
EXIT_GRACE = 30  # s that pytest may take to exit after writing its report (a worker left behind can hold it)
HUNG = 3  # our exit status when pytest wrote its report but had to be killed at exit


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def start_redis(data: Path) -> subprocess.Popen[bytes]:
    """A redis-server of this namespace's own on 127.0.0.1:6379, without persistence; waits for PING."""
    data.mkdir(parents=True, exist_ok=True)
    options = ["--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"]
    command = [find_redis_server(), *options, "--dir", str(data), "--logfile", str(data / "redis.log")]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not answers(URL, timeout=1):
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"redis-server did not start on 127.0.0.1:6379; see {data / 'redis.log'}")
        time.sleep(0.05)
    return server


def run_pytest(args: list[str], report: Path) -> int:
    """`python -m pytest ARGS --junitxml=REPORT`; its exit status, or HUNG if it wrote the report and
    then did not exit within EXIT_GRACE (RQ's worker-pool tests can leave a process that holds it)."""
    # -P: RQ comes from site-packages (the installed version), not the source tree in the current directory.
    pytest = subprocess.Popen([sys.executable, "-P", "-m", "pytest", *args, f"--junitxml={report}"])
    reported_at = None
    while (status := pytest.poll()) is None:
        if reported_at is None and report.exists():
            reported_at = time.monotonic()
        if reported_at is not None and time.monotonic() - reported_at > EXIT_GRACE:
            print(f"pytest wrote {report} but had not exited {EXIT_GRACE} s later: killed", flush=True)
            return HUNG
        time.sleep(0.5)
    return status


def main(workdir: Path, args: list[str]) -> int:
    """Run RQ's suite here, once it is sure this is a fresh namespace with nothing on 6379."""
    if os.getpid() != 1:
        sys.exit("namespace.py runs as PID 1 of a namespace of its own: unshare --net --pid --fork")
    loopback_up()
    if answers(URL, timeout=1):
        sys.exit("something already answers on 127.0.0.1:6379 in this namespace")
    start_redis(workdir / "redis")
    return run_pytest(args, workdir / "junit.xml")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
