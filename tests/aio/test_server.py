"""`utcp.Server` behaves like `asyncio.Server`, over real loopback UDP sockets."""

from __future__ import annotations

import asyncio
import errno
import socket
import time

import pytest

import utcp
from tests.aio.util import (
    FAST,
    HOST,
    TIMEOUT,
    close_writer,
    echo_handler,
    port_of,
    serving,
)


async def _echo_once(port: int, host: str = HOST, message: bytes = b"ping") -> None:
    reader, writer = await utcp.open_connection(host, port, config=FAST)
    writer.write(message)
    assert await reader.readexactly(len(message)) == message
    await close_writer(writer)


# The first SYN's resend waits 10 s with this: a refusal sooner was the answer (a RST or
# ICMP) to the first SYN, not to a resend or a timeout, however loaded the machine.
NO_RESEND = FAST.replace(rto_initial=10.0)


async def _refused(port: int) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        async with asyncio.timeout(TIMEOUT):
            await utcp.open_connection(HOST, port, config=NO_RESEND)
    assert time.monotonic() - start < NO_RESEND.rto_initial


async def test_sockets_port_and_is_serving() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST)
        assert server.is_serving()
        assert server.get_loop() is asyncio.get_running_loop()
        (sock,) = server.sockets
        assert isinstance(sock, socket.socket)
        assert sock.type == socket.SOCK_DGRAM and sock.family == socket.AF_INET
        port = sock.getsockname()[1]
        assert sock.getsockname() == (HOST, port) and port != 0
        assert port_of(server) == port
        await _echo_once(port)
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        server.close()  # twice is fine
        await server.wait_closed()


async def test_close_and_wait_closed_with_a_live_connection() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST)
        port = port_of(server)
        reader, writer = await utcp.open_connection(HOST, port, config=FAST)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"

        server.close()
        assert not server.is_serving()
        waiting = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # wait_closed waits for the connection it accepted

        writer.write(b"after close")  # the open connection goes on
        assert await reader.readexactly(11) == b"after close"
        await _refused(port)  # but nothing new is accepted

        writer.write_eof()  # the echo handler closes after our EOF
        assert await reader.read() == b""
        await waiting
        await close_writer(writer)
        await _refused(port)


async def test_wait_closed_without_connections_returns_at_once() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST)
        port = port_of(server)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        await _refused(port)  # the socket itself is closed: ICMP port unreachable


async def test_serve_forever_cancellation() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST,
                                         start_serving=False)
        port = port_of(server)
        forever = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        await _echo_once(port)
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # only one at a time
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        await _refused(port)
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # closed


async def test_async_with_server() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST)
        async with server as entered:
            assert entered is server
            assert server.is_serving()
            port = port_of(server)
            await _echo_once(port)
        assert not server.is_serving()
        assert server.sockets == ()
        await _refused(port)


async def test_start_serving_false_then_start_serving() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST,
                                         start_serving=False)
        assert not server.is_serving()
        port = port_of(server)  # bound already
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError):  # a RST in answer to the SYN
            await utcp.open_connection(HOST, port, config=NO_RESEND)
        assert time.monotonic() - start < NO_RESEND.rto_initial  # the first SYN's answer
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # again: no effect
        await _echo_once(port)
        server.close()
        await server.wait_closed()
        with pytest.raises(RuntimeError):
            await server.start_serving()


async def test_one_server_on_ipv4_and_ipv6_loopback() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, [HOST, "::1"], 0, config=FAST)
        async with serving(server):
            families = sorted(s.family for s in server.sockets)
            assert families == sorted([socket.AF_INET, socket.AF_INET6])
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                await _echo_once(port, host, message=host.encode())


async def test_a_second_server_cannot_take_a_bound_port() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=FAST)
        async with serving(server):
            with pytest.raises(OSError) as info:
                await utcp.start_server(echo_handler, HOST, port_of(server), config=FAST)
            assert info.value.errno == errno.EADDRINUSE
            await _echo_once(port_of(server))  # the first one still has its traffic


async def test_protocol_factory_failure_goes_to_the_exception_handler() -> None:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))

    def factory() -> asyncio.Protocol:
        raise LookupError("no protocol today")

    try:
        async with asyncio.timeout(TIMEOUT):
            server = await utcp.create_server(factory, HOST, 0, config=FAST)
            async with serving(server):
                reader, writer = await utcp.open_connection(HOST, port_of(server),
                                                            config=FAST)
                with pytest.raises(ConnectionResetError):
                    await reader.read()
                writer.close()
        (context,) = contexts
        assert isinstance(context["exception"], LookupError)
    finally:
        loop.set_exception_handler(None)
