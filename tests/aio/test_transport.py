"""The `asyncio.Transport` over utcp with plain and buffered protocols, on real sockets.

`create_connection` / `create_server`, flow control callbacks, `get_extra_info`,
argument checking, connect errors, and errors raised by the protocol itself.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import gc
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest

import utcp
from tests.aio.util import (
    FAST,
    HOST,
    TIMEOUT,
    StateLog,
    close_writer,
    conn_name,
    echo_server,
    free_udp_port,
    payload,
    port_of,
    serving,
    wait_until,
)
from utcp import State, wire
from utcp.aio.port import route_mss

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def _create(factory: Callable[[], P], port: int) -> tuple[utcp.UtcpTransport, P]:
    """`utcp.create_connection`, typed for the test's own protocol classes."""
    transport, protocol = await utcp.create_connection(factory, HOST, port, config=FAST)
    assert isinstance(transport, utcp.UtcpTransport)
    return transport, cast(P, protocol)


class Collector(asyncio.Protocol):
    """Keeps what arrives and when the callbacks came."""

    def __init__(self, *, echo: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.calls: list[str] = []
        self.eof: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.buffer_at_resume: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.data += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.calls.append("eof")
        self.eof.set_result(bytes(self.data))
        return None  # asyncio then closes our side: FIN after what we wrote

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.buffer_at_resume.append(self.transport.get_write_buffer_size())
        self.calls.append("resume")


class BufferedSink(asyncio.BufferedProtocol):
    """A BufferedProtocol with a small fixed buffer: many get_buffer/buffer_updated rounds."""

    def __init__(self, size: int = 1000) -> None:
        loop = asyncio.get_running_loop()
        self.buf = bytearray(size)
        self.data = bytearray()
        self.updates: list[int] = []
        self.hints: list[int] = []
        self.transport: asyncio.BaseTransport | None = None
        self.eof: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        self.hints.append(sizehint)
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.updates.append(nbytes)
        self.data += self.buf[:nbytes]

    def eof_received(self) -> bool | None:
        self.eof.set_result(bytes(self.data))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def test_plain_protocols_with_create_server_and_create_connection() -> None:
    data = payload(500_000, 11)
    servers: list[Collector] = []

    def factory() -> Collector:
        servers.append(Collector(echo=True))
        return servers[-1]

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.create_server(factory, HOST, 0, config=FAST)
        assert isinstance(server, utcp.Server)
        async with serving(server):
            transport, client = await _create(Collector, port_of(server))
            assert isinstance(client, Collector)
            assert isinstance(transport, utcp.UtcpTransport)
            assert client.transport is transport and transport.get_protocol() is client
            assert client.calls == ["made"]
            transport.write(data[:1000])
            transport.writelines([data[1000:2000], memoryview(data)[2000:]])
            transport.write_eof()
            # the server echoes everything, sees EOF, and its eof_received closes it
            assert await client.eof == data
            assert await client.lost is None
            (peer,) = servers
            assert await peer.eof == data
            assert await peer.lost is None
            # the echoing peer may have been paused by its 64 KiB high-water mark
            assert [c for c in peer.calls if c not in ("pause", "resume")] == [
                "made", "eof", "lost"]
            # 500 kB written at once paused the client, and it was resumed before EOF came
            assert client.calls == ["made", "pause", "resume", "eof", "lost"]
            assert transport.is_closing()


async def test_buffered_protocol_server_receives_the_bytes_exactly() -> None:
    data = payload(1 << 20, 12)
    sinks: list[BufferedSink] = []

    def factory() -> BufferedSink:
        sinks.append(BufferedSink(1000))
        return sinks[-1]

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.create_server(factory, HOST, 0, config=FAST)
        async with serving(server):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            writer.write(data)
            writer.write_eof()
            await wait_until(lambda: bool(sinks))
            (sink,) = sinks
            assert await sink.eof == data
            assert max(sink.updates) <= 1000 and len(sink.updates) >= len(data) // 1000
            assert all(hint > 0 for hint in sink.hints)
            assert await reader.read() == b""  # the sink's side closed after EOF
            await close_writer(writer)
            assert await sink.lost is None


async def test_buffered_protocol_client() -> None:
    data = payload(300_000, 13)
    async with asyncio.timeout(TIMEOUT), echo_server() as server:
        transport, sink = await _create(lambda: BufferedSink(4096), port_of(server))
        assert isinstance(sink, BufferedSink) and sink.transport is transport
        transport.write(data)
        transport.write_eof()
        assert await sink.eof == data
        assert await sink.lost is None


class _WordSink(BufferedSink):
    """A BufferedProtocol whose buffer is of 4-byte items (an array of words)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.words = array.array("I", bytes(4000))

    def get_buffer(self, sizehint: int) -> memoryview:
        self.hints.append(sizehint)
        return memoryview(self.words)

    def buffer_updated(self, nbytes: int) -> None:
        self.updates.append(nbytes)
        self.data += memoryview(self.words).cast("B")[:nbytes]


async def test_views_of_wide_items_are_sent_and_filled_byte_for_byte() -> None:
    """A buffer's bytes, not its items, are what a transport carries, as asyncio's do:
    `write(memoryview(array("I", ...)))` sent a quarter of its bytes (the view's `len`
    counts items), and a BufferedProtocol whose buffer is of words failed on its first
    delivery. Small and large writes, a 2-D view and one with gaps."""
    words = array.array("I", range(50_000))              # 200,000 bytes
    small = array.array("H", range(300))                  # 600 bytes
    grid = memoryview(bytes(range(256)) * 64).cast("B", (128, 128))
    gappy = memoryview(payload(10_000, 3))[::3]
    views = [memoryview(small), memoryview(words), grid, gappy, memoryview(words)[7:9]]
    expected = b"".join(v.tobytes() for v in views)
    async with asyncio.timeout(TIMEOUT), echo_server() as server:
        transport, sink = await _create(_WordSink, port_of(server))
        assert isinstance(sink, _WordSink)
        for view in views:
            transport.write(view)
        transport.write_eof()
        assert await sink.eof == expected
        assert max(sink.updates) <= 4000 and sum(sink.updates) == len(expected)
        assert await sink.lost is None


async def test_a_paused_reader_gets_data_and_eof_only_after_resume() -> None:
    data = payload(1 << 20, 17)
    sinks: list[Collector] = []

    def factory() -> Collector:
        sinks.append(Collector())
        return sinks[-1]

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.create_server(factory, HOST, 0, config=FAST)
        async with serving(server):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            await wait_until(lambda: bool(sinks))
            (sink,) = sinks
            assert sink.transport is not None
            sink.transport.pause_reading()
            assert not sink.transport.is_reading()
            writer.write(data)
            writer.write_eof()
            # everything, FIN included, is acknowledged by the core while the app is paused
            await wait_until(lambda: sink.transport is not None and sink.transport
                             .get_extra_info("state") is State.CLOSE_WAIT)
            await asyncio.sleep(0.1)
            assert sink.data == b"" and "eof" not in sink.calls
            sink.transport.resume_reading()
            assert sink.transport.is_reading()
            assert await sink.eof == data  # the data first, then eof_received
            assert await sink.lost is None
            assert await reader.read() == b""
            await close_writer(writer)


async def test_write_buffer_limits_pause_and_resume_the_protocol() -> None:
    data = payload(1 << 20, 14)
    sinks: list[Collector] = []

    def factory() -> Collector:
        sinks.append(Collector())
        return sinks[-1]

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.create_server(factory, HOST, 0, config=FAST)
        async with serving(server):
            transport, client = await _create(Collector, port_of(server))
            assert isinstance(transport, asyncio.WriteTransport)
            assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            transport.set_write_buffer_limits(high=4000)
            assert transport.get_write_buffer_limits() == (1000, 4000)
            with pytest.raises(ValueError):
                transport.set_write_buffer_limits(high=10, low=20)
            # as asyncio's transports, on both builds: a float limit is kept as given (a
            # compiled `int` parameter refused it), and any key has the default
            transport.set_write_buffer_limits(high=1e6)
            assert transport.get_write_buffer_limits() == (250000.0, 1e6)
            assert transport.get_extra_info(1, "none") == "none"
            assert transport.get_extra_info(("peername",)) is None
            transport.set_write_buffer_limits(high=1000, low=100)
            assert transport.get_write_buffer_limits() == (100, 1000)
            assert type(transport.get_write_buffer_limits()[1]) is int
            assert transport.get_write_buffer_size() == 0

            transport.write(data)
            # what the window cannot take at once stays in the buffer: paused at once
            assert transport.get_write_buffer_size() > 1000
            assert client.calls == ["made", "pause"]
            await wait_until(lambda: "resume" in client.calls, what="resume_writing")
            assert client.calls == ["made", "pause", "resume"]
            assert client.buffer_at_resume[0] <= 100
            await wait_until(lambda: transport.get_write_buffer_size() == 0)
            transport.write_eof()
            (sink,) = sinks
            assert await sink.eof == data
            # the FIN is out (it takes a sequence number, but no buffer): nothing buffered
            assert transport.get_write_buffer_size() == 0

            # raising the high-water mark above what is buffered never pauses
            transport2, client2 = await _create(Collector, port_of(server))
            transport2.set_write_buffer_limits(high=4 << 20)
            transport2.write(data)
            assert 0 < transport2.get_write_buffer_size() <= 4 << 20
            assert "pause" not in client2.calls
            # ... and lowering it below what is buffered pauses at once
            transport2.set_write_buffer_limits(high=10, low=0)
            assert client2.calls[-1] == "pause"
            transport2.close()
            assert await client2.lost is None
            assert client2.calls[-2:] == ["resume", "lost"]  # drained below low water, then gone
            assert await sinks[1].eof == data


async def test_get_extra_info(state_log: StateLog) -> None:
    up, down = payload(100_000, 15), payload(50_000, 16)
    accepted: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.readexactly(len(up))
        writer.write(down)
        await done.wait()
        await close_writer(writer)

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(handle, HOST, 0, config=FAST)
        async with serving(server):
            port = port_of(server)
            reader, writer = await utcp.open_connection(HOST, port, config=FAST)
            t = writer.transport
            sock = t.get_extra_info("socket")
            assert isinstance(sock, socket.socket) and sock.type == socket.SOCK_DGRAM
            assert t.get_extra_info("peername") == (HOST, port)
            assert sock.getpeername() == (HOST, port)
            assert t.get_extra_info("sockname") == sock.getsockname()
            assert t.get_extra_info("sockname")[0] == HOST
            assert t.get_extra_info("state") is State.ESTABLISHED
            assert t.get_extra_info("no such thing", 42) == 42
            assert t.get_extra_info("no such thing") is None

            writer.write(up)
            assert await reader.readexactly(len(down)) == down
            (server_writer,) = accepted
            st = server_writer.transport
            assert st.get_extra_info("socket") is server.sockets[0]
            assert st.get_extra_info("sockname") == server.sockets[0].getsockname()
            assert st.get_extra_info("peername")[:2] == t.get_extra_info("sockname")
            assert st.get_extra_info("state") is State.ESTABLISHED

            def all_acked() -> bool:
                return bool(t.get_extra_info("stats").bytes_acked == len(up)
                        and st.get_extra_info("stats").bytes_acked == len(down))
            await wait_until(all_acked, what="every byte acknowledged")
            for transport, sent, received in ((t, up, down), (st, down, up)):
                stats = transport.get_extra_info("stats")
                assert isinstance(stats, utcp.Stats)
                assert stats.state is State.ESTABLISHED
                # a loopback peer: both ends start at the route's size
                assert stats.mss == route_mss(socket.AF_INET, HOST) > FAST.mss
                # measured (uvloop's clock ticks in milliseconds: 0.0 is possible here)
                assert isinstance(stats.srtt, float) and 0 <= stats.srtt < 1  # loopback
                assert isinstance(stats.rttvar, float) and 0 <= stats.rttvar < 1
                # RFC 6298 §2.3 from the SRTT and RTTVAR it reports, doubled (§5.5) once
                # per timeout that no clean sample has followed
                base = max(FAST.rto_min, stats.srtt + max(0.001, 4 * stats.rttvar))
                assert isinstance(stats.rto, float)
                assert any(stats.rto == pytest.approx(base * 2 ** k)
                           for k in range(stats.timeouts + 1)), (stats.rto, base)
                assert isinstance(stats.cwnd, int) and stats.cwnd >= stats.mss
                # None until slow start ends (a loss, or HyStart on a loopback's RTT rise)
                assert stats.ssthresh is None or stats.ssthresh >= 2 * stats.mss
                assert stats.bytes_sent == len(sent) and stats.bytes_acked == len(sent)
                assert stats.bytes_received == len(received)
                # every byte in MSS-sized segments, and the SYN (or SYN+ACK) before them
                assert stats.segments_sent >= -(-len(sent) // stats.mss) + 1
                assert stats.segments_received >= -(-len(received) // stats.mss) + 1
                assert 0 <= stats.segments_retransmitted < stats.segments_sent
                with pytest.raises(dataclasses.FrozenInstanceError):
                    stats.cwnd = 1  # type: ignore[misc]
            done.set()
            name = conn_name(t)
            await close_writer(writer)
            # "state" stays live after the transport is done with: what the core last
            # entered (TIME_WAIT lasts 0.4 s here: that the client is still in it, as
            # this checked before, a loaded machine could not promise), and then CLOSED
            assert t.get_extra_info("state").name == state_log.path(name)[-1]
            await wait_until(lambda: t.get_extra_info("state") is State.CLOSED)
            assert state_log.path(name)[-1] == "CLOSED"


async def test_write_eof_and_writing_after_it() -> None:
    async with asyncio.timeout(TIMEOUT), echo_server() as server:
        transport, client = await _create(Collector, port_of(server))
        assert isinstance(transport, utcp.UtcpTransport) and isinstance(client, Collector)
        assert transport.can_write_eof() is True
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[arg-type]
        transport.write(b"last words")
        transport.write_eof()
        assert not transport.is_closing()  # half-closed: still reading
        with pytest.raises(RuntimeError):
            transport.write(b"more")
        transport.write_eof()  # a second one is harmless
        assert await client.eof == b"last words"
        assert await client.lost is None


def _open_sockets() -> set[str]:
    """This process's open sockets, by inode ("socket:[1234]"): a new one is a new entry.

    gc first: the ports of earlier tests' closed loops may still wait for collection.
    """
    gc.collect()
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        if target.startswith("socket:"):
            sockets.add(target)
    return sockets


def _no_new_sockets(before: set[str]) -> bool:
    return not _open_sockets() - before


@pytest.mark.parametrize(("port", "error"), [
    (70000, OverflowError), (-1, OverflowError), ("abc", socket.gaierror), (1.5, TypeError),
    (b"80", TypeError),
])
async def test_bad_port_raises_before_anything_is_opened(port: Any, error: type) -> None:
    before = _open_sockets()
    with pytest.raises(error):
        await utcp.open_connection(HOST, port)
    with pytest.raises(error):
        await utcp.create_connection(asyncio.Protocol, HOST, port)
    with pytest.raises(error):
        await utcp.start_server(lambda r, w: None, HOST, port)
    with pytest.raises(error):
        await utcp.create_server(asyncio.Protocol, HOST, port)
    with pytest.raises(error):
        await utcp.open_connection(HOST, 9, local_addr=(HOST, port))
    assert _no_new_sockets(before)


async def test_bad_config_raises_before_anything_is_sent() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    silent.setblocking(False)
    port = silent.getsockname()[1]
    before = _open_sockets()
    try:
        bad: tuple[Any, ...] = ("x", {"msl": 1}, utcp.Config)
        for config in bad:
            with pytest.raises(TypeError):
                await utcp.open_connection(HOST, port, config=config)
            with pytest.raises(TypeError):
                await utcp.create_connection(asyncio.Protocol, HOST, port, config=config)
            with pytest.raises(TypeError):
                await utcp.start_server(lambda r, w: None, HOST, 0, config=config)
            with pytest.raises(TypeError):
                await utcp.create_server(asyncio.Protocol, HOST, 0, config=config)
        with pytest.raises(ValueError):
            await utcp.open_connection(HOST, port, server_hostname="localhost")  # no ssl
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            silent.recv(100)  # not one datagram reached the peer
        assert _no_new_sockets(before)
    finally:
        silent.close()


async def test_no_listener_is_refused_before_the_syn_is_resent() -> None:
    # the ICMP port unreachable that answers the first SYN refuses it: the resend, 10 s
    # later here, never leaves (a 1 s default and a "< 1 s" bound left a loaded machine
    # little margin; this one is as strict and has ten times more)
    config = utcp.Config(rto_initial=10.0)
    port = free_udp_port()
    before = _open_sockets()
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        async with asyncio.timeout(TIMEOUT):
            await utcp.open_connection(HOST, port, config=config)
    assert time.monotonic() - start < config.rto_initial
    await wait_until(lambda: _no_new_sockets(before), what="the client socket closed")


async def test_silent_peer_times_out_after_syn_retries() -> None:
    config = utcp.Config(syn_retries=3, rto_initial=0.05)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    silent.setblocking(False)
    before = _open_sockets()
    try:
        # the loop's clock, which stamps the SYNs (uvloop caches it per iteration, so
        # time.monotonic() could run ahead of the first SYN's `now`): the bound is exact
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(TimeoutError):
                await utcp.open_connection(HOST, silent.getsockname()[1], config=config)
        elapsed = loop.time() - start
        # the waits double: 0.05 + 0.1 + 0.2 + 0.4 = 0.75 s (not 4 x 0.05) before giving up
        assert elapsed >= 0.75 - 1e-9
        syns = []
        while True:
            try:
                syns.append(wire.parse(silent.recv(2048)))
            except BlockingIOError:
                break
        assert len(syns) == 1 + config.syn_retries
        assert all(s.flags == wire.SYN for s in syns)
        assert len({s.seq for s in syns}) == 1  # the same SYN, retransmitted
        await wait_until(lambda: _no_new_sockets(before), what="the client socket closed")
    finally:
        silent.close()


async def test_cancelled_connect_stops_its_syns_and_closes_its_socket() -> None:
    config = utcp.Config(syn_retries=20, rto_initial=0.05)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    silent.setblocking(False)
    before = _open_sockets()
    try:
        connecting = asyncio.create_task(
            utcp.open_connection(HOST, silent.getsockname()[1], config=config))
        await asyncio.sleep(0.2)  # a few SYNs go out
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await wait_until(lambda: _no_new_sockets(before), what="the client socket closed")
        syns = 0
        with contextlib.suppress(BlockingIOError):
            while silent.recv(2048):
                syns += 1
        assert syns >= 1
        await asyncio.sleep(0.5)  # the next retransmissions would have come by now
        with pytest.raises(BlockingIOError):
            silent.recv(2048)
    finally:
        silent.close()


class Exploding(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        raise ZeroDivisionError("boom")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def test_exception_in_data_received_goes_to_the_loop_and_aborts() -> None:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    protocols: list[Exploding] = []

    def factory() -> Exploding:
        protocols.append(Exploding())
        return protocols[-1]

    try:
        async with asyncio.timeout(TIMEOUT):
            server = await utcp.create_server(factory, HOST, 0, config=FAST)
            async with serving(server):
                reader, writer = await utcp.open_connection(HOST, port_of(server),
                                                            config=FAST)
                writer.write(b"hello")
                with pytest.raises(ConnectionResetError):
                    await reader.read()  # the server aborted: RST
                (protocol,) = protocols
                lost = await protocol.lost
                assert isinstance(lost, ZeroDivisionError)
                (context,) = contexts
                assert isinstance(context["exception"], ZeroDivisionError)
                assert context["protocol"] is protocol
                assert context["transport"] is protocol.transport
                assert protocol.transport is not None and protocol.transport.is_closing()
                assert protocol.transport.get_extra_info("state") is State.CLOSED
                assert writer.get_extra_info("state") is State.CLOSED
                writer.close()
    finally:
        loop.set_exception_handler(None)
