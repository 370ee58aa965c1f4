"""create_connection's `happy_eyeballs_delay` and `interleave`, and `ssl_shutdown_timeout`
in create_connection/create_server, with asyncio's semantics (issue #13: they were
accepted and ignored).

A host name resolving to ::1 and 127.0.0.1 comes from a patched `loop.getaddrinfo`;
the ::1 address is a UDP socket that swallows every datagram (a black hole: no answer,
no ICMP), as an IPv6 path that is broken somewhere on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import utcp
from tests.aio.test_streams import _self_signed
from tests.aio.util import (
    FAST,
    HOST,
    TIMEOUT,
    echo_server,
    free_udp_port,
    has_ipv6,
    port_of,
    wait_until,
)
from utcp.aio import api, shutdown

needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no ::1 on this machine")
NAME = "dual-stack.utcp.test"  # never resolves for real: only the patched getaddrinfo


def _info(family: int, host: str, port: int) -> tuple[Any, ...]:
    addr: tuple[Any, ...] = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
    return (family, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", addr)


def _patch_resolver(monkeypatch: pytest.MonkeyPatch, infos: list[tuple[Any, ...]]) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: Any, port: Any, **kwds: Any) -> list[tuple[Any, ...]]:
        assert host == NAME
        return list(infos)
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


@contextlib.contextmanager
def _black_hole() -> Iterator[tuple[socket.socket, int]]:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as hole:
        hole.bind(("::1", 0))
        yield hole, hole.getsockname()[1]


def _datagrams_in(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(65536)
            count += 1
    return count


# ---------------------------------------------------------------------- interleave

def test_interleave_orders_families_as_asyncio() -> None:
    v6 = [_info(socket.AF_INET6, "::1", p) for p in (1, 2, 3)]
    v4 = [_info(socket.AF_INET, "127.0.0.1", p) for p in (4, 5)]
    infos = [*v6, *v4]
    assert api._interleave_families(list(infos), 1) == [v6[0], v4[0], v6[1], v4[1], v6[2]]
    assert api._interleave_families(list(infos), 2) == [v6[0], v6[1], v4[0], v6[2], v4[1]]
    assert api._interleave_families(list(infos), -1) == [v6[0], v4[0], v6[1], v4[1], v6[2]]


@needs_ipv6
async def test_interleave_changes_the_order_addresses_are_tried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing listens anywhere: each attempt is refused at once, in the order tried
    ports = [free_udp_port("::1"), free_udp_port("::1"), free_udp_port(HOST)]
    _patch_resolver(monkeypatch, [_info(socket.AF_INET6, "::1", ports[0]),
                                  _info(socket.AF_INET6, "::1", ports[1]),
                                  _info(socket.AF_INET, HOST, ports[2])])

    async def tried(**kwds: Any) -> list[int]:
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.timeout(TIMEOUT):
                await utcp.create_connection(asyncio.Protocol, NAME, 1, config=FAST,
                                             all_errors=True, **kwds)
        order = []
        for exc in caught.value.exceptions:
            assert isinstance(exc, ConnectionRefusedError)
            order.append(next(p for p in ports if f", {p}" in str(exc)))
        return order

    assert await tried() == ports
    assert await tried(interleave=1) == [ports[0], ports[2], ports[1]]
    assert await tried(interleave=2) == ports


# ---------------------------------------------------------------------- happy eyeballs

@needs_ipv6
async def test_happy_eyeballs_connects_over_ipv4_while_ipv6_hangs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = utcp.Config(msl=FAST.msl, syn_retries=20)  # ::1 alone would take minutes
    opened: list[utcp.UtcpTransport] = []
    real_open = api._open

    async def recording_open(*args: Any, **kwds: Any) -> Any:
        found = await real_open(*args, **kwds)
        opened.append(found[0])
        return found
    monkeypatch.setattr(api, "_open", recording_open)
    with _black_hole() as (hole, hole_port):
        async with echo_server() as server:
            _patch_resolver(monkeypatch, [_info(socket.AF_INET6, "::1", hole_port),
                                          _info(socket.AF_INET, HOST, port_of(server))])
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await utcp.open_connection(
                    NAME, 7, config=config, happy_eyeballs_delay=0.1)
            assert writer.get_extra_info("peername")[0] == HOST
            writer.write(b"ping\n")
            async with asyncio.timeout(TIMEOUT):
                assert await reader.readline() == b"ping\n"
            assert _datagrams_in(hole) >= 1  # the ::1 attempt did start first
            # the losing attempt was cancelled: its socket is closed, not left retrying
            (v6_attempt,) = [t for t in opened if t.get_extra_info("peername")[0] == "::1"]
            v6_port = v6_attempt._port  # type: ignore[attr-defined]
            await wait_until(lambda: v6_port.closed, what="the ::1 attempt's socket closed")
            writer.close()
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(TIMEOUT):
                    await writer.wait_closed()


@needs_ipv6
async def test_happy_eyeballs_a_refusal_starts_the_next_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a delay far beyond the test's timeout: only the refusal can start the IPv4 attempt
    async with echo_server() as server:
        _patch_resolver(monkeypatch, [_info(socket.AF_INET6, "::1", free_udp_port("::1")),
                                      _info(socket.AF_INET, HOST, port_of(server))])
        async with asyncio.timeout(TIMEOUT):
            transport, _ = await utcp.create_connection(
                asyncio.Protocol, NAME, 7, config=FAST, happy_eyeballs_delay=10 * TIMEOUT)
        assert transport.get_extra_info("peername")[0] == HOST
        transport.close()


@needs_ipv6
async def test_happy_eyeballs_all_failing_reports_every_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [free_udp_port("::1"), free_udp_port(HOST)]
    _patch_resolver(monkeypatch, [_info(socket.AF_INET6, "::1", ports[0]),
                                  _info(socket.AF_INET, HOST, ports[1])])
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(TIMEOUT):
            await utcp.create_connection(asyncio.Protocol, NAME, 7, config=FAST,
                                         happy_eyeballs_delay=0.05, all_errors=True)
    assert len(caught.value.exceptions) == 2
    assert all(isinstance(e, ConnectionRefusedError) for e in caught.value.exceptions)


# ---------------------------------------------------------------------- ssl_shutdown_timeout

async def test_ssl_shutdown_timeout_without_ssl_or_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="only meaningful with ssl"):
        await utcp.create_connection(asyncio.Protocol, HOST, 9, ssl_shutdown_timeout=1.0)
    with pytest.raises(ValueError, match="only meaningful with ssl"):
        await utcp.create_server(asyncio.Protocol, HOST, 0, ssl_shutdown_timeout=1.0)
    with pytest.raises(ValueError, match="positive"):
        await utcp.create_connection(asyncio.Protocol, HOST, 9, ssl=True,
                                     ssl_shutdown_timeout=0)


class _Lost(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize("side", ["client", "server"])
async def test_ssl_shutdown_timeout_bounds_the_tls_close(tmp_path: Path, side: str) -> None:
    """The peer never answers our close_notify (its reading is paused): the close ends
    after ssl_shutdown_timeout with TimeoutError, not asyncio's default 30 s."""
    cert_file, key_file, cert_pem = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cadata=cert_pem)
    short = 0.3
    server_protocols: list[_Lost] = []

    def server_factory() -> _Lost:
        server_protocols.append(_Lost())
        return server_protocols[-1]

    server = await utcp.create_server(
        server_factory, HOST, 0, config=FAST, ssl=server_ctx,
        ssl_shutdown_timeout=short if side == "server" else None)
    try:
        client = _Lost()
        async with asyncio.timeout(TIMEOUT):
            client_tls, _ = await utcp.create_connection(
                lambda: client, HOST, port_of(server), config=FAST, ssl=client_ctx,
                server_hostname="localhost",
                ssl_shutdown_timeout=short if side == "client" else None)
        await wait_until(lambda: len(server._active) == 1  # type: ignore[attr-defined]
                         and bool(server_protocols)
                         and server_protocols[0].transport is not None,
                         what="the server's TLS connection")
        (server_utcp,) = server._active  # type: ignore[attr-defined]
        closer: asyncio.BaseTransport
        # the side that closes waits on the other, which reads nothing more
        if side == "client":
            server_utcp.pause_reading()
            closer, closing = client_tls, client
        else:
            client_utcp = client_tls.get_extra_info("connection")
            (client_transport,) = [
                t for p in shutdown._ports_of(asyncio.get_running_loop()) or ()
                for c, t in p.transports.items() if c is client_utcp]
            assert isinstance(client_transport, utcp.UtcpTransport)
            client_transport.pause_reading()
            assert server_protocols[0].transport is not None
            closer, closing = server_protocols[0].transport, server_protocols[0]
        closer.close()
        # well under asyncio's 30 s default, with room for a loaded machine
        async with asyncio.timeout(TIMEOUT / 2):
            exc = await closing.lost
        assert isinstance(exc, TimeoutError)
    finally:
        server.close()
        server.abort_clients()



async def test_no_host_port_or_sock_is_asyncios_value_error() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError) as theirs:
        await loop.create_connection(asyncio.Protocol)
    with pytest.raises(ValueError) as ours:
        await utcp.create_connection(asyncio.Protocol)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError):
        await utcp.open_connection()
