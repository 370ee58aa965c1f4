"""A server that closes a connection whose client never closes its side does not keep it:
the server's orphan in FIN_WAIT_2 is dropped after `Config.fin_timeout` (Linux's
tcp_fin_timeout; the core's timing is in tests/test_fin_timeout.py), where it used to
stay as long as the client answered keepalives."""

from __future__ import annotations

import asyncio

import utcp
from tests.aio.util import HOST, TIMEOUT, port_of, wait_until
from utcp import State
from utcp.connection import Connection

FIN_TIMEOUT = 0.5
SERVER_CFG = utcp.Config(msl=0.2, fin_timeout=FIN_TIMEOUT)
# generous against a loaded machine; without the bound the connection never goes
GONE_WITHIN = 20 * FIN_TIMEOUT


async def test_a_server_drops_its_closed_connection_when_the_client_never_closes() -> None:
    """The server closes at once; its FIN is acknowledged, the client's never comes."""
    await _server_and_silent_client(half_close_first=False)


async def test_a_server_that_half_closed_first_is_bounded_from_its_close() -> None:
    """write_eof() first: FIN_WAIT_2 while the server still reads, kept as long as the
    client wishes; then close() makes it an orphan, and fin_timeout runs from there."""
    await _server_and_silent_client(half_close_first=True)


async def _server_and_silent_client(*, half_close_first: bool) -> None:
    async with asyncio.timeout(TIMEOUT):
        conns: list[Connection] = []
        writers: list[asyncio.StreamWriter] = []

        async def greet_and_close(reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
            conns.append(writer.get_extra_info("connection"))
            writers.append(writer)
            writer.write(b"bye")
            if half_close_first:
                writer.write_eof()
            else:
                writer.close()

        server = await utcp.start_server(greet_and_close, HOST, 0, config=SERVER_CFG)
        writer: asyncio.StreamWriter | None = None
        try:
            # the client reads to EOF and then holds its side open: CLOSE_WAIT for good
            reader, writer = await utcp.open_connection(HOST, port_of(server),
                                                        config=utcp.Config(msl=0.2))
            assert await reader.read() == b"bye"
            client = writer.get_extra_info("connection")
            assert client.state is State.CLOSE_WAIT
            endpoint = server._ports[0].endpoint  # type: ignore[attr-defined]
            (conn,) = conns
            if half_close_first:
                await wait_until(lambda: conn.state is State.FIN_WAIT_2,
                                 what="the server's FIN to be acknowledged")
                # not an orphan yet: a loaded machine only makes a timer later, so this
                # cannot fail with a correct core
                await asyncio.sleep(3 * FIN_TIMEOUT)
                assert conn.state is State.FIN_WAIT_2 and endpoint.connections
                writers[0].close()
            await wait_until(lambda: not endpoint.connections, timeout=GONE_WITHIN,
                             what="the server's orphan in FIN_WAIT_2 to be dropped")
            assert conn.state is State.CLOSED and conn.error is None
            assert conn.stats().fin_timeouts == 1  # ended by the bound, nothing else
            assert client.state is State.CLOSE_WAIT  # no RST was sent at the timeout
        finally:
            if writer is not None:
                writer.transport.abort()
            server.close()
            await server.wait_closed()
