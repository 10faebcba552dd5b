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
import resource
import select
import signal
import socket
from collections.abc import Callable
from contextlib import suppress
from functools import cache
from typing import Any, NamedTuple, NoReturn

CAP_SYS_NICE = 23  # linux/capability.h
KILLED = int(signal.SIGKILL)  # the wait status of a horse killed after its server died first
STOPS = {signal.SIGTERM, signal.SIGINT}  # what asks a worker to stop
LOWEST = 19  # the nice value a horse forked ahead of its job waits at (workers/forking.py)


class Forked(NamedTuple):
    """A horse the server forked: its pid (and process group), a pidfd to signal it by (its pid may be
    another process's once the server has reaped it), the pipe that brings its exit status, and what the
    server's `prepare` noted for it."""

    pid: int
    pidfd: int
    exit: int
    note: Any


class ServerEnded(OSError):
    """The fork server ended (killed?) before it forked what was asked."""


class Order:
    """A horse asked of the server without waiting for it: its exit pipe, and once its reply is read (in
    the order they were sent), the horse."""

    def __init__(self, exit_read: int) -> None:
        self.exit_read = exit_read
        self.forked: Forked | None = None


class ForkServer:
    """Forks horses on request, in a process of its own started at the first request (and again if it
    died); sends back each horse's pid and a pidfd, and its exit status (with its rusage) through a pipe
    of its own, readable once the horse has exited."""

    def __init__(
        self,
        setup: Callable[[], None],
        prepare: Callable[[Any], tuple[Any, int | None]],
        run: Callable[..., NoReturn],
    ):
        self.setup = setup  # in the server as it starts
        self.prepare = prepare  # in the server before each fork: the request -> a note, the horse's nice
        self.run = run  # in each horse: the request, and the fds sent with it
        self.socket: socket.socket | None = None
        self.pid = 0
        self.orders: list[Order] = []  # sent, their replies not read yet

    def fork(self, request: Any, fds: list[int], held: list[int]) -> Forked:
        """A horse forked for `request`, which gets `fds` (closed here, as they were sent). `held`: the
        other ends, which a server started now must not hold (a pipe held open there would never end)."""
        try:
            for attempt in (1, 2):  # a server that died is replaced, once
                if self.orders:  # their replies come first
                    with suppress(OSError):
                        self.forked(self.orders[-1])
                try:
                    return self.forked(self.send(request, fds, held))
                except (BrokenPipeError, ConnectionResetError, ServerEnded):
                    if attempt == 2:
                        raise
            raise AssertionError  # (the loop returns or raises)
        finally:
            close_all(fds)

    def order(self, request: Any, fds: list[int], held: list[int]) -> Order:
        """Ask for a horse for `request` without waiting for it (`forked` reads the reply); `fds` and
        `held` as in `fork`."""
        try:
            return self.send(request, fds, held)
        finally:
            close_all(fds)

    def send(self, request: Any, fds: list[int], held: list[int]) -> Order:
        """Send a request (the server started first if it isn't running): its order."""
        exit_read, exit_write = os.pipe()
        try:
            if self.socket is None:
                self.start([*fds, *held, exit_read, exit_write])
            assert self.socket is not None
            socket.send_fds(self.socket, [pickle.dumps(request)], [*fds, exit_write])
        except BaseException:
            os.close(exit_read)
            self.stop()
            raise
        finally:
            os.close(exit_write)
        order = Order(exit_read)
        self.orders.append(order)
        return order

    def forked(self, order: Order) -> Forked:
        """The horse of an order, once the replies before its own are read; ServerEnded if the server
        ended first (all orders still out fail with it, their pipes closed)."""
        while order.forked is None and order in self.orders:
            first = self.orders[0]
            assert self.socket is not None
            try:
                reply, pidfds, _, _ = socket.recv_fds(self.socket, 1 << 16, 1)
            except ConnectionResetError:
                reply, pidfds = b"", []
            if not (reply and pidfds):
                self.stop()
                break
            os.set_inheritable(pidfds[0], False)
            pid, note = pickle.loads(reply)
            first.forked = Forked(pid, pidfds[0], first.exit_read, note)
            self.orders.pop(0)
        if order.forked is None:
            raise ServerEnded("the fork server ended without forking")
        return order.forked

    def start(self, inherited: list[int]) -> None:
        """Fork the server, which closes the `inherited` fds. A stop asked for meanwhile is held back: it
        would be raised inside the fork's own hooks, where Python drops it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for fd in inherited:
                    os.close(fd)
                self.serve(theirs, mask)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        self.socket, self.pid = ours, pid

    def stop(self) -> None:
        """End the server (its horses run on: they end themselves); a next request starts a new one. The
        orders out fail."""
        close_all([order.exit_read for order in self.orders])
        self.orders = []
        if self.socket is not None:
            with suppress(OSError):  # (a process forked from the worker since may hold this socket too)
                self.socket.shutdown(socket.SHUT_RDWR)
            self.socket.close()
            self.socket = None
        if self.pid:
            with suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def serve(self, requests: socket.socket, mask: Any) -> NoReturn:
        """The server: fork a horse per request, reap each horse and write its status to its exit pipe;
        until the worker's end of the socket closes, or the worker ends. It ignores SIGINT and SIGTERM
        (the worker's to handle, and a signal to the worker's process group reaches it too)."""
        for stop in STOPS:
            signal.signal(stop, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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
                if fd == requests.fileno():
                    held = [worker, *exits, *(pipe for _, pipe in exits.values())]
                    pidfd, pid, exit_pipe = self.fork_requested(requests, held)
                    exits[pidfd] = pid, exit_pipe
                    poller.register(pidfd, select.POLLIN)
                else:
                    poller.unregister(fd)
                    reap(fd, *exits.pop(fd))

    def fork_requested(self, requests: socket.socket, held: list[int]) -> tuple[int, int, int]:
        """In the server: fork the horse the next request asks for (or exit, if the worker's end closed),
        and send back its pid and a pidfd; its pidfd, pid and exit pipe. `held`: fds the horse closes."""
        message, fds, _, _ = socket.recv_fds(requests, 1 << 20, 3)
        if not message:
            os._exit(0)
        for received in fds:  # as os.pipe() made them: not left open in what a job runs
            os.set_inheritable(received, False)
        request, exit_pipe = pickle.loads(message), fds.pop()
        note, nice = self.prepare(request)
        own = os.getpriority(os.PRIO_PROCESS, 0)
        if nice is not None:  # the horse's, from its start (the server's again after the fork)
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        pid = os.fork()
        if pid == 0:
            requests.close()
            for fd in (*held, exit_pipe):
                os.close(fd)
            self.run(request, *fds)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, own)
        with suppress(OSError):  # its own process group before the worker may signal it
            os.setpgid(pid, pid)
        for sent in fds:
            os.close(sent)
        pidfd = os.pidfd_open(pid)
        socket.send_fds(requests, [pickle.dumps((pid, note))], [pidfd])
        return pidfd, pid, exit_pipe


@cache
def may_raise_priority() -> bool:
    """Whether this process (and its forks) may raise its priority back after lowering it: with
    CAP_SYS_NICE (root, as a rule; not in a container that drops it), or an RLIMIT_NICE that allows it."""
    with open("/proc/self/status") as status:
        caps = next((line.split()[1] for line in status if line.startswith("CapEff:")), "0")
    if int(caps, 16) & (1 << CAP_SYS_NICE):
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - soft <= os.getpriority(os.PRIO_PROCESS, 0)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def reap(pidfd: int, pid: int, exit_pipe: int) -> None:
    """In the server: reap a horse that ended, and write its status and rusage to its exit pipe."""
    os.close(pidfd)
    _, status, rusage = os.wait4(pid, 0)
    with suppress(OSError):  # the worker closed it: it no longer waits for this one
        os.write(exit_pipe, pickle.dumps((status, rusage)))  # one write: under PIPE_BUF
    os.close(exit_pipe)


def exit_status(exit_pipe: int, pidfd: int) -> tuple[int, Any]:
    """A horse's wait status and rusage, from its exit pipe (blocks until it ended). A server that died
    first sent none: the horse is killed (it may run on, if nothing made it die with the server)."""
    if data := os.read(exit_pipe, 65536):
        status, rusage = pickle.loads(data)
        return status, rusage
    with suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, KILLED)
    return KILLED, None


def ended(exit_pipe: int) -> bool:
    """Whether a horse has ended (its status is there to read, or its server died)."""
    poller = select.poll()
    poller.register(exit_pipe, select.POLLIN)
    return bool(poller.poll(0))
