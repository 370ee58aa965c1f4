"""DESIGN §4.4 on the client side: a fixed local port cannot reopen a pair in TIME_WAIT."""

from __future__ import annotations

import asyncio
import socket

import pytest

import utcp


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


async def test_same_local_port_refused_while_time_wait_lasts() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    cfg = utcp.Config(msl=0.5)
    server = await utcp.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    local = ("127.0.0.1", _free_udp_port())
    async with asyncio.timeout(30):
        reader, writer = await utcp.open_connection("127.0.0.1", port, local_addr=local,
                                                    config=cfg)
        writer.write_eof()              # we close first: we will hold TIME_WAIT
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert writer.get_extra_info("state") is utcp.State.TIME_WAIT
        with pytest.raises(OSError, match="TIME_WAIT") as info:
            await utcp.open_connection("127.0.0.1", port, local_addr=local, config=cfg)
        assert info.value.errno == 98
        while writer.get_extra_info("state") is not utcp.State.CLOSED:
            await asyncio.sleep(0.05)   # 2 x msl = 1 s on the loop's clock
        _reader2, writer2 = await utcp.open_connection("127.0.0.1", port, local_addr=local,
                                                      config=cfg)
        assert writer2.get_extra_info("state") is utcp.State.ESTABLISHED
        writer2.close()
        await writer2.wait_closed()
    server.close()
    await server.wait_closed()
