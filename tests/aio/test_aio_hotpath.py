"""The asyncio layer's per-datagram and per-wake-up work (issue #13).

Counted, not timed: the socket calls and the port's internal calls a ping-pong costs on
the client, which a loaded machine cannot change.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from typing import Any

import pytest

import utcp
from tests.aio.util import (
    FAST,
    HOST,
    TIMEOUT,
    echo_server,
    needs_patchable,
    payload,
    port_of,
    spy_call_at,
)
from utcp.aio import batch, shutdown
from utcp.aio import port as port_module

PINGS = 60
WARM_UP = 10


async def _ping_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     count: int) -> None:
    msg = bytes(range(64))
    async with asyncio.timeout(TIMEOUT):
        for _ in range(count):
            writer.write(msg)
            assert await reader.readexactly(len(msg)) == msg


def _count_empty_reads(monkeypatch: pytest.MonkeyPatch, target: socket.socket,
                       counts: dict[str, int]) -> None:
    """Count, on `target` only, the receive calls and those that found nothing."""
    for name in ("recvmsg_into", "recvfrom_into"):
        real = getattr(socket.socket, name)

        def recv(sock: socket.socket, *args: Any, _real: Any = real) -> Any:
            if sock is not target:
                return _real(sock, *args)
            counts["reads"] += 1
            try:
                return _real(sock, *args)
            except BlockingIOError:
                counts["empty"] += 1
                raise
        monkeypatch.setattr(socket.socket, name, recv)


async def test_a_ping_pong_reads_once_per_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio's TCP transport reads once per wake-up; the port used to read until EAGAIN,
    a second system call (and a raised BlockingIOError) per datagram of a ping-pong."""
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        port = writer.transport._port  # type: ignore[attr-defined]
        await _ping_pong(reader, writer, WARM_UP)
        counts = {"reads": 0, "empty": 0}
        _count_empty_reads(monkeypatch, port.sock, counts)
        await _ping_pong(reader, writer, PINGS)
        monkeypatch.undo()
        assert counts["reads"] >= PINGS
        # one drain in LONE_READS + 1 wake-ups still probes for more (old code: every one)
        assert counts["empty"] <= PINGS // port_module.LONE_READS + 2, counts
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()


async def test_after_lone_reads_a_burst_is_drained_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading one datagram per wake-up must not lose or stall what comes after: a bulk
    transfer following a ping-pong (the port in its one-read mode) arrives whole, and
    the port goes back to draining the socket."""
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        port = writer.transport._port  # type: ignore[attr-defined]
        await _ping_pong(reader, writer, WARM_UP)
        assert port._lone_reads > 0  # type: ignore[attr-defined]
        data = payload(1 << 20, seed=13)
        writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(len(data)) == data
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()


async def test_no_send_call_for_a_round_without_output(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`process` asks the core for output once per round, and most rounds (the one after
    the events are delivered, and a wake-up for an ACK-less data segment) have none: the
    port's send path is not entered for an empty list (it was twice per ping)."""
    needs_patchable(port_module, "UdpPort._send")
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        await _ping_pong(reader, writer, WARM_UP)
        sizes: list[int] = []
        real = port_module.UdpPort._send

        def send(self: port_module.UdpPort, datagrams: list[Any]) -> None:
            sizes.append(len(datagrams))
            real(self, datagrams)
        monkeypatch.setattr(port_module.UdpPort, "_send", send)
        await _ping_pong(reader, writer, PINGS)
        monkeypatch.undo()
        assert sizes
        assert 0 not in sizes
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()


async def test_a_timer_already_due_is_not_a_timer_handle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The core defers the handshake's last ACK (and the first window update) to the
    next timer service at the same instant. The port runs such a due
    deadline by call_soon: a call_at(now) put a TimerHandle in the loop's heap, whose
    Python `__lt__` every later push and pop pays."""
    loop = asyncio.get_running_loop()
    due = spy_call_at(monkeypatch, lambda when, callback: (
        getattr(callback, "__func__", None) is port_module.UdpPort._on_timer
        and when <= loop.time()))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await utcp.start_server(handler, HOST, 0, config=FAST)
    try:
        for _ in range(5):
            async with asyncio.timeout(TIMEOUT):
                _, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
                writer.close()
                await writer.wait_closed()
        assert due == []
    finally:
        server.close()
        await server.wait_closed()


async def test_the_port_reads_asyncios_clock_directly() -> None:
    """asyncio's loop.time() is a Python frame around time.monotonic(); the port calls
    the clock itself, per wake-up and per write (it called loop.time() twice a ping).
    Another loop's clock (uvloop's) is its own, and the port asks the loop."""
    loop = asyncio.get_running_loop()
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        port = writer.transport._port  # type: ignore[attr-defined]
        if type(loop).time is asyncio.BaseEventLoop.time:
            assert port._clock is time.monotonic
        else:
            assert port._clock == loop.time
        await _ping_pong(reader, writer, WARM_UP)
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()


async def test_glued_reads_are_cut_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GRO read carrying many datagrams is cut in `_read_gro` itself, no generator
    resumed per datagram; its last, shorter piece ends where the read ended, not at the
    end of the (shared, reused) receive buffer."""
    needs_patchable(port_module, "batch.gro_segment_size and batch.gro_pieces")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if not (batch.probe_gso(probe) and batch.enable_gro(probe)):
            pytest.skip("this kernel offers no UDP GSO/GRO on loopback")
    finally:
        probe.close()
    sizes: list[int] = []
    real_size = batch.gro_segment_size

    def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
        sizes.append(real_size(ancdata))
        return sizes[-1]
    pieces: list[int] = []
    real_pieces = batch.gro_pieces

    def gro_pieces(n: int, size: int) -> Any:
        pieces.append(n)
        return real_pieces(n, size)
    monkeypatch.setattr(batch, "gro_segment_size", gro_segment_size)
    monkeypatch.setattr(batch, "gro_pieces", gro_pieces)
    config = utcp.Config(msl=FAST.msl, mss=1400, pmtu_probing=False)
    async with echo_server(config=config) as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=config)
        data = payload((2 << 20) + 777, seed=5)  # not a multiple of the segment size
        writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(len(data)) == data
        counters = writer.transport._port.endpoint.counters  # type: ignore[attr-defined]
        assert not [name for name in counters if "malformed" in name or "dropped" in name]
        assert any(size > 0 for size in sizes)  # some reads were glued
        assert pieces == []
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()


async def test_ports_are_weakly_held_and_native_when_compiled() -> None:
    """Those that hold a port weakly (its finalizer, the loop's set of ports for its
    shutdown, the fixed-port table) hold its `shutdown.Held`, so that the ports utcp
    makes are of the native class itself when compiled: their attributes live in its C
    struct (read as dictionary entries, a ping-pong exchange cost 8% more), and their
    calls of one another's methods are C calls (an interpreted subclass taking weak
    references made each a Python-level call)."""
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        port = writer.transport._port  # type: ignore[attr-defined]
        held: shutdown.Held = port.held
        assert weakref.ref(held)() is held and held.port is port
        assert type(port) is port_module.UdpPort
        if not (port_module.__file__ or "").endswith(".py"):
            # a native class: no instance dictionary, no weak-reference slot
            assert port_module.UdpPort.__dictoffset__ == 0
            assert port_module.UdpPort.__weakrefoffset__ == 0
        await _ping_pong(reader, writer, WARM_UP)
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()
        async with asyncio.timeout(TIMEOUT):
            while not port.closed:  # the client's port closes once its TIME_WAIT ends
                await asyncio.sleep(0.005)
        assert held.port is None  # the cycle goes with the close
