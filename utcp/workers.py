"""Serving one UDP port from several processes: a group of SO_REUSEPORT sockets.

Python runs one core's worth of protocol per process, so a server that should use every
core runs N processes, each with its own loop, endpoint and socket bound to the same port
with `reuse_port=True`. The kernel then picks one socket of the group for every datagram
that arrives. By default it hashes the 4-tuple, so a peer's datagrams keep reaching the
same process as long as the peer's address and the group stay the same; each worker
knows only its own connections and answers a segment for any other with RST
(RFC 9293 §3.10.7.1), so a datagram that reached the wrong worker would reset a
connection living in another (in secure mode that RST is not authenticated and the
client ignores it: the connection stalls until it times out instead).

Two things change which socket the kernel picks:

- the peer's address: secure mode moves a connection to the new address of an
  authenticated segment (NAT rebinding, docs/secure-mode.md), and the new 4-tuple
  hashes anywhere. `steer_by_client_port` attaches a classic BPF program
  (SO_ATTACH_REUSEPORT_CBPF) that picks the socket by the TCP header's source port
  instead, the first two bytes of every client datagram: the client's own port, which
  no NAT rewrites (it is inside the payload) and the one field secure mode finds a moved
  connection by (`SecureLayer.rebind`). The price: clients that all use one source port
  (peer-to-peer setups that bind a fixed port) land on one worker.
- the group: a worker that dies leaves it, the kernel moves the last socket into its slot
  (reuseport_detach_sock), and connections of other workers may hash elsewhere. A dead
  worker's connections are lost; `run_workers` reports the death and keeps the others
  serving rather than pretend the group is whole.

`run_workers` forks the processes before any event loop exists (a loop does not survive
fork), waits for all to be bound, forwards SIGINT/SIGTERM to them and reaps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

# linux/asm-generic/socket.h; Python's socket module does not export it
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
MAX_WORKERS = 64

# classic BPF opcodes (linux/filter.h)
_BPF_LD_H_ABS = 0x00 | 0x08 | 0x20
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
_BPF_RET_A = 0x06 | 0x10


def client_port_program(count: int) -> list[tuple[int, int, int, int]]:
    """The CBPF program: socket index = the client's TCP source port % count.

    For UDP the kernel runs a reuseport program with the packet's data at the UDP payload
    (run_bpf_filter pulls the UDP header), so offset 0 is the TCP header. A datagram too
    short to load from ends the program with 0: socket 0, which drops it as malformed.
    """
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"count must be 1-{MAX_WORKERS}, not {count}")
    return [(_BPF_LD_H_ABS, 0, 0, 0), (_BPF_ALU_MOD_K, 0, 0, count), (_BPF_RET_A, 0, 0, 0)]


def steer_by_client_port(sock: socket.socket, count: int) -> None:
    """Attach `client_port_program(count)` to the reuseport group `sock` belongs to.

    The program belongs to the group, not the socket: every worker may attach the same
    one. Raises OSError where the kernel has no SO_ATTACH_REUSEPORT_CBPF (not Linux, or
    before 4.5).
    """
    if not sys.platform.startswith("linux"):
        raise OSError(f"SO_ATTACH_REUSEPORT_CBPF is Linux's; not on {sys.platform}")
    code = b"".join(struct.pack("=HBBI", *insn) for insn in client_port_program(count))
    filt = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel
    # copies the program during the call, so `filt` need only outlive it
    fprog = struct.pack("@HP", len(code) // 8, ctypes.addressof(filt))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


@dataclass
class Worker:
    """What a worker process is told: which one it is, and where to serve."""

    index: int
    count: int
    host: str
    port: int
    _ready_fd: int = -1

    def ready(self, port: int) -> None:
        """Tell the parent this worker is bound (once); the port confirms it is the group's."""
        if self._ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, f"{self.index} {port}\n".encode())
                os.close(self._ready_fd)
            self._ready_fd = -1

    def say(self, text: str) -> None:
        """One line on stdout in one write(): the workers share the pipe, and a line of
        at most PIPE_BUF bytes written at once is never interleaved with another's."""
        sys.stdout.flush()
        line = f"worker {self.index} (pid {os.getpid()}): {text}\n".encode()
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), line)


WorkerMain = Callable[[Worker], Coroutine[Any, Any, None]]


def _child(worker: Worker, main: WorkerMain) -> int:
    """The worker's whole life: its own loop, ended by SIGINT or SIGTERM."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main(worker))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    except SystemExit as exc:
        # sys.exit() and sys.exit(0) are success, as for any Python program
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 0  # Ctrl-C before the loop's handler was in place: a stop all the same
    except BaseException as exc:  # reported, then the process ends
        print(f"utcp: worker {worker.index} (pid {os.getpid()}) failed: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _end_with_parent(parent: int) -> None:
    """A parent killed outright (SIGKILL, OOM) forwards nothing: without this its workers
    would serve on as orphans, holding the port. Linux's PR_SET_PDEATHSIG sends them
    SIGTERM, which stops them as the parent's forwarded signal would."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _reserve_port(host: str) -> socket.socket:
    """Port 0 asks for any port, but N sockets binding port 0 get N different ones: the
    parent binds one member of the group first, and leaves once every worker has joined."""
    family, type_, proto, _, addr = socket.getaddrinfo(
        host, 0, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(addr)
    return sock


def run_workers(count: int, main: WorkerMain, *, host: str, port: int,
                on_ready: Callable[[int, list[int]], None] | None = None,
                ready_timeout: float = 30.0, err: Any = None) -> int:
    """Fork `count` processes each running `main(Worker)` in its own loop; 0 if all ended
    cleanly after SIGINT/SIGTERM, 1 if any died or failed to start.

    `main` must create its server with `reuse_port=True` on `worker.port` and call
    `worker.ready(bound_port)`. `on_ready(port, pids)` runs in the parent once every
    worker is bound. Call this before any event loop runs in the process.
    """
    err = err if err is not None else sys.stderr
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"count must be 1-{MAX_WORKERS}, not {count}")
    placeholder = _reserve_port(host) if port == 0 else None
    if placeholder is not None:
        port = placeholder.getsockname()[1]
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    group = _Group(count, err)
    old = {sig: signal.signal(sig, group.forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        for index in range(count):
            if group.stopping:
                break  # a signal during startup: start no more
            pid = os.fork()
            if pid == 0:  # the worker
                _be_worker(functools.partial(Worker, index, count, host, port, write_fd), main,
                           parent=parent, handlers=old, read_fd=read_fd,
                           placeholder=placeholder)
            group.pids[pid] = index
        os.close(write_fd)
        write_fd = -1
        ready = _wait_ready(read_fd, count, ready_timeout)
        if placeholder is not None:
            placeholder.close()
            placeholder = None
        if len(ready) < count and not group.stopping:
            print(f"utcp: only {len(ready)} of {count} workers started", file=err, flush=True)
            group.failed = True
            group.forward(signal.SIGTERM, None)
        elif on_ready is not None and not group.stopping:
            on_ready(port, sorted(group.pids))
        group.reap()
    finally:
        if placeholder is not None:
            placeholder.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        group.terminate()  # only if this function itself failed: leave no orphans
    return 1 if group.failed else 0


def _be_worker(worker: Callable[[], Worker], main: WorkerMain, *, parent: int,
               handlers: dict[signal.Signals, Any], read_fd: int,
               placeholder: socket.socket | None) -> NoReturn:
    """The forked child: the parent's signal handlers undone, its copies of the parent's
    descriptors closed, then `main`; it never returns into the parent's code (os._exit,
    whatever happens), so a worker cannot go on to run the rest of the parent's program;
    even its Worker is made inside that guard."""
    status = 1
    try:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        _end_with_parent(parent)
        os.close(read_fd)
        if placeholder is not None:
            placeholder.close()  # the child's copy would keep it in the group
        status = _child(worker(), main)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class _Group:
    """The parent's view of its workers: their pids, whether a signal asked them to stop
    (then a worker's end is expected, not a failure), and whether any failed."""

    def __init__(self, count: int, err: Any) -> None:
        self.count = count
        self.err = err
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.failed = False

    def forward(self, signum: int, _frame: object) -> None:
        """SIGINT/SIGTERM in the parent: every worker is asked to stop."""
        self.stopping = True
        self.terminate()

    def terminate(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reap(self) -> None:
        """Wait for every worker, reporting each that dies before it was asked to stop,
        while the others go on serving."""
        while self.pids:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid not in self.pids:
                continue
            index = self.pids.pop(pid)
            # stopped before its loop had a handler in place: SIGTERM's default, no failure
            clean = os.waitstatus_to_exitcode(status) == 0 or (
                self.stopping and os.WIFSIGNALED(status)
                and os.WTERMSIG(status) in (signal.SIGTERM, signal.SIGINT))
            if not clean or not self.stopping:
                self.failed = True
                serving = f"; {len(self.pids)} of {self.count} still serving"
                print(f"utcp: worker {index} (pid {pid}) died: {_describe_status(status)}"
                      f"{'' if self.stopping else serving}", file=self.err, flush=True)


def _wait_ready(fd: int, count: int, timeout: float) -> set[int]:
    """Indices of the workers that said they are bound; short if one ended first."""
    ready: set[int] = set()
    buf = b""
    deadline = time.monotonic() + timeout
    while len(ready) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            readable, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break  # every worker has written or ended
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError, IndexError):
                ready.add(int(line.split()[0]))
    return ready


def reuse_port_sockets(sockets: Iterable[socket.socket], count: int, *, steer: bool) -> None:
    """After a worker's server is bound: check SO_REUSEPORT is set and, if asked, steer."""
    for sock in sockets:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            raise OSError(f"{sock!r} has no SO_REUSEPORT: workers cannot share its port")
        if steer and count > 1:
            steer_by_client_port(sock, count)
