"""The kernel test bed: a private namespace, its TUN device, the bridge, and helpers
that open one utcp <-> Linux TCP connection either way and read the kernel's view of
it with `ss` (run inside the namespace with `ss -N`).

Everything (the TUN fd, the bridge's UDP sockets, utcp's UDP socket and the kernel's
TCP sockets) is created inside the namespace, so the traffic never leaves it. The test
fixture keeps the test's thread inside it throughout; the `inside()` calls here nest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import utcp
from tests.interop.bridge import KERNEL_IP, UTCP_IP, Bridge, open_tun
from tests.interop.netns import Netns, run

# The kernel's RTO floor is 200 ms; ours may be lower on a sub-millisecond path.
CONFIG = utcp.Config(msl=0.25, rto_min=0.1, rto_initial=0.5, rto_max=5.0, syn_retries=4)
TIMEOUT = 60.0  # for any one step: generous on a loaded 2-core machine


async def until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT,
                interval: float = 0.01) -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def within(aw: Awaitable[Any], what: str, timeout: float = TIMEOUT) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:.0f} s: {what}") from None


@dataclass
class Pair:
    """One connection: utcp's stream pair and the kernel's, and the kernel's 4-tuple."""

    utcp_client: bool
    u_reader: asyncio.StreamReader
    u_writer: asyncio.StreamWriter
    k_reader: asyncio.StreamReader
    k_writer: asyncio.StreamWriter
    kernel_addr: tuple[str, int]   # the kernel socket's own address
    utcp_addr: tuple[str, int]     # utcp as the kernel sees it: (10.77.0.2, utcp's UDP port)

    @property
    def kport(self) -> int:
        return self.kernel_addr[1]

    @property
    def uport(self) -> int:
        return self.utcp_addr[1]

    def u_state(self) -> utcp.State:
        return self.u_writer.get_extra_info("state")  # type: ignore[no-any-return]

    def u_stats(self) -> utcp.Stats:
        return self.u_writer.get_extra_info("stats")  # type: ignore[no-any-return]

    def u_conn(self) -> Any:
        return self.u_writer.get_extra_info("connection")

    def kernel_tcp_info(self) -> dict[str, int | bool]:
        """The head of the kernel socket's own TCP_INFO (struct tcp_info)."""
        sock = self.k_writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return {"state": raw[0], "timestamps": bool(raw[5] & 1), "sack": bool(raw[5] & 2),
                "wscale": bool(raw[5] & 4), "snd_wscale": raw[6] & 0x0F,
                "rcv_wscale": raw[6] >> 4}


@dataclass
class KernelBed:
    ns: Netns
    bridge: Bridge
    pairs: list[Pair] = field(default_factory=list)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls, ns: Netns | None = None) -> AsyncIterator[KernelBed]:
        """A bed in `ns` (which the caller then deletes), or in a namespace of its own."""
        with contextlib.ExitStack() as stack:
            if ns is None:
                ns = stack.enter_context(Netns.create("k"))
            tun = open_tun(ns)
            stack.callback(os.close, tun)
            bridge = Bridge(ns, tun, asyncio.get_running_loop())
            stack.callback(bridge.close)
            bed = cls(ns, bridge)
            try:
                yield bed
            finally:
                await bed._abort_all()

    async def _abort_all(self) -> None:
        for p in self.pairs:
            for w in (p.u_writer, p.k_writer):
                if not w.transport.is_closing() or w is p.k_writer:
                    w.transport.abort()
        for s in self._servers:
            s.close()
        await asyncio.sleep(0.01)  # let connection_lost callbacks run
        for s in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 5)

    # ------------------------------------------------------------------ connections

    async def pair(self, *, utcp_client: bool, config: utcp.Config = CONFIG) -> Pair:
        """Open one connection through the bridge and wait until both sides have it."""
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())

        async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await accepted.put((r, w))

        with self.ns.inside():
            if utcp_client:
                kserver = await asyncio.start_server(on_accept, KERNEL_IP, 0)
                self._servers.append(kserver)
                kport = kserver.sockets[0].getsockname()[1]
                udp_port = self.bridge.expose(kport)
                u_reader, u_writer = await within(
                    utcp.open_connection("127.0.0.1", udp_port, config=config),
                    "utcp connect to the kernel")
                k_reader, k_writer = await within(accepted.get(), "kernel accept")
            else:
                userver = await utcp.start_server(on_accept, "127.0.0.1", 0, config=config)
                self._servers.append(userver)
                uport = userver.sockets[0].getsockname()[1]
                k_reader, k_writer = await within(
                    asyncio.open_connection(UTCP_IP, uport), "kernel connect to utcp")
                u_reader, u_writer = await within(accepted.get(), "utcp accept")
        ksock = k_writer.get_extra_info("socket")
        pair = Pair(utcp_client, u_reader, u_writer, k_reader, k_writer,
                    ksock.getsockname(), ksock.getpeername())
        self.pairs.append(pair)
        return pair

    # ------------------------------------------------------------------ the kernel's view

    async def ss(self, *args: str) -> str:
        proc = await asyncio.to_thread(run, ["ss", "-N", self.ns.name, "-H", *args])
        return proc.stdout

    async def kernel_sockets(self, pair: Pair) -> list[tuple[str, str]]:
        """(state, info) of every kernel socket with the pair's 4-tuple, from `ss -tani`."""
        out = await self.ss("-tani")
        local = f"{pair.kernel_addr[0]}:{pair.kernel_addr[1]}"
        peer = f"{pair.utcp_addr[0]}:{pair.utcp_addr[1]}"
        found: list[list[str]] = []
        matching = False
        for line in out.splitlines():
            if line and not line[0].isspace():
                fields = line.split()
                matching = len(fields) >= 5 and fields[3] == local and fields[4] == peer
                if matching:
                    found.append([fields[0], ""])
            elif matching:
                found[-1][1] += " " + line.strip()
        return [(state, info.strip()) for state, info in found]

    async def kernel_states(self, pair: Pair) -> list[str]:
        return [state for state, _ in await self.kernel_sockets(pair)]

    async def wait_kernel_state(self, pair: Pair, state: str, timeout: float = TIMEOUT) -> None:
        """Poll `ss` until the kernel's socket for the pair is in `state` (ss's spelling)."""
        deadline = time.monotonic() + timeout
        while True:
            states = await self.kernel_states(pair)
            if state in states:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the kernel's socket never reached {state} in "
                                     f"{timeout:.0f} s; ss shows {states}")
            await asyncio.sleep(0.02)

    async def wait_kernel_gone(self, pair: Pair, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while states := await self.kernel_states(pair):
            if time.monotonic() > deadline:
                raise AssertionError(f"the kernel's socket is still there: {states}")
            await asyncio.sleep(0.02)

    async def kernel_info(self, pair: Pair) -> dict[str, str]:
        """`ss -tni` of the pair's ESTAB socket as {key: value}; bare words map to ""."""
        for state, info in await self.kernel_sockets(pair):
            if state == "ESTAB":
                out: dict[str, str] = {}
                for token in info.split():
                    key, _, value = token.partition(":")
                    out[key] = value
                return out
        raise AssertionError(f"no ESTAB kernel socket for {pair.kernel_addr}")
