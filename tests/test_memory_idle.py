"""Memory of an idle server connection (issue #14 item 2: 100,000 connections on one
server at <= 8 KiB each), measured with tracemalloc, not timed.

Each connection is what the benchmark's idle test leaves behind: a handshake with the
options a utcp client sends (MSS, window scale, SACK-permitted, timestamps), a 9-byte
request read by the application, a 1-byte answer sent and acknowledged. The bound is on
the sans-IO core (Connection and everything it owns, plus the endpoint's table entry);
benchmarks/idle.py measures the whole server process with the asyncio layer on top.
Before this test's changes the core alone took 8.5 KiB per connection: the
Connection's own __dict__ (3.3 KiB: CPython 3.11 shares no dict keys past 30 attributes),
three deques of 760 bytes each kept empty (events, received pieces, RACK's time
queue), a fresh block from the receive deque's clear() and the delivered segment.
"""

from __future__ import annotations

import gc
import random
import tracemalloc

from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

PEER_ISN = 5000
COUNT = 1000
# Measured 3.4 KiB (3,474 bytes) with these changes, 8.5 KiB (8,737) before them.
BOUND = 4.5 * 1024


def _idle_connection(ep: Endpoint, peer: tuple[str, int], now: float) -> Connection:
    """Open one connection from `peer` by hand and leave it idle as the benchmark does."""
    syn = wire.Segment(peer[1], ep.port, PEER_ISN, 0, wire.SYN, 65535,
                       options=wire.Options(mss=1400, wscale=7, sack_permitted=True,
                                            timestamps=(1, 0)))
    ep.receive_datagram(wire.build(syn), peer, now)
    (synack, _), = [d for d in ep.datagrams_to_send(now) if d[1] == peer]
    parsed = wire.parse(synack)
    assert parsed.options.timestamps is not None and parsed.options.sack_permitted
    ours, their_ts = parsed.seq + 1, parsed.options.timestamps[0]
    opts = wire.Options(timestamps=(2, their_ts)).encode()
    request = b"I" + bytes(8)
    ep.receive_datagram(wire.build_fast(peer[1], ep.port, PEER_ISN + 1, ours, wire.ACK,
                                        512, opts, request), peer, now)
    ep.datagrams_to_send(now)  # moves it to the accept queue
    conn = ep.accept()
    assert conn is not None and conn.state is State.ESTABLISHED
    assert conn.read() == request
    conn.send(b"i")
    answers = [wire.parse(d) for d, a in ep.datagrams_to_send(now) if a == peer]
    assert any(s.payload == b"i" for s in answers)
    their_ts = answers[-1].options.timestamps[0]  # type: ignore[index]
    opts = wire.Options(timestamps=(3, their_ts)).encode()
    ep.receive_datagram(wire.build_fast(peer[1], ep.port, PEER_ISN + 1 + len(request),
                                        ours + 1, wire.ACK, 512, opts), peer, now)
    ep.datagrams_to_send(now)
    while conn.next_event() is not None:
        pass
    assert conn.in_flight == 0 and conn.readable == 0
    return conn


def test_idle_server_connections_fit_the_budget() -> None:
    ep = Endpoint(Config(max_connections=COUNT + 10), 80, listening=True, backlog=COUNT,
                  rng=random.Random(1))
    _idle_connection(ep, ("10.9.9.9", 9999), 0.0)  # the endpoint's one-off allocations
    conns = []
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(COUNT):
            peer = (f"10.0.{i // 250}.{i % 250 + 1}", 40000 + i)
            conns.append(_idle_connection(ep, peer, 0.001 * i))
        gc.collect()
        per = (tracemalloc.get_traced_memory()[0] - base) / COUNT
    finally:
        tracemalloc.stop()
    assert len(ep.connections) == COUNT + 1
    assert all(c.state is State.ESTABLISHED for c in conns)
    assert per <= BOUND, f"{per:.0f} bytes per idle connection (bound {BOUND:.0f})"
