"""docs/protocol.md §4.4, client side: a fixed local port cannot reopen a pair in TIME_WAIT."""

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

    # TIME_WAIT must still hold when the second connect is tried: 2 x msl = 4 s leaves a
    # loaded machine that much between the close and the refusal (it was 1 s)
    cfg = utcp.Config(msl=2.0)
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
            await asyncio.sleep(0.05)   # 2 x msl = 4 s on the loop's clock
        _reader2, writer2 = await utcp.open_connection("127.0.0.1", port, local_addr=local,
                                                      config=cfg)
        assert writer2.get_extra_info("state") is utcp.State.ESTABLISHED
        writer2.close()
        await writer2.wait_closed()
    server.close()
    await server.wait_closed()


async def test_lingering_client_sockets_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connect-and-close in a loop leaves each client socket in TIME_WAIT for 2 x msl;
    past the cap the oldest are closed early (as Linux past tcp_max_tw_buckets), so file
    descriptors stay bounded."""
    from utcp.aio import port as port_module

    # the cached limit, read "now" for good: a list the compiled module reads too (a
    # patched module function would not be seen by its compiled callers)
    monkeypatch.setattr(port_module, "_lingering_limit", [5, float("inf")])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await utcp.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writers = []
    async with asyncio.timeout(60):
        for _ in range(12):
            reader, writer = await utcp.open_connection("127.0.0.1", port)
            writer.write_eof()             # the client closes first: it holds TIME_WAIT
            await reader.read()
            writer.close()
            await writer.wait_closed()
            writers.append(writer)
        await asyncio.sleep(0.05)
    states = [w.get_extra_info("state") for w in writers]
    lingering = port_module._lingering[asyncio.get_running_loop()]
    assert len(lingering) == 5
    assert states[-5:] == [utcp.State.TIME_WAIT] * 5      # the newest keep TIME_WAIT
    assert states[:7] == [utcp.State.CLOSED] * 7          # the oldest were let go
    assert all(w.transport._port.sock.fileno() == -1 for w in writers[:7])
    server.close()
    await server.wait_closed()
