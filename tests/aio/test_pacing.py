"""Pacing through the asyncio adapter: a held segment is sent by UdpPort's loop timer.

The core's pacing is tested on the fake clock (tests/test_pacing.py); here the point is
the timer flow on a real loop: Connection.get_timer -> Endpoint -> UdpPort's one
`call_at` handle -> handle_timer -> the next paced segments. Nothing is timed: the
connection is told its round trip is long, so pacing must hold most of a write, and
the test checks that all of it arrives without the retransmission timer's help.
"""

from __future__ import annotations

import asyncio

import utcp
from tests.aio.util import FAST, HOST, close_writer, payload, port_of, serve, sha, wait_until

MSS = 1400
SEGMENTS = 60


async def test_held_segments_are_released_by_the_loop_timer_not_the_rto() -> None:
    # an RTO of at least 10 s: if the pacing timer did not fire, only it would move data
    config = FAST.replace(rto_min=10.0, rto_max=60.0, initial_cwnd_segments=SEGMENTS,
                          mss=MSS, pmtu_probing=False)
    data = payload(SEGMENTS * MSS, seed=4)
    received = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
        writer.close()

    async with serve(sink, config=config) as server:
        _reader, writer = await utcp.open_connection(HOST, port_of(server), config=config)
        conn = writer.get_extra_info("connection")
        assert conn.sender.pacer is not None and conn.recovery.rtt.srtt is not None
        conn.recovery.rtt.srtt = 0.05  # as on a 50 ms path: 2 x cwnd / srtt is about 3.4 MB/s
        conn.sender.pacer.credit = 0.0  # and the bucket empty (the handshake's 1 ms RTT filled it)
        writer.write(data)
        await wait_until(lambda: len(received) == len(data), what="the paced write")
        assert sha(received) == sha(data)
        assert conn.sender.pacer.holds > 0
        assert conn.counters.timeouts == 0 and conn.counters.segments_retransmitted == 0
        await close_writer(writer)
