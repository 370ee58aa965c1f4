"""A client that connects from a port its last connection to the same server used, while
the server still holds that connection in TIME_WAIT (the server closed first, as an
HTTP/1.0 server does).

Kernels hand out random ephemeral ports, so against a server holding 60 s of TIME_WAIT
this happens to about 2% of connects at 10 a second and to most at a few hundred. The
server must not take the new SYN (TIME_WAIT answers it with its ACK, and ignores the
RST that ACK draws: RFC 9293 §3.10.7.4, RFC 1337). The client kept retrying its SYN
from the same port until the TIME_WAIT ended: 63 s, measured with `open_connection`
in a sequential connect+close loop on loopback. A connect from a port the system picked
now moves to another port at once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

import utcp
from utcp import wire
from utcp.aio import api
from utcp.config import Config
from utcp.endpoint import Endpoint
from utcp.errors import PeerHoldsPort
from utcp.events import Terminated
from utcp.state import State

SERVER = ("127.0.0.1", 5000)
CLIENT = ("127.0.0.1", 41000)


def _pump(a: Endpoint, a_addr: tuple[str, int], b: Endpoint, b_addr: tuple[str, int],
          now: float) -> list[bytes]:
    """Exchange datagrams both ways until quiet; returns what `a` sent."""
    sent = []
    for _ in range(8):
        out_a = a.datagrams_to_send(now)
        sent += [d for d, _ in out_a]
        for d, _ in out_a:
            b.receive_datagram(d, a_addr, now)
        out_b = b.datagrams_to_send(now)
        for d, _ in out_b:
            a.receive_datagram(d, b_addr, now)
        if not out_a and not out_b:
            break
    return sent


def _server_in_time_wait(now: float) -> Endpoint:
    """A connection opened, a byte each way, closed by the server first: the server's
    end is in TIME_WAIT, the client's CLOSED."""
    server = Endpoint(Config(), SERVER[1], listening=True)
    client = Endpoint(Config(), CLIENT[1])
    conn = client.connect(SERVER, now)
    conn.send(b"q")
    _pump(client, CLIENT, server, SERVER, now)
    peer = server.accept()
    assert peer is not None and peer.read() == b"q"
    peer.send(b"a")
    peer.close()
    _pump(client, CLIENT, server, SERVER, now)
    assert conn.read() == b"a" and conn.eof_received
    conn.close()
    _pump(client, CLIENT, server, SERVER, now)
    assert conn.state is State.CLOSED
    assert server.connections[CLIENT].state is State.TIME_WAIT
    return server


@pytest.mark.parametrize("yields", [False, True])
def test_a_syn_into_time_wait_is_answered_by_its_ack(yields: bool) -> None:
    """The server keeps its TIME_WAIT (the contract); what the client does with the
    old ACK depends on whether it may move to another port."""
    server = _server_in_time_wait(1.0)
    old = server.connections[CLIENT]
    client = Endpoint(Config(), CLIENT[1])
    conn = client.connect(SERVER, 1.05)
    conn.sender.yields_to_time_wait = yields
    sent = _pump(client, CLIENT, server, SERVER, 1.05)
    assert server.connections[CLIENT] is old and old.state is State.TIME_WAIT
    assert [wire.parse(d).flags for d in sent] == [wire.SYN, wire.RST]
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    if yields:
        assert conn.state is State.CLOSED
        (end,) = [e for e in events if isinstance(e, Terminated)]
        assert isinstance(end.error, PeerHoldsPort) and "TIME_WAIT" in str(end.error)
    else:
        # as before: the SYN is retried from this port, until TIME_WAIT ends
        assert conn.state is State.SYN_SENT
        assert not [e for e in events if isinstance(e, Terminated)]


def test_a_spoofed_ack_with_a_syn_flag_is_no_time_wait_answer() -> None:
    """Only a bare ACK is what TIME_WAIT answers; a SYN+ACK that acknowledges something
    else is the usual unacceptable segment: RST, and the connect goes on."""
    client = Endpoint(Config(), CLIENT[1])
    conn = client.connect(SERVER, 1.0)
    conn.sender.yields_to_time_wait = True
    client.datagrams_to_send(1.0)
    bogus = wire.build(wire.Segment(SERVER[1], CLIENT[1], 777, (conn.iss + 5000) & 0xFFFFFFFF,
                                    wire.SYN | wire.ACK, 65535))
    client.receive_datagram(bogus, SERVER, 1.0)
    assert [wire.parse(d).flags for d, _ in client.datagrams_to_send(1.0)] == [wire.RST]
    assert conn.state is State.SYN_SENT


async def _serve_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(1)
    writer.write(b"a")
    writer.close()  # the server closes first: its side ends in TIME_WAIT


def _free_udp_port() -> tuple[str, int]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    local: tuple[str, int] = probe.getsockname()
    probe.close()
    return local


async def _exchange(port: int, **kwds: Any) -> tuple[str, int]:
    reader, writer = await asyncio.wait_for(
        utcp.open_connection("127.0.0.1", port, **kwds), 30)
    used: tuple[str, int] = writer.get_extra_info("sockname")
    writer.write(b"q")
    assert await asyncio.wait_for(reader.readexactly(1), 30) == b"a"
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 30)
    return used


@pytest.mark.asyncio
async def test_open_connection_leaves_a_port_the_server_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is made to hand the second connect the first one's port (what random
    ephemeral ports do by chance): it moves to another port within a round trip."""
    server = await utcp.start_server(_serve_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        first = await _exchange(port, local_addr=_free_udp_port())
        sockets: list[socket.socket] = []
        real = api.set_socket_buffers

        def bind_the_first_to_the_old_port(sock: socket.socket) -> None:
            if not sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(first)
            sockets.append(sock)
            real(sock)

        monkeypatch.setattr(api, "set_socket_buffers", bind_the_first_to_the_old_port)
        started = time.monotonic()
        second = await _exchange(port)
        # a SYN retried from the old port would wait 1 s first, then 2 s more...
        assert time.monotonic() - started < 0.9
        assert len(sockets) == 2 and sockets[0].fileno() == -1  # the first one closed
        assert second != first
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_port_the_application_chose_is_kept() -> None:
    """local_addr is the application's choice (a NAT's hole, a peer-to-peer connect):
    the connect stays on it, retrying its SYN, as a TCP connect from a bound port does;
    here it is given up on after a few tries."""
    server = await utcp.start_server(_serve_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        local = _free_udp_port()
        await _exchange(port, local_addr=local)
        config = Config(syn_retries=1, rto_initial=0.2)
        with pytest.raises(TimeoutError):
            await _exchange(port, local_addr=local, config=config)
    finally:
        server.close()
        await server.wait_closed()
