"""An application that closes its writer while the peer's window is shut leaves an orphan:
over real sockets it ends in bounded time (issue #12 item 5; the core's bound is in
tests/test_persist.py), where it used to stay in FIN_WAIT_1 with its buffer forever."""

from __future__ import annotations

import asyncio

import pytest

import utcp
from tests.aio.util import HOST, TIMEOUT, port_of, wait_until
from utcp import State

# the server reads nothing and its window is small: the client's window shuts at once
SERVER_CFG = utcp.Config(msl=0.2, recv_buffer=4096)
# probes back off to at most 0.3 s, so ORPHAN_PROBES of them take a few seconds; 255
# retransmissions so that only the orphan bound can end the connection
CLIENT_CFG = utcp.Config(msl=0.2, rto_min=0.05, rto_initial=0.2, rto_max=0.3,
                         max_retransmissions=255)


async def test_a_closed_writer_on_a_shut_window_ends() -> None:
    async with asyncio.timeout(TIMEOUT):
        held: list[asyncio.StreamWriter] = []

        async def never_reads(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # alive, answering probes, reading nothing

        server = await utcp.start_server(never_reads, HOST, 0, config=SERVER_CFG)
        try:
            _reader, writer = await utcp.open_connection(HOST, port_of(server),
                                                         config=CLIENT_CFG)
            conn = writer.get_extra_info("connection")
            writer.write(bytes(200_000))
            await wait_until(lambda: conn.snd_wnd == 0 and conn.unsent > 0,
                             what="the server's window to shut")
            assert not conn.orphaned
            writer.close()
            assert conn.orphaned and conn.state is State.FIN_WAIT_1
            with pytest.raises(TimeoutError, match="orphan"):
                await writer.wait_closed()
            assert conn.state is State.CLOSED
        finally:
            for w in held:
                w.transport.abort()
            server.close()
            await server.wait_closed()
