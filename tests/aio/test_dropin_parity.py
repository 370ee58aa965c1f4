"""Issue #11 item 4: details where utcp's calls now answer as asyncio's TCP ones do."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

import utcp
from tests.aio.test_streams import _self_signed
from tests.aio.util import (
    FAST,
    HOST,
    TIMEOUT,
    close_writer,
    echo_server,
    free_udp_port,
    has_ipv6,
    port_of,
)

# ---------------------------------------------------------------------- write after close

async def test_write_after_close_is_dropped_silently() -> None:
    async with echo_server() as server:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            writer.write(b"before")
            assert await reader.readexactly(6) == b"before"
            writer.close()
            writer.write(b"after close")  # asyncio drops it; it used to raise RuntimeError
            writer.transport.writelines([b"and", b"more"])
            assert await reader.read() == b""  # nothing was sent after the FIN
            await close_writer(writer)


async def test_write_after_abort_is_dropped_silently() -> None:
    async with echo_server() as server:
        async with asyncio.timeout(TIMEOUT):
            _, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            writer.transport.abort()
            writer.write(b"after abort")


async def test_write_after_write_eof_still_raises() -> None:
    """As asyncio's: a half-closed stream refuses more data loudly (close() does not)."""
    async with echo_server() as server:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            writer.write_eof()
            with pytest.raises(RuntimeError, match="write_eof"):
                writer.write(b"x")
            writer.close()
            with pytest.raises(RuntimeError, match="write_eof"):
                writer.write(b"x")  # asyncio checks write_eof first, so does utcp
            assert await reader.read() == b""
            await close_writer(writer)


# ---------------------------------------------------------------------- refusals

async def test_refused_carries_errno_and_the_address() -> None:
    port = free_udp_port()
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionRefusedError) as info:
            await utcp.open_connection(HOST, port, config=FAST)
    exc = info.value
    assert exc.errno == errno.ECONNREFUSED
    assert f"Connect call failed ('{HOST}', {port})" in str(exc), str(exc)
    assert "port unreachable" in str(exc), str(exc)  # utcp's reason stays in the message
    assert isinstance(exc.__cause__, ConnectionRefusedError)


async def test_port_zero_is_refused_as_asyncio_refuses_it() -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(OSError) as tcp:
            await asyncio.open_connection(HOST, 0)
        with pytest.raises(OSError) as ours:
            await utcp.open_connection(HOST, 0, config=FAST)
    assert type(ours.value) is type(tcp.value) is ConnectionRefusedError
    assert ours.value.errno == tcp.value.errno == errno.ECONNREFUSED
    assert f"('{HOST}', 0)" in str(ours.value)  # as the default loop words it


# ---------------------------------------------------------------------- service names

async def test_a_service_name_is_a_port() -> None:
    http = socket.getservbyname("http", "tcp")
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionRefusedError) as info:  # nothing serves utcp on 80
            await utcp.open_connection(HOST, "http", config=FAST)
    assert f"('{HOST}', {http})" in str(info.value), str(info.value)
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(socket.gaierror) as gai:
            await utcp.open_connection(HOST, "no-such-service-here", config=FAST)
    assert gai.value.errno == socket.EAI_SERVICE


async def test_a_numeric_string_is_a_port_still() -> None:
    async with echo_server() as server:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await utcp.open_connection(HOST, str(port_of(server)),
                                                        config=FAST)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            await close_writer(writer)


# ---------------------------------------------------------------------- addresses

@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_server_side_ipv6_peername_is_a_4_tuple() -> None:
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[Any] = loop.create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(writer.get_extra_info("peername"))
        writer.close()

    server = await utcp.start_server(handler, "::1", 0, config=FAST)
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await utcp.open_connection("::1", port_of(server), config=FAST)
            peername = await seen
            assert peername == writer.get_extra_info("sockname")  # ('::1', port, 0, 0)
            assert len(peername) == 4
            assert await reader.read() == b""
            await close_writer(writer)
    finally:
        server.close()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()


@pytest.mark.parametrize("host", ["localhost", None])
async def test_server_binds_the_addresses_asyncio_binds(host: str | None) -> None:
    """The same (family, address) set as asyncio.start_server; each its own port, as
    asyncio gives each socket its own when asked for port 0."""
    tcp = await asyncio.start_server(lambda r, w: None, host, 0)
    ours = await utcp.start_server(lambda r, w: None, host, 0, config=FAST)
    try:
        def addresses(server: Any) -> set[tuple[int, str]]:
            return {(s.family, s.getsockname()[0]) for s in server.sockets}

        assert addresses(ours) == addresses(tcp)
    finally:
        tcp.close()
        ours.close()


# ---------------------------------------------------------------------- STARTTLS

async def test_writer_start_tls_upgrades_both_sides(tmp_path: Path) -> None:
    """STARTTLS, as SMTP or IMAP do it: plain text first, then writer.start_tls() on
    both sides. uvloop's loop.start_tls refused utcp's transport (TypeError)."""
    cert_file, key_file, cert_pem = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cadata=cert_pem)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"go ahead\n")
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        line = await reader.readline()
        writer.write(b"over tls: " + line)
        await writer.drain()
        writer.close()

    server = await utcp.start_server(handler, HOST, 0, config=FAST)
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"go ahead\n"
            await writer.start_tls(client_ctx, server_hostname="localhost")
            assert writer.get_extra_info("peercert")["subject"] == (
                (("commonName", "localhost"),),)
            writer.write(b"secret\n")
            assert await reader.readline() == b"over tls: secret\n"
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        server.close()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()


# ---------------------------------------------------------------------- sock=

def bound_udp(host: str = HOST) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


async def test_open_connection_over_the_applications_own_socket() -> None:
    async with echo_server() as server:
        async with asyncio.timeout(TIMEOUT):
            sock = bound_udp()
            local = sock.getsockname()
            reader, writer = await utcp.open_connection(HOST, port_of(server), sock=sock,
                                                        config=FAST)
            assert writer.get_extra_info("sockname") == local
            assert writer.get_extra_info("socket") is sock
            writer.write(b"own socket")
            assert await reader.readexactly(10) == b"own socket"
            await close_writer(writer)


async def test_create_connection_over_a_connected_socket_without_host_and_port() -> None:
    server = await utcp.create_server(asyncio.Protocol, HOST, 0, config=FAST)
    try:
        async with asyncio.timeout(TIMEOUT):
            sock = bound_udp()
            sock.connect((HOST, port_of(server)))
            transport, _ = await utcp.create_connection(asyncio.Protocol, sock=sock,
                                                        config=FAST)
            assert transport.get_extra_info("peername")[:2] == (HOST, port_of(server))
            assert transport.get_extra_info("socket") is sock
            transport.close()
    finally:
        server.close()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()


async def test_sock_is_checked_as_asyncio_checks_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            await utcp.open_connection(HOST, 9, sock=tcp)
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            await utcp.start_server(lambda r, w: None, sock=tcp)
    with bound_udp() as udp:
        with pytest.raises(ValueError, match="not connected"):
            await utcp.open_connection(sock=udp)
        with pytest.raises(ValueError, match="local_addr"):
            await utcp.open_connection(HOST, 9, sock=udp, local_addr=(HOST, 0))
        with pytest.raises(ValueError, match="host/port"):
            await utcp.start_server(lambda r, w: None, HOST, 0, sock=udp)
    with (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unbound,
          pytest.raises(ValueError, match="bound")):
        await utcp.start_server(lambda r, w: None, sock=unbound)


async def test_start_server_on_the_applications_own_socket() -> None:
    sock = bound_udp()
    port = sock.getsockname()[1]
    server = await utcp.create_server(asyncio.Protocol, sock=sock, config=FAST)
    try:
        assert server.sockets == (sock,)
        async with asyncio.timeout(TIMEOUT):
            transport, _ = await utcp.create_connection(asyncio.Protocol, HOST, port,
                                                        config=FAST)
            transport.close()
    finally:
        server.close()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_closed()


async def test_hole_punching_peers_connect_over_their_own_sockets() -> None:
    """Two peers that each punched a hole with a socket of their own (here: just bound
    it) connect towards each other from it at once: a simultaneous open."""
    a, b = bound_udp(), bound_udp()
    a_port, b_port = a.getsockname()[1], b.getsockname()[1]
    async with asyncio.timeout(TIMEOUT):
        (ra, wa), (rb, wb) = await asyncio.gather(
            utcp.open_connection(HOST, b_port, sock=a, config=FAST),
            utcp.open_connection(HOST, a_port, sock=b, config=FAST))
        wa.write(b"from a")
        wb.write(b"from b")
        assert await rb.readexactly(6) == b"from a"
        assert await ra.readexactly(6) == b"from b"
        await asyncio.gather(close_writer(wa), close_writer(wb))


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_a_refused_address_moves_on_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with ::1 first and 127.0.0.1 next ("localhost" on many systems), served on
    127.0.0.1 only: as asyncio, the refusal from ::1 is not the answer."""
    from utcp.aio import api

    async with echo_server() as server:
        port = port_of(server)
        infos = (socket.getaddrinfo("::1", port, type=socket.SOCK_DGRAM)
                 + socket.getaddrinfo(HOST, port, type=socket.SOCK_DGRAM))

        async def resolve(*args: Any) -> list[Any]:
            return infos

        monkeypatch.setattr(api, "_resolve", resolve)
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await utcp.open_connection("dual-stack-name", port, config=FAST)
            assert writer.get_extra_info("peername") == (HOST, port)
            writer.write(b"v4")
            assert await reader.readexactly(2) == b"v4"
            await close_writer(writer)
