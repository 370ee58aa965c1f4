"""Malformed datagrams on real sockets: a silent counted drop, never an exception.

Issue #12 item 4: an empty UDP datagram raised `ValueError: range() arg 3 must not be
zero` out of the GRO read path into the loop's exception handler, once per datagram, on
servers and (spoofed from the server's address) on clients. Here a real server and
client on loopback are sent every kind of malformed datagram: empty, shorter than a
header, a bad data offset, options that run past the header or have bad lengths, and
GSO batches whose every piece is malformed (which arrive as one GRO read). Nothing may
reach the loop's exception handler, each datagram must be counted as a drop, and the
connection must go on working.

The tests drive their own loops (`asyncio.Runner`) for both asyncio's and uvloop's, and
with GRO on and off (`batch.GRO_ALLOWED`), since the two read paths differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, echo_handler, port_of, wait_until
from utcp import crypto
from utcp.aio import batch
from utcp.aio.port import UdpPort
from utcp.endpoint import Endpoint

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _header(offset_words: int, flags: int = 0x10) -> bytes:
    return struct.pack("!HHIIBBHHH", 1, 2, 3, 4, offset_words << 4, flags, 100, 0, 0)


MALFORMED: list[bytes] = [
    b"",                                   # the one that raised
    b"\x00",
    bytes(19),                             # one byte short of a header
    _header(0),                            # data offset below 5 words
    _header(4) + b"payload",
    _header(15),                           # data offset past the datagram
    _header(6) + b"\x02\x00\x00\x00",      # option length 0
    _header(6) + b"\x02\x09\x00\x00",      # option past the header
    _header(6) + b"\x01\x01\x01\x02",      # option kind without its length byte
    _header(6) + b"\x02\x03\x05\xb4",      # MSS option of length 3
    _header(6) + b"\x05\x02\x00\x00",      # empty SACK option
    _header(6) + b"\x08\x06\x00\x00",      # timestamps option of length 6
]


def _malformed_count(counters: dict[str, int]) -> int:
    return sum(n for key, n in counters.items()
               if key.startswith(("malformed:", "secure:", "dropped:")))


@pytest.fixture(params=[True, False], ids=["gro", "nogro"])
def gro(request: pytest.FixtureRequest) -> Iterator[bool]:
    saved = batch.GRO_ALLOWED
    batch.GRO_ALLOWED = request.param
    try:
        yield request.param
    finally:
        batch.GRO_ALLOWED = saved


def _configs() -> dict[str, tuple[utcp.Config, utcp.Config]]:
    private, public = crypto.generate_keypair()
    return {
        "plain": (FAST, FAST),
        "secure": (FAST.replace(secret_key=private), FAST.replace(server_key=public)),
    }


def _gso_send(sock: socket.socket, data: bytes, size: int, addr: Any = None) -> bool:
    """Send `data` as datagrams of `size` bytes in one GSO call; False if unsupported."""
    if not batch.probe_gso(sock):
        return False
    try:
        if addr is None:
            sock.sendmsg([data], batch.gso_control(size))
        else:
            sock.sendmsg([data], batch.gso_control(size), 0, addr)
    except OSError:
        return False
    return True


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      data: bytes) -> None:
    writer.write(data)
    async with asyncio.timeout(TIMEOUT):
        assert await reader.readexactly(len(data)) == data


async def _attack(server_cfg: utcp.Config, client_cfg: utcp.Config) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    server = await utcp.start_server(echo_handler, HOST, 0, config=server_cfg)
    server_port: UdpPort = server._ports[0]
    try:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=client_cfg)
        client_port: UdpPort = writer.transport._port  # type: ignore[attr-defined]
        await _round_trip(reader, writer, b"before")
        server_addr = (HOST, port_of(server))
        client_addr = writer.get_extra_info("sockname")
        client_sock: socket.socket = writer.get_extra_info("socket")
        server_sock = server.sockets[0]
        on_server = _malformed_count(server_port.endpoint.counters)
        on_client = _malformed_count(client_port.endpoint.counters)
        sent_server = sent_client = 0

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for data in MALFORMED:
                stranger.sendto(data, server_addr)      # for no connection
                client_sock.send(data)                  # from the connection's address
                server_sock.sendto(data, client_addr)   # to the client, as the server
                sent_server += 2
                sent_client += 1
            # GSO batches: one GRO read of glued pieces, each one malformed
            if _gso_send(stranger, bytes(10 * 12 + 7), 12, server_addr):
                sent_server += 11
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoof:
                # the server's socket would do, but GSO on it would change its options
                spoof.bind((HOST, 0))
                if _gso_send(spoof, _header(15) * 8, 20, server_addr):
                    sent_server += 8

            # an error ends the wait at once: the old code failed here, not by timing out
            await wait_until(
                lambda: bool(errors) or _malformed_count(server_port.endpoint.counters)
                - on_server >= sent_server, what="the server to count every datagram")
            assert errors == []
            await wait_until(
                lambda: bool(errors) or _malformed_count(client_port.endpoint.counters)
                - on_client >= sent_client, what="the client to count every datagram")
            assert errors == []
            # each counted once: nothing else sent is malformed, nor counted twice (in
            # secure mode the server counts a stranger's malformed datagram twice: see
            # test_secure_stranger_malformed_datagram_is_counted_once)
            assert _malformed_count(client_port.endpoint.counters) - on_client == sent_client
            if server_cfg.secret_key is None:
                assert (_malformed_count(server_port.endpoint.counters) - on_server
                        == sent_server)

        assert not any(k.startswith("dropped:") for k in server_port.endpoint.counters)
        assert not any(k.startswith("dropped:") for k in client_port.endpoint.counters)
        await _round_trip(reader, writer, b"after" * 1000)
        writer.close()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(TIMEOUT):
                await writer.wait_closed()
    finally:
        server.close()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()
    assert errors == []


@pytest.mark.parametrize("mode", ["plain", "secure"])
@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_malformed_datagrams_are_counted_drops(loop_name: str, mode: str, gro: bool) -> None:
    server_cfg, client_cfg = _configs()[mode]
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(_attack(server_cfg, client_cfg))


def test_secure_stranger_malformed_datagram_is_counted_once() -> None:
    """One malformed datagram from an address with no connection is one counted drop.

    In secure mode a datagram of 20 bytes or more for no connection that is not a SYN is
    counted as "secure: segment for no connection" and then, parsed, as "malformed: ..."
    as well: the drop statistics show two drops for one datagram (found mending the
    `>=` in `_attack`, which hid it).
    """
    private, _ = crypto.generate_keypair()
    ep = Endpoint(FAST.replace(secret_key=private), 1000, listening=True)
    for n, data in enumerate(d for d in MALFORMED if len(d) >= 20):
        ep.receive_datagram(data, ("10.9.0.1", 4000 + n), 0.0)
        assert _malformed_count(ep.counters) == n + 1, ep.counters


def test_gro_pieces_never_steps_by_zero() -> None:
    assert list(batch.gro_pieces(0, 0)) == [(0, 0)]
    assert list(batch.gro_pieces(5, 0)) == [(0, 5)]
    assert list(batch.gro_pieces(5, 9)) == [(0, 5)]
    assert list(batch.gro_pieces(25, 10)) == [(0, 10), (10, 20), (20, 25)]
    bad = [(socket.SOL_UDP, batch.UDP_GRO, struct.pack("=i", v)) for v in (0, -1)]
    assert [batch.gro_segment_size([b]) for b in bad] == [0, 0]
