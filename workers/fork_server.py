"""A fork server: a process forked from a worker once, which forks the worker's work-horses from then on,
so that the worker itself is not forked again.

After a fork, each page the two processes share is copied at the first write to it, by either. A worker
forked for every job wrote some 800 pages after each fork (its claim, monitoring and record of the job),
a page fault each; the server's own loop writes a few dozen. A fork-per-job worker drains no-op jobs 7%
faster so (115 -> 123 jobs/s). The server is also its process's only thread, where a worker runs RQ's
command listener beside its main one. A horse is a copy of the worker as the server found it, and of what
each request brings (workers/forking.py: the modules to import, the connections the last horse gave back).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any, NoReturn

KILLED = signal.SIGKILL  # the wait status of a horse whose server died before it could say (a SIGKILL)


class ForkServer:
    """Forks horses on request, in a process of its own started at the first request (and again if it
    died); sends back each horse's pid, and its exit status (with its rusage) through a pipe of its own,
    readable once the horse has exited."""

    def __init__(
        self, setup: Callable[[], None], prepare: Callable[[Any], None], run: Callable[..., NoReturn]
    ):
        self.setup = setup  # in the server as it starts
        self.prepare = prepare  # in the server before each fork: the request
        self.run = run  # in each horse: the request, and the fds sent with it
        self.socket: socket.socket | None = None
        self.pid = 0

    def fork(self, request: Any, fds: list[int], held: list[int]) -> tuple[int, int]:
        """A horse forked for `request`, which gets `fds` (closed here, as they were sent): its pid, and the
        pipe that brings its exit status once it has ended. `held`: the other ends, which the server must
        not hold (a pipe held open there would never end)."""
        exit_read, exit_write = os.pipe()
        try:
            for attempt in (1, 2):  # a server that died is replaced, once
                if self.socket is None:
                    self.start([*fds, *held, exit_read, exit_write])
                assert self.socket is not None
                try:
                    socket.send_fds(self.socket, [pickle.dumps(request)], [*fds, exit_write])
                    reply = self.socket.recv(64)
                    if reply:
                        return int(reply), exit_read
                except OSError:
                    if attempt == 2:
                        raise
                self.stop()
            raise OSError("the fork server ended without forking")
        except BaseException:
            os.close(exit_read)
            raise
        finally:
            os.close(exit_write)
            for fd in fds:
                os.close(fd)

    def start(self, inherited: list[int]) -> None:
        """Fork the server, which closes the `inherited` fds."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for fd in inherited:
                    os.close(fd)
                self.serve(theirs)
            finally:
                os._exit(1)
        theirs.close()
        self.socket, self.pid = ours, pid

    def stop(self) -> None:
        """End the server (its horses run on: they end themselves); a next request starts a new one."""
        if self.socket is not None:
            with suppress(OSError):  # (a process forked from the worker since may hold this socket too)
                self.socket.shutdown(socket.SHUT_RDWR)
            self.socket.close()
            self.socket = None
        if self.pid:
            with suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def serve(self, requests: socket.socket) -> NoReturn:
        """The server: fork a horse per request, reap each horse and write its status to its exit pipe;
        until the worker's end of the socket closes, or the worker ends."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's to handle (a Ctrl-C reaches both)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        worker = os.pidfd_open(os.getppid())
        self.setup()
        poller = select.poll()
        poller.register(requests, select.POLLIN)
        poller.register(worker, select.POLLIN)
        exits: dict[int, tuple[int, int]] = {}  # pidfd: the horse's pid, its exit pipe
        while True:
            for fd, _ in poller.poll():
                if fd == worker:
                    os._exit(0)
                if fd != requests.fileno():
                    pid, exit_pipe = exits.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    _, status, rusage = os.wait4(pid, 0)
                    with suppress(OSError):  # the worker closed it: it no longer waits for this one
                        os.write(exit_pipe, pickle.dumps((status, rusage)))
                    os.close(exit_pipe)
                    continue
                message, fds, _, _ = socket.recv_fds(requests, 1 << 20, 3)
                if not message:
                    os._exit(0)
                request, exit_pipe = pickle.loads(message), fds.pop()
                with suppress(Exception):  # what it prepares saves the horse time, no more
                    self.prepare(request)
                pid = os.fork()
                if pid == 0:
                    requests.close()
                    os.close(worker)
                    for pidfd, (_, pipe) in exits.items():
                        os.close(pidfd)
                        os.close(pipe)
                    os.close(exit_pipe)
                    self.run(request, *fds)
                for sent in fds:
                    os.close(sent)
                pidfd = os.pidfd_open(pid)
                exits[pidfd] = pid, exit_pipe
                poller.register(pidfd, select.POLLIN)
                requests.send(str(pid).encode())


def exit_status(exit_pipe: int, pid: int) -> tuple[int, Any]:
    """A horse's wait status and rusage, from its exit pipe (blocks until it ended). A server that died
    first sent none: the horse is killed (it may run on, if nothing made it die with the server)."""
    data = b""
    while chunk := os.read(exit_pipe, 65536):
        data += chunk
    if data:
        status, rusage = pickle.loads(data)
        return status, rusage
    with suppress(ProcessLookupError):
        os.killpg(pid, KILLED)
    return KILLED, None
