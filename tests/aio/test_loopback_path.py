"""A loopback peer starts at the route's segment size (about 64 KiB), as Linux's TCP does
there; these tests check that it still gets through when the path behind 127.0.0.1
carries less, as a forwarder (a tunnel's, a container's port proxy) may."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import utcp
from tests.aio.util import HOST, TIMEOUT, port_of
from tests.test_pcap import LossyRelay
from utcp.aio.port import route_mss

ETHERNET_UDP = 1500 - 20 - 8  # the UDP payload a 1500-byte IPv4 path carries


async def test_a_forwarder_that_carries_less_than_the_route() -> None:
    """The full-size segments vanish at the forwarder: two timeouts in a row bring the
    base size back and every byte arrives (before, each was resent at 64 KiB until the
    connection gave up)."""
    data = os.urandom(300_000)
    got = hashlib.sha256()
    done = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 16):
            got.update(chunk)
        writer.close()
        done.set()

    cfg = utcp.Config(msl=0.2, rto_initial=0.2)
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(sink, HOST, 0, config=cfg)
        relay = LossyRelay(port_of(server), every=0, drop_first=False,
                           max_size=ETHERNET_UDP)
        try:
            _, writer = await utcp.open_connection(HOST, await relay.start(),
                                                   config=cfg)
            assert writer.get_extra_info("stats").mss == route_mss(socket.AF_INET, HOST)
            writer.write(data)
            writer.write_eof()
            await done.wait()
            stats = writer.get_extra_info("stats")
            writer.close()
        finally:
            relay.close()
            server.close()
            await server.wait_closed()
    assert got.digest() == hashlib.sha256(data).digest()
    assert relay.dropped["c2s"] > 0 and stats.timeouts >= 2
    assert cfg.mss <= stats.mss <= ETHERNET_UDP - 20 - 12  # TCP header, timestamps
