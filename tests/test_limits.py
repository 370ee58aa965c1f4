"""Endpoint-wide limits: the reassembly budget and the connection count (issue 5, item 5)."""

from __future__ import annotations

import itertools
import random

import pytest

from utcp import wire
from utcp.config import Config
from utcp.connection import OOO_PIECE_OVERHEAD
from utcp.endpoint import Endpoint
from utcp.state import State

PEER_ISN = 5000


def _established(ep: Endpoint, peer: tuple[str, int]) -> tuple[int, object]:
    """Complete a handshake from `peer` by hand; returns the server's ISN + 1."""
    syn = wire.Segment(peer[1], ep.port, PEER_ISN, 0, wire.SYN, 65535,
                       options=wire.Options(mss=1000, wscale=7))
    ep.receive_datagram(wire.build(syn), peer, 0.0)
    (synack, _), = [d for d in ep.datagrams_to_send(0.0) if d[1] == peer]
    ours = wire.parse(synack).seq
    ep.receive_datagram(wire.build_fast(peer[1], ep.port, PEER_ISN + 1, ours + 1, wire.ACK,
                                        1000), peer, 0.01)
    ep.datagrams_to_send(0.01)
    conn = ep.connections[peer]
    assert conn.state is State.ESTABLISHED
    return ours + 1, conn


def _data(ep: Endpoint, peer: tuple[str, int], ack: int, offset: int, n: int) -> None:
    ep.receive_datagram(wire.build_fast(peer[1], ep.port, PEER_ISN + 1 + offset, ack,
                                        wire.ACK, 1000, b"", bytes(n)), peer, 0.02)


def test_out_of_order_bytes_are_bounded_across_connections() -> None:
    piece = 1000 + OOO_PIECE_OVERHEAD  # charged as real memory, not payload bytes
    ep = Endpoint(Config(max_reassembly_bytes=5 * piece), 80, listening=True,
                  rng=random.Random(1))
    a, b = ("10.0.0.1", 1001), ("10.0.0.2", 1002)
    ack_a, conn_a = _established(ep, a)
    ack_b, conn_b = _established(ep, b)
    for i in range(1, 5):          # a holds 4 x 1000 out-of-order bytes (offset 0 missing)
        _data(ep, a, ack_a, i * 1000, 1000)
    assert ep.reassembly.used == 4 * piece
    _data(ep, b, ack_b, 1000, 1000)   # b's first hole-piece fits: 5 pieces in all
    _data(ep, b, ack_b, 2000, 1000)   # this one does not
    assert ep.reassembly.used == 5 * piece
    # the one piece that did not fit, and nothing else
    assert conn_b.stats().dropped_segments == 1  # type: ignore[attr-defined]
    _data(ep, a, ack_a, 0, 1000)      # a's hole fills: its pieces drain, the budget frees
    assert conn_a.readable == 5000  # type: ignore[attr-defined]
    assert ep.reassembly.used == piece
    conn_b.abort()  # type: ignore[attr-defined]
    ep.datagrams_to_send(0.03)
    assert ep.reassembly.used == 0


def test_connection_limit_refuses_connect_and_answers_syns_with_cookies() -> None:
    ep = Endpoint(Config(max_connections=2), 80, listening=True, rng=random.Random(2))
    for peer in (("10.0.0.1", 1), ("10.0.0.2", 2)):
        ack, _ = _established(ep, peer)
        _data(ep, peer, ack, 0, 10)  # busy connections: not evicted for a newcomer
    peer = ("10.0.0.3", 3)
    ep.receive_datagram(wire.build(wire.Segment(3, 80, 1, 0, wire.SYN, 1000)), peer, 1.0)
    out = ep.datagrams_to_send(1.0)
    assert peer not in ep.connections and len(ep.connections) == 2
    assert [wire.parse(d).flags for d, a in out if a == peer] == [wire.SYN | wire.ACK]
    assert ep.counters["SYN cookies sent"] == 1
    with pytest.raises(OSError, match="max_connections"):
        ep.connect(("10.0.0.9", 9), 1.0)


def test_a_peer_that_never_acknowledges_is_given_up_after_max_retransmissions() -> None:
    """Linux's tcp_retries2: without it, a vanished peer's connection retried forever."""
    cfg = Config(max_retransmissions=3, rto_min=0.1, rto_max=1.0)
    ep = Endpoint(cfg, 80, listening=True, rng=random.Random(3))
    peer = ("10.0.0.1", 1001)
    _ack, conn = _established(ep, peer)
    conn.send(b"x" * 500)  # type: ignore[attr-defined]
    sent_times = []
    segments = []
    now = 0.02
    for _ in range(20):
        for d, _ in ep.datagrams_to_send(now):
            segments.append(wire.parse(d))
            if segments[-1].payload:
                sent_times.append(now)
        deadline = ep.get_timer()
        if deadline is None or conn.state is State.CLOSED:  # type: ignore[attr-defined]
            break
        now = deadline
        ep.handle_timer(now)
    segments += [wire.parse(d) for d, _ in ep.datagrams_to_send(now)]
    assert conn.state is State.CLOSED  # type: ignore[attr-defined]
    assert isinstance(conn.error, TimeoutError)  # type: ignore[attr-defined]
    assert len(sent_times) == 1 + 3          # the first send and 3 retransmissions
    assert segments[-1].flags & wire.RST   # and the peer is told, if it is still there
    gaps = [b - a for a, b in itertools.pairwise(sent_times)]
    assert gaps == sorted(gaps)              # backed off each time
