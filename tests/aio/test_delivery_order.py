"""What the protocol is told, and in what order, when a callback changes things or the
connection ends under unread bytes: as asyncio's TCP transports on Linux.

- Bytes the connection took in before a reset are delivered before the reset, and a
  transport whose reading is paused reports the reset only once they are read (a kernel's
  receive queue gives its data before ECONNRESET).
- `close()` inside `data_received` stops delivery (asyncio stops reading), and no
  `eof_received` follows.
- `set_protocol()` inside `data_received` sends the rest to the new protocol.
- New bytes for an application that has closed reset the connection (Linux's
  TCPAbortOnData): the peer's writes fail instead of being swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import utcp
from tests.aio.test_dead_peer import PROMPT, child, read_line
from tests.aio.util import FAST, HOST, TIMEOUT, needs_patchable, payload, port_of, wait_until
from utcp.aio import api
from utcp.aio import transport as transport_module

CHUNK = 256 * 1024   # the transport's delivery unit to a plain Protocol


class Recorder(asyncio.Protocol):
    """Records every callback; its `on_data` may act on the transport."""

    def __init__(self, *, paused: bool = False, eof_keeps_open: bool = False) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())
        self.paused = paused
        self.eof_keeps_open = eof_keeps_open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.calls.append("data")
        self.data += data
        self.on_data()

    def on_data(self) -> None:
        pass

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return self.eof_keeps_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


@contextlib.asynccontextmanager
async def pair(server_protocol: Recorder, client: Recorder | None = None,
               ) -> AsyncIterator[tuple[asyncio.Transport, Recorder]]:
    """A utcp server whose one connection gets `server_protocol`, and a client to it."""
    server = await utcp.create_server(lambda: server_protocol, HOST, 0, config=FAST)
    if client is None:
        client = Recorder()
    transport = None
    try:
        transport, _ = await utcp.create_connection(lambda: client, HOST, port_of(server),
                                                    config=FAST)
        assert isinstance(transport, asyncio.Transport)
        await wait_until(lambda: server_protocol.transport is not None, what="the accept")
        yield transport, client
    finally:
        if transport is not None:
            transport.abort()
        server.close()


def state_of(protocol: Recorder) -> utcp.State:
    assert protocol.transport is not None
    state = protocol.transport.get_extra_info("state")
    assert isinstance(state, utcp.State)
    return state


def received(protocol: Recorder) -> int:
    assert protocol.transport is not None
    return int(protocol.transport.get_extra_info("stats").bytes_received)


async def test_bytes_before_a_reset_wait_for_a_paused_reader_then_the_reset() -> None:
    server = Recorder(paused=True)
    body = b"the request body, sent before the reset"
    async with pair(server) as (client_transport, _):
        client_transport.write(body)
        await wait_until(lambda: received(server) == len(body), what="the body in the core")
        client_transport.abort()  # RST after the body
        await wait_until(lambda: state_of(server) is utcp.State.CLOSED, what="the reset")
        await asyncio.sleep(0.05)  # a connection_lost made too early would come now
        assert server.calls == [] and not server.lost.done()
        assert server.transport is not None and not server.transport.is_closing()
        server.transport.resume_reading()
        exc = await asyncio.wait_for(server.lost, TIMEOUT)
    assert bytes(server.data) == body
    assert server.calls == ["data", "lost"]
    assert isinstance(exc, ConnectionResetError)


@contextlib.asynccontextmanager
async def a_reset_waiting() -> AsyncIterator[tuple[Recorder, asyncio.Transport]]:
    """A server connection, reading paused, holding 6 unread bytes and the peer's reset
    after them; the server's protocol and transport."""
    server = Recorder(paused=True)
    async with pair(server) as (client_transport, _):
        client_transport.write(b"unread")
        await wait_until(lambda: received(server) == 6, what="the bytes in the core")
        client_transport.abort()
        await wait_until(lambda: state_of(server) is utcp.State.CLOSED, what="the reset")
        assert server.transport is not None
        yield server, server.transport


async def test_a_write_while_a_reset_waits_ends_the_transport_with_it() -> None:
    async with a_reset_waiting() as (server, transport):
        transport.write(b"answer")  # asyncio's send fails on the reset
        exc = await asyncio.wait_for(server.lost, TIMEOUT)
    assert isinstance(exc, ConnectionResetError)
    assert transport.is_closing()


async def _all_in_then_resume(server: Recorder, client_transport: asyncio.Transport,
                              data: bytes) -> None:
    """Send `data` and FIN, wait until the paused server's core holds all of it, resume."""
    client_transport.write(data)
    client_transport.write_eof()
    await wait_until(lambda: received(server) == len(data)
                     and state_of(server) is utcp.State.CLOSE_WAIT, what="all data and FIN")
    assert server.transport is not None
    server.transport.resume_reading()


async def test_close_inside_data_received_stops_delivery() -> None:
    class Closer(Recorder):
        def on_data(self) -> None:
            assert self.transport is not None
            self.transport.close()

    server = Closer(paused=True)
    data = payload(3 * CHUNK)  # three deliveries' worth, all waiting at once
    async with pair(server) as (client_transport, _):
        await _all_in_then_resume(server, client_transport, data)
        exc = await asyncio.wait_for(server.lost, TIMEOUT)
    assert exc is None
    assert server.calls == ["data", "lost"]  # no more data, and no eof_received
    assert 0 < len(server.data) < len(data) and data.startswith(server.data)


class _Rest(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


class _BufferedRest(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.buf = bytearray(70_000)
        self.eof = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buf[:nbytes]

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


@pytest.mark.parametrize("kind", [_Rest, _BufferedRest])
async def test_set_protocol_inside_data_received_sends_the_rest_to_the_new_one(
        kind: type[Any]) -> None:
    rest = kind()

    class Switcher(Recorder):
        def on_data(self) -> None:
            assert self.transport is not None
            self.transport.set_protocol(rest)

    server = Switcher(paused=True)
    data = payload(3 * CHUNK, seed=1)
    async with pair(server) as (client_transport, _):
        await _all_in_then_resume(server, client_transport, data)
        await asyncio.wait_for(asyncio.shield(rest.lost), TIMEOUT)
    assert server.calls == ["data"]  # once, then the new protocol had everything
    assert bytes(server.data) + bytes(rest.data) == data
    assert rest.eof


async def test_data_for_an_application_that_closed_resets_the_peer() -> None:
    class ClosesAtOnce(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert self.transport is not None
            self.transport.close()

    server = ClosesAtOnce()
    # half-closed: the client goes on writing
    async with pair(server, Recorder(eof_keeps_open=True)) as (client_transport, client):
        await wait_until(lambda: "eof" in client.calls, what="the server's FIN")
        client_transport.write(b"more for a server that has closed")
        server_exc = await asyncio.wait_for(server.lost, TIMEOUT)
        await wait_until(lambda: state_of(client) is utcp.State.CLOSED, what="the RST")
        # As Linux's: the FIN came first, so the reading side ended there and the
        # reset is not reported to it; the next write fails on it.
        await asyncio.sleep(0.05)
        assert not client.lost.done() and not client_transport.is_closing()
        client_transport.write(b"and more")
        exc = await asyncio.wait_for(client.lost, TIMEOUT)
    assert isinstance(exc, BrokenPipeError)  # Linux's EPIPE, for a reset after the FIN
    assert server_exc is None  # the server asked for its close: no error for it
    assert server.calls == ["lost"]  # and it was given none of those bytes


async def test_a_reset_after_the_eof_leaves_the_response_and_a_clean_close() -> None:
    """A server answers and closes while the client's next request is on its way: the
    request draws a reset (above), and the client still reads the answer and the EOF
    and closes without an error, as over Linux's TCP."""
    async def answer_and_close(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhello")
        writer.close()

    server = await utcp.start_server(answer_and_close, HOST, 0, config=FAST)
    try:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        writer.write(b"GET ")
        await wait_until(lambda: writer.transport.get_extra_info("state")
                         is utcp.State.CLOSE_WAIT, what="the server's FIN")
        writer.write(b"GET again")  # pipelined: reaches a server that has closed
        await wait_until(lambda: writer.transport.get_extra_info("state")
                         is utcp.State.CLOSED, what="the RST")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"HTTP/1.0 200 OK\r\n\r\nhello"
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    finally:
        server.close()


@pytest.mark.parametrize("act", ["close", "empty write"])
async def test_close_or_an_empty_write_while_a_reset_waits(act: str) -> None:
    async with a_reset_waiting() as (server, transport):
        if act == "close":  # as asyncio's close() of a socket whose error it never read
            transport.close()
            assert await asyncio.wait_for(server.lost, TIMEOUT) is None
        else:  # as asyncio's write(b""): nothing at all
            transport.write(b"")
            await asyncio.sleep(0.05)
            assert not server.lost.done() and not transport.is_closing()


# A peer in a process of its own, for the ICMP its socket's end leaves behind.
SENDER = r"""
import asyncio, sys, utcp

async def handle(reader, writer):
    await reader.readexactly(2)
    for _ in range(30):
        writer.write(b"k" * 1000)
        await asyncio.sleep(0.001)
    print("sent", flush=True)
    await asyncio.Event().wait()

async def main():
    server = await utcp.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

CLOSER = r"""
import asyncio, sys, utcp

async def main():
    reader, writer = await utcp.open_connection("127.0.0.1", int(sys.argv[1]))
    writer.write(bytes(range(256)) * 400)
    writer.close()
    await writer.wait_closed()

asyncio.run(main())
print("loop closed", flush=True)
"""


async def test_what_a_killed_peer_sent_first_comes_before_the_reset_its_icmp_brings(
        ) -> None:
    """The peer sends, then is killed while our loop is busy: its datagrams wait in our
    socket, and the ICMP that our first ACK draws is reported ahead of them."""
    with child(SENDER) as proc:
        port = int(await read_line(proc))
        client = Recorder()
        transport, _ = await utcp.create_connection(lambda: client, HOST, port, config=FAST)
        transport.write(b"go")
        time.sleep(0.3)  # busy (the loop blocked): the peer's datagrams queue up
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        exc = await asyncio.wait_for(client.lost, PROMPT)
    assert bytes(client.data) == b"k" * 30_000
    assert client.calls[-1] == "lost" and isinstance(exc, ConnectionResetError)


async def test_a_peer_that_closed_in_order_and_exited_leaves_no_error_behind() -> None:
    """Its FIN came and our data is acknowledged; the ICMP our keepalive probe draws
    (its socket is gone) ends nothing, a later read gets everything and the EOF, and our
    own close, whose FIN draws the next ICMP, ends without an error (where TCP's
    FIN_WAIT_2 in the peer's kernel would have acknowledged it)."""
    config = utcp.Config(msl=0.2, keepalive_interval=0.2, keepalive_probe_interval=0.2,
                         keepalive_probes=100)
    reader = Recorder(paused=True)
    server = await utcp.create_server(lambda: reader, HOST, 0, config=config)
    try:
        endpoint = server._ports[0].endpoint
        with child(CLOSER, str(port_of(server))) as proc:
            assert await read_line(proc) == "loop closed"
            await asyncio.to_thread(proc.wait, TIMEOUT)  # its socket closes with it
            await wait_until(lambda: endpoint.counters["ICMP port unreachable ignored"] > 0,
                             what="a keepalive probe's ICMP")
            assert state_of(reader) is utcp.State.CLOSE_WAIT and reader.calls == []
            assert reader.transport is not None
            reader.transport.resume_reading()
            exc = await asyncio.wait_for(reader.lost, PROMPT)
    finally:
        server.close()
    assert bytes(reader.data) == bytes(range(256)) * 400
    assert reader.calls[-2:] == ["eof", "lost"] and exc is None


async def test_bytes_before_a_reset_wait_for_a_protocol_that_is_not_there_yet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted connection gets its protocol a little later (the accept queue); the
    peer's bytes and reset may come before it. They wait for it, and for its reading,
    as they do for a protocol already there."""
    needs_patchable(transport_module, "UtcpTransport.attach_protocol")
    loop = asyncio.get_running_loop()
    attach = api.UtcpTransport.attach_protocol
    attached = asyncio.Event()

    def later(self: api.UtcpTransport, protocol: asyncio.BaseProtocol) -> None:
        if self._on_lost is None:  # a client's: at once
            attach(self, protocol)
            return

        def now() -> None:
            attach(self, protocol)
            attached.set()
        loop.call_later(0.3, now)

    monkeypatch.setattr(api.UtcpTransport, "attach_protocol", later)
    server = Recorder(paused=True)
    listener = await utcp.create_server(lambda: server, HOST, 0, config=FAST)
    try:
        client, _ = await utcp.create_connection(asyncio.Protocol, HOST, port_of(listener),
                                                 config=FAST)
        client.write(b"x" * 5000)
        await asyncio.sleep(0.05)
        client.abort()
        await asyncio.wait_for(attached.wait(), TIMEOUT)
        assert server.calls == [] and server.transport is not None
        assert not server.transport.is_closing()
        server.transport.resume_reading()
        exc = await asyncio.wait_for(server.lost, TIMEOUT)
    finally:
        listener.close()
    assert bytes(server.data) == b"x" * 5000 and isinstance(exc, ConnectionResetError)


async def test_a_peer_heard_behind_its_icmp_is_asked_again_and_found_dead() -> None:
    """The ICMP our ACK draws is reported ahead of datagrams still queued from the peer
    (its data, or anything from its address), so the peer counts as heard and the ICMP
    is set aside: an ACK goes at once, and its ICMP, with nothing behind it, ends the
    connection. Without that a dead peer with nothing outstanding lived on (no
    keepalive: for ever)."""
    config = utcp.Config(msl=0.2, keepalive_interval=None)
    accepted: list[asyncio.Transport] = []

    class Quiet(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            accepted.append(transport)

    listener = await utcp.create_server(Quiet, HOST, 0, config=config)
    client = Recorder()
    transport, _ = await utcp.create_connection(lambda: client, HOST, port_of(listener),
                                                config=config)
    try:
        await wait_until(lambda: bool(accepted), what="the accept")
        for _ in range(10):  # a ping-pong's pace: the client port reads one at a time
            accepted[0].write(b"p")
            await asyncio.sleep(0.01)
        port = listener._ports[0]
        accepted[0].write(b"s" * 100)
        accepted[0].write(b"s" * 100)
        port.process()  # two segments queued at the client, the loop not running
        address = port.local_addr
        # the server's process dies: its socket closes, nothing is sent for it
        port.loop.remove_reader(port.sock.fileno())
        port.sock.close()
        # then anything at all from its address, queued behind the data
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            junk.bind(address)
            junk.sendto(b"not a segment", transport.get_extra_info("sockname"))
        exc = await asyncio.wait_for(client.lost, PROMPT)
    finally:
        transport.abort()
        listener.close()
    assert isinstance(exc, ConnectionResetError)
    assert bytes(client.data).endswith(b"s" * 200)


async def test_an_upload_the_peer_resets_after_its_eof_fails() -> None:
    """The reading side ends quietly at the EOF, but bytes written and never sent are
    lost with the reset: the writer is told, as asyncio's write callback is."""
    async def bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    server = await utcp.start_server(bye, HOST, 0, config=FAST)
    try:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"bye"
        with pytest.raises(ConnectionError):
            writer.write(bytes(8 << 20))
            await asyncio.wait_for(writer.drain(), TIMEOUT)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    finally:
        server.close()


async def test_write_eof_reports_a_reset_that_waits() -> None:
    async with a_reset_waiting() as (server, transport):
        transport.write_eof()  # (Linux's shutdown() fails with ENOTCONN here)
        assert isinstance(await asyncio.wait_for(server.lost, TIMEOUT), ConnectionResetError)


def test_the_loops_shutdown_ends_a_transport_holding_a_reset() -> None:
    """The peer's request, FIN and reset; the protocol keeps the transport open after
    the EOF and does nothing more. `asyncio.run` ending must still close the socket."""
    lost: list[BaseException | None] = []

    class Keep(asyncio.Protocol):
        def eof_received(self) -> bool:
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(exc)

    sockets: list[socket.socket] = []

    async def main() -> None:
        server = await utcp.create_server(Keep, HOST, 0, config=FAST)
        sockets.extend(server.sockets)
        client, _ = await utcp.create_connection(asyncio.Protocol, HOST, port_of(server),
                                                 config=FAST)
        client.write(b"req")
        client.write_eof()
        await asyncio.sleep(0.2)
        client.abort()
        await asyncio.sleep(0.3)
        server.close()

    asyncio.run(main())
    assert sockets and sockets[0].fileno() == -1
    assert len(lost) == 1 and isinstance(lost[0], ConnectionAbortedError)
