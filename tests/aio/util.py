"""Helpers for the real-socket tests: waiting, payloads, servers, a UDP relay."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import pytest
import structlog

import utcp
from utcp import wire

HOST = "127.0.0.1"
TIMEOUT = 30.0          # around every wait: generous, a loaded 2-core machine never hits it
MSL = 0.2               # TIME_WAIT lasts 0.4 s in these tests
FAST = utcp.Config(msl=MSL)


def spy_call_at(monkeypatch: pytest.MonkeyPatch,
                keep: Callable[[float, Any], bool]) -> list[tuple[float, Any]]:
    """(when, callback) of each call_at the running loop gets from now on for which
    `keep(when, callback)` holds; the calls themselves go through. Skips on a loop
    whose methods cannot be replaced on the instance (uvloop)."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, Any]] = []
    real_call_at = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if keep(when, callback):
            seen.append((when, callback))
        return real_call_at(when, callback, *args, **kwargs)
    try:
        monkeypatch.setattr(loop, "call_at", call_at)
    except AttributeError:
        pytest.skip("this loop's methods cannot be replaced on the instance (uvloop)")
    return seen


def needs_patchable(module: ModuleType, seam: str) -> None:
    """Skip a test that observes `seam` by patching it, when `module` is the compiled one:
    its calls go straight to the compiled function or class, past any patch. CI runs the
    suite on the pure-Python build too, where the test runs."""
    if not (module.__file__ or "").endswith(".py"):
        pytest.skip(f"{module.__name__} is compiled: its calls of {seam} cannot be observed by"
                    " patching (the pure-Python run covers this)")


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes | bytearray) -> bytes:
    return hashlib.sha256(data).digest()


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT,
                     interval: float = 0.002, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test (not hang it) after `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def has_ipv6() -> bool:
    """Whether this machine can bind ::1 (a container may have IPv6 off)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_udp_port(host: str = HOST) -> int:
    """A port nothing is bound to (at the moment of asking)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_of(server: utcp.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The benchmark's connect+close server: one byte answered, then close at EOF."""
    await reader.readexactly(1)
    writer.write(b"a")
    await writer.drain()
    while await reader.read(1024):
        pass
    writer.close()


@contextlib.asynccontextmanager
async def serving(server: utcp.Server) -> AsyncIterator[utcp.Server]:
    """`async with server`, except when the test fails inside: then the server is closed
    without waiting for connections the failed test left open, so a failure reports at
    once instead of hanging until the timeout."""
    try:
        yield server
    except BaseException:
        server.close()
        raise
    server.close()
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serve(handler: Callable[..., Any], host: str = HOST,
                **kwds: Any) -> AsyncIterator[utcp.Server]:
    """`utcp.start_server` on an ephemeral port, served as by `serving`."""
    kwds.setdefault("config", FAST)
    async with serving(await utcp.start_server(handler, host, 0, **kwds)) as server:
        yield server


def echo_server(host: str = HOST, **kwds: Any) -> contextlib.AbstractAsyncContextManager[
        utcp.Server]:
    return serve(echo_handler, host, **kwds)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    async with asyncio.timeout(TIMEOUT):
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def transport_of(writer: asyncio.StreamWriter) -> utcp.UtcpTransport:
    transport = writer.transport
    assert isinstance(transport, utcp.UtcpTransport)
    return transport


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: Any = None  # uvloop's UDP transport is no asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.relay._received(self.name, data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a peer that is not up: the relay is a lossy network, like any


class Relay:
    """Two UDP sockets back to back: a NAT-like path between peers on fixed ports.

    Peer A talks to `port_for_a`, peer B to `port_for_b`; what A sends leaves the other
    socket towards B and the other way round. The TCP header's ports are rewritten the
    way the receiving peer knows the sender (as a NAT that understood TCP would).
    `hold_first`: keep every datagram until both sides have sent one, so that the two
    first SYNs cross "on the wire" as they do between distant peers. `drop`: a dead path.
    """

    def __init__(self, a_port: int, b_port: int, *, hold_first: bool = True) -> None:
        self.a_port = a_port
        self.b_port = b_port
        self.hold = hold_first
        self.drop = False
        self.seen: dict[str, list[wire.Segment]] = {"a": [], "b": []}
        self._held: list[tuple[str, bytes]] = []
        self.sides: dict[str, _Side] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name in ("a", "b"):
            _, side = await loop.create_datagram_endpoint(
                lambda name=name: _Side(self, name), local_addr=(HOST, 0))  # type: ignore[misc]
            self.sides[name] = side

    @property
    def port_for_a(self) -> int:
        return self._port("a")

    @property
    def port_for_b(self) -> int:
        return self._port("b")

    def _port(self, name: str) -> int:
        transport = self.sides[name].transport
        assert transport is not None
        port: int = transport.get_extra_info("sockname")[1]
        return port

    def _received(self, name: str, data: bytes) -> None:
        self.seen[name].append(wire.parse(data))
        if self.drop:
            return
        if self.hold:
            self._held.append((name, data))
            if self.seen["a"] and self.seen["b"]:
                self.hold = False
                held, self._held = self._held, []
                for n, d in held:
                    self._forward(n, d)
            return
        self._forward(name, data)

    def _forward(self, name: str, data: bytes) -> None:
        # from A (arrived on side "a") out of side "b" to B, and the other way round
        out, dst = ("b", self.b_port) if name == "a" else ("a", self.a_port)
        src = self._port(out)
        transport = self.sides[out].transport
        assert transport is not None
        transport.sendto(src.to_bytes(2, "big") + dst.to_bytes(2, "big") + data[4:], (HOST, dst))

    def close(self) -> None:
        for side in self.sides.values():
            if side.transport is not None:
                side.transport.close()


class StateLog:
    """A structlog processor keeping utcp's events (one per state change, RTO, drop...)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        self.events.append(dict(event_dict, t=time.monotonic()))
        raise structlog.DropEvent

    def transitions(self, conn_name: str) -> list[tuple[str, str]]:
        return [(e["old"], e["new"]) for e in self.events
                if e.get("event") == "state" and e.get("conn") == conn_name]

    def path(self, conn_name: str) -> list[str]:
        """Every state the connection was in, in order, from its first transition.

        A later connection under the same name (the same peer address) continues the
        list; a server's shows LISTEN again where it starts.
        """
        path: list[str] = []
        for old, new in self.transitions(conn_name):
            if not path or path[-1] != old:
                path.append(old)
            path.append(new)
        return path

    def times_of(self, conn_name: str, state: str) -> list[float]:
        """When (time.monotonic) the connection entered `state`, each time it did."""
        return [e["t"] for e in self.events
                if e.get("event") == "state" and e.get("conn") == conn_name
                and e["new"] == state]

    def time_of(self, conn_name: str, state: str) -> float:
        """When the connection first entered `state`."""
        times = self.times_of(conn_name, state)
        if not times:
            raise KeyError(f"{conn_name} never entered {state}")
        return times[0]


def conn_name(transport: asyncio.BaseTransport) -> str:
    """The name utcp's log uses for the connection under `transport`."""
    name: str = transport.get_extra_info("connection").name
    return name
