"""Every abnormal end of a UtcpTransport goes through one `_force_close(exc)` path, as
CPython's selector transports do (issue #13): here the one that had none, a port whose
socket closes under a live connection."""

from __future__ import annotations

import asyncio

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, echo_server, port_of


class Lost(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def test_port_closed_under_a_connection_ends_it_with_connection_lost() -> None:
    async with echo_server() as server:
        protocol = Lost()
        transport, _ = await utcp.create_connection(lambda: protocol, HOST, port_of(server),
                                                    config=FAST)
        assert isinstance(transport, utcp.UtcpTransport)
        transport._port.close()  # type: ignore[attr-defined]
        async with asyncio.timeout(TIMEOUT):
            exc = await protocol.lost
        assert isinstance(exc, ConnectionAbortedError)
        assert transport.is_closing()
        # the server's side heard the RST sent before the socket closed
        async with asyncio.timeout(TIMEOUT):
            while server._ports[0].endpoint.connections:  # type: ignore[attr-defined]
                await asyncio.sleep(0.005)
