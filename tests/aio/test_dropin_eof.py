"""Issue #11 item 1: what the peer sent before a protocol existed reaches it, in order.

A server's connection waits in the accept queue, and a client's handshake completes,
before there is a protocol; a peer that writes a short request and its FIN at once has
sent everything by then. Every such event (bytes, EOF, a reset) must reach the protocol
after connection_made, with no later datagram needed to trigger it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, payload, serving
from utcp import wire

SIZES = [0, 1, 10, 1400, 1401, 4000, 14000, 20000, 65536]
MODES = ["streams", "protocol", "buffered"]


class Recorder(asyncio.Protocol):
    """Every callback, in order: ("made",), ("data", n), ("eof",), ("lost", exc)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.eof = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.calls.append(("made",))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data", len(data)))
        self.data += data

    def eof_received(self) -> bool | None:
        self.calls.append(("eof",))
        self.eof.set_result(bytes(self.data))
        return None  # close, as asyncio's default

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("lost", exc))
        self.lost.set_result(exc)


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    """The same record through get_buffer/buffer_updated, with a small buffer (the
    transport takes the buffered path for any BufferedProtocol instance)."""

    def __init__(self) -> None:
        Recorder.__init__(self)
        self.buf = bytearray(4096)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.buf[:nbytes]))


def check_order(calls: list[tuple[Any, ...]], total: int) -> None:
    """connection_made first, then data only, then EOF once, then connection_lost once."""
    names = [c[0] for c in calls]
    assert names[0] == "made", calls
    assert names[-2:] == ["eof", "lost"], calls
    assert set(names[1:-2]) <= {"data"}, calls
    assert sum(c[1] for c in calls if c[0] == "data") == total
    assert calls[-1][1] is None, calls


def split(data: bytes, writes: int) -> list[bytes]:
    if writes == 1 or len(data) < 2:
        return [data]
    cut = min(10, len(data) // 2)  # a small first write, as an HTTP client's headers
    return [data[:cut], data[cut:]]


async def send_and_eof(host: str, port: int, data: bytes, writes: int,
                       mode: str) -> Recorder | None:
    """Connect, write `data` in `writes` write() calls, write_eof() at once."""
    if mode == "streams":
        _, writer = await utcp.open_connection(host, port, config=FAST)
        for piece in split(data, writes):
            writer.write(piece)
        writer.write_eof()
        return None
    transport, protocol = await utcp.create_connection(Recorder, host, port, config=FAST)
    assert isinstance(transport, asyncio.Transport)
    for piece in split(data, writes):
        transport.write(piece)
    transport.write_eof()
    assert isinstance(protocol, Recorder)
    return protocol


@pytest.mark.parametrize("writes", [1, 2])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
async def test_data_then_eof_written_at_once_reach_the_server(size: int, mode: str,
                                                              writes: int) -> None:
    data = payload(size, seed=size)
    loop = asyncio.get_running_loop()
    if mode == "streams":
        got: asyncio.Future[bytes] = loop.create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read())  # until EOF
            writer.close()

        server = await utcp.start_server(handler, HOST, 0, config=FAST)
    else:
        made: list[Recorder] = []

        def factory() -> Recorder:
            made.append(Recorder() if mode == "protocol" else BufferedRecorder())
            return made[-1]

        server = await utcp.create_server(factory, HOST, 0, config=FAST)
    async with serving(server):
        port = server.sockets[0].getsockname()[1]
        client = await send_and_eof(HOST, port, data, writes, mode)
        async with asyncio.timeout(TIMEOUT):
            if mode == "streams":
                assert await got == data
            else:
                while not made:
                    await asyncio.sleep(0.001)
                assert await made[0].eof == data
                await made[0].lost
                check_order(made[0].calls, size)
                if mode == "buffered" and size:
                    # the last piece came through get_buffer(), not data_received alone
                    last = [c[1] for c in made[0].calls if c[0] == "data"][-1]
                    assert bytes(made[0].buf[:last]) == data[-last:]
                assert client is not None
                await client.eof  # the server closed after its EOF: the client hears it
                await client.lost
                check_order(client.calls, 0)


# ---------------------------------------------------------------------- client side

class RawPeer(asyncio.DatagramProtocol):
    """A hand-driven peer: answers the first SYN with `burst(syn)`, all at once, so the
    client reads the SYN-ACK and what follows in one wake-up, before its protocol exists."""

    def __init__(self, burst: Any) -> None:
        self.burst = burst
        self.transport: Any = None
        self.seen: list[wire.Segment] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        seg = wire.parse(data)
        self.seen.append(seg)
        if seg.flags & wire.SYN and len(self.seen) == 1:
            for datagram in self.burst(seg):
                self.transport.sendto(datagram, addr)


ISS = 1000


def answer(syn: wire.Segment, payload_: bytes, last: int) -> list[bytes]:
    """SYN-ACK, `payload_` in one segment if any, then the segment with flags `last`."""
    ack = (syn.seq + 1) & 0xFFFFFFFF
    synack = wire.build(wire.Segment(syn.dst_port, syn.src_port, ISS, ack,
                                     wire.SYN | wire.ACK, 65535,
                                     options=wire.Options(mss=1400)))
    data = wire.build_fast(syn.dst_port, syn.src_port, ISS + 1, ack, wire.ACK | wire.PSH,
                           65535, payload=payload_)
    end = wire.build_fast(syn.dst_port, syn.src_port, ISS + 1 + len(payload_), ack,
                          last | wire.ACK, 65535)
    return [synack, data, end] if payload_ else [synack, end]


async def raw_peer(last: int, payload_: bytes) -> tuple[Any, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: RawPeer(lambda syn: answer(syn, payload_, last)),
        local_addr=(HOST, 0), family=socket.AF_INET)
    port: int = transport.get_extra_info("sockname")[1]
    return transport, port


async def test_a_reset_with_the_handshake_reaches_the_client() -> None:
    """RST in the same batch as the SYN-ACK, before create_connection has made the
    protocol: it sees connection_made, then connection_lost(ConnectionResetError). It
    used to see connection_made alone, and wait forever. (Data or a FIN cannot come
    this early: until the client acknowledges the SYN-ACK, a timer tick later, its
    advertised window is empty.)"""
    transport, port = await raw_peer(wire.RST, b"")
    try:
        async with asyncio.timeout(TIMEOUT):
            client_transport, protocol = await utcp.create_connection(
                Recorder, HOST, port, config=FAST)
            assert isinstance(protocol, Recorder)
            await protocol.lost
        assert [c[0] for c in protocol.calls] == ["made", "lost"], protocol.calls
        assert isinstance(protocol.lost.result(), ConnectionResetError), protocol.calls
        assert client_transport.is_closing()
    finally:
        transport.close()
