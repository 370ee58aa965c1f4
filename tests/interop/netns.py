"""Private network namespaces for the interop tests and `benchmarks.link`.

A `Netns` is created with `ip netns add` under a name unique to this process
(`utcp-t<pid>-<n>`) and is always deleted by its context manager, also when the body
raises. Python 3.11 has no `os.setns`, so `Netns.inside()` calls libc's `setns` on the
*current thread* only: sockets and TUN fds created meanwhile belong to the namespace for
good, and the thread goes back to where it was on exit. `inside()` may be held across
`await` (utcp's calls resolve the address before they create their socket), and nests:
concurrent holders in one thread must all name the same namespace, which is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import itertools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
PREFIX = "utcp-t"
COMMAND_TIMEOUT = 30.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_counter = itertools.count(1)
_local = threading.local()
T = TypeVar("T")


def own_prefix(pid: int | None = None) -> str:
    """Every namespace this process creates starts with this."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-"


def run(args: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command line; on failure raise with its stderr in the message."""
    proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def netns_names() -> list[str]:
    """`ip netns list`, names only."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def own_namespaces(pid: int | None = None) -> list[str]:
    prefix = own_prefix(pid)
    return [name for name in netns_names() if name.startswith(prefix)]


def remove_stale() -> list[str]:
    """Delete namespaces left by test processes that no longer exist (a killed run)."""
    removed = []
    for name in netns_names():
        m = re.fullmatch(rf"{re.escape(PREFIX)}(\d+)-.*", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def _capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


_probe_result: str | None = None
_probe_done = False


def missing_prerequisite(*commands: str) -> str | None:
    """Why this machine cannot run the namespace tests, or None if it can.

    The privileges are probed for real once (create and delete a namespace), since a
    container may grant CAP_NET_ADMIN and still refuse the mount `ip netns add` needs.
    """
    global _probe_done, _probe_result
    caps = _capabilities()
    if not caps >> CAP_NET_ADMIN & 1:
        return "needs CAP_NET_ADMIN (run as root) to create network namespaces"
    if not caps >> CAP_SYS_ADMIN & 1:
        return "needs CAP_SYS_ADMIN (run as root) for ip netns add and setns()"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (the TUN driver)"
    for cmd in ("ip", "ss", *commands):
        if shutil.which(cmd) is None:
            package = {"ip": "iproute2", "ss": "iproute2", "tc": "iproute2",
                       "nft": "nftables"}.get(cmd, cmd)
            return f"needs the {cmd!r} command (apt-get install {package})"
    if not _probe_done:
        _probe_done = True
        name = f"{own_prefix()}probe"
        try:
            run(["ip", "netns", "add", name])
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _probe_result = f"cannot create a network namespace: {exc}"
        finally:
            run(["ip", "netns", "del", name], check=False)
    return _probe_result


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def current_netns_inode() -> int:
    """Identifies the namespace the calling thread is in."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class Netns:
    """One namespace: `with Netns.create() as ns:` guarantees `ip netns del`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.deleted = False

    @classmethod
    @contextlib.contextmanager
    def create(cls, tag: str = "") -> Iterator[Netns]:
        name = f"{own_prefix()}{next(_counter)}{tag}"
        ns = cls(name)
        try:
            run(["ip", "netns", "add", name])
            ns.ip("link", "set", "lo", "up")
            yield ns
        finally:
            ns.delete()

    def delete(self) -> None:
        if self.deleted:
            return
        self.deleted = True
        run(["ip", "netns", "del", self.name], check=False)
        if self.name in netns_names():
            raise RuntimeError(f"namespace {self.name} is still listed after ip netns del")

    # -------------------------------------------------------------- commands in it

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args]).stdout

    def exec(self, *args: str, check: bool = True, stdin: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *args], check=check, stdin=stdin)

    def nft(self, script: str) -> None:
        self.exec("nft", "-f", "-", stdin=script)

    def sysctl(self, key: str) -> str:
        return self.exec("sysctl", "-n", key).stdout.strip()

    # -------------------------------------------------------------- entering it

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The current thread is in this namespace for the body (see the module doc).

        Holders are counted per thread: the thread returns home when the last one
        leaves, whatever the order in which interleaved coroutines leave.
        """
        depth = getattr(_local, "depth", 0)
        if depth:
            if _local.name != self.name:
                raise RuntimeError(f"thread is inside {_local.name}; cannot enter {self.name}"
                                   " at the same time")
        else:
            if self.deleted:
                raise RuntimeError(f"namespace {self.name} was deleted")
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(target)
                finally:
                    os.close(target)
            except BaseException:
                os.close(home)
                raise
            _local.home, _local.name = home, self.name
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth -= 1
            if _local.depth == 0:
                home, _local.home, _local.name = _local.home, None, None
                try:
                    _setns(home)
                finally:
                    os.close(home)

    def enter_for_good(self) -> None:
        """For a child process (benchmarks): move this thread here and stay."""
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


class NamespaceLoop:
    """An event loop on a thread of its own that lives in `ns` for good.

    Everything utcp does for the sockets of this loop (creating them, and the throwaway
    socket with which it asks the kernel for the route's MTU when a connection starts)
    then happens in the sockets' own namespace, as in a process that lives there.
    Coroutines run on it with `await nsloop.run(coro)` from another loop.
    """

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"loop in {ns.name}",
                                        daemon=True)

    def _main(self) -> None:
        try:
            self.ns.enter_for_good()
            self.loop = asyncio.new_event_loop()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def __enter__(self) -> NamespaceLoop:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError(f"the event loop thread in {self.ns.name} did not stop")

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # let transports' connection_lost callbacks run
        asyncio.get_running_loop().stop()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this loop; await its result from the calling loop."""
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))
