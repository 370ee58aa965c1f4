"""Blind attacks on the segment input path (issue 12, items 1 and 3), plaintext mode.

An off-path attacker knows both addresses and ports, nothing else: not the sequence
numbers, not the timestamps. Each test mounts the attack on the deterministic simulator
(`tests/netsim.py`) or with the hand-played peer of `tests/script.py`, and checks what
the RFCs say must happen:

- PAWS poisoning (RFC 7323 §5.3): a forged segment with a timestamp option must not
  move TS.Recent unless it is acceptable (R3 comes after the window check, R2; as Linux,
  after the ACK check too). Before the fix, 8 blind datagrams (4 TSvals a quarter of the
  space apart, each with 2 sequence numbers half the space apart) always found one that
  was taken, and every genuine segment after it failed PAWS until TimeoutError.
- Blind FIN/data (RFC 5961 §5): FIN and data must carry an acceptable ACK, and a FIN
  that gets in anyway must not wedge the close: real data past it overrides it, a later
  FIN replaces it, and data that crosses a FIN already taken resets the connection
  rather than leaving both ends waiting.
"""

from __future__ import annotations

import random

import pytest

from tests.netsim import Address, LinkProfile
from tests.script import PEER, Script
from tests.test_attacks import CLIENT, SERVER, Transfer, make_transfer
from utcp import seq as sq
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

S = State
KiB = 1 << 10
TS_CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2, timestamps=True)


def _target(t: Transfer, direction: str) -> tuple[Connection, Endpoint, Address]:
    """The connection attacked, its endpoint, and the address its peer sends from."""
    assert t.client is not None and t.server is not None
    if direction == "to_server":
        return t.server, t.server_ep, CLIENT
    return t.client, t.client_ep, SERVER


def paws_poison(rng: random.Random, conn: Connection) -> tuple[list[bytes], tuple[int, int]]:
    """The blind attack, 4 datagrams: 2 TSvals x 2 sequence numbers.

    Whatever TS.Recent is, one of 2 TSvals 2^31 apart lies ahead of it (and the other,
    sent second, then lies behind the first, so it cannot undo it); whatever rcv_nxt is,
    one of 2 sequence numbers 2^31 apart lies in the "old" half below it. The ACK value
    and TSecr are random guesses: the attacker cannot know them either.
    """
    first = rng.getrandbits(32)
    tsvals = (first, (first + (1 << 31)) & sq.MASK)
    base = rng.getrandbits(32)
    out = []
    for tsval in tsvals:
        for seq in (base, (base + (1 << 31)) & sq.MASK):
            options = wire.Options(timestamps=(tsval, rng.getrandbits(32)))
            out.append(wire.build(wire.Segment(
                conn.remote_port, conn.local_port, seq, rng.getrandbits(32), wire.ACK,
                rng.randrange(1 << 16), b"", options)))
    return out, tsvals


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
def test_blind_paws_poisoning_does_not_stall_a_transfer(direction: str) -> None:
    t = make_transfer(7, LinkProfile(delay=0.005), 512 * KiB, 512 * KiB,
                      server_cfg=TS_CFG, client_cfg=TS_CFG)
    rng = random.Random(99)
    forged: list[int] = []
    t.connect()

    def stop() -> bool:
        client, server = t.client, t.server
        assert client is not None
        if not forged and server is not None and min(
                server.bytes_received, client.bytes_received) > 64 * KiB:
            conn, ep, src = _target(t, direction)
            assert conn._ts_ok
            datagrams, tsvals = paws_poison(rng, conn)
            forged.extend(tsvals)
            # the attack is a real one: one TSval is far enough ahead of TS.Recent that
            # the peer's clock would not reach it within the test (taken, it would stall)
            assert any(sq.diff(v, conn._ts_recent) > 10_000_000 for v in tsvals)
            for datagram in datagrams:
                ep.receive_datagram(datagram, src, t.net.now)
            assert conn._ts_recent not in tsvals
        return t.poll()

    t.net.run(until=120.0, stop=stop)
    assert forged, "the transfer ended before the attack"
    t.check()  # byte-exact both ways, both CLOSED without error


def _established_ts() -> tuple[Script, Connection]:
    s = Script(TS_CFG, listening=True, isns=(1000,))
    s.inject("S", 5000, options=wire.Options(mss=1400, wscale=7, timestamps=(100, 0)))
    synack = s.expect("S.", seq=1000, ack=5001)
    assert synack.options.timestamps is not None
    s.inject(".", 5001, 1001, window=1000,
             options=wire.Options(timestamps=(101, synack.options.timestamps[0])))
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED and conn._ts_ok and conn._ts_recent == 101
    return s, conn


def test_ts_recent_moves_only_for_an_acceptable_segment() -> None:
    """RFC 7323 §5.3: R1 (PAWS), R2 (window), then R3 (TS.Recent); RFC 5961 §5 first."""
    s, conn = _established_ts()
    ahead = wire.Options(timestamps=(101 + (1 << 30), 0))
    # old sequence number (R2 fails): dropped with an ACK, TS.Recent unchanged
    s.inject(".", 5001 - 1000, 1001, window=1000, options=ahead)
    ack = s.expect(".", seq=1001, ack=5001)
    assert ack.options.timestamps is not None and ack.options.timestamps[1] == 101
    assert conn._ts_recent == 101
    # in the window, but an ACK of data never sent (RFC 5961 §5): challenge ACK, and
    # still TS.Recent unchanged
    s.inject("P.", 5001, 1001 + 100_000, window=1000, payload=b"evil", options=ahead)
    ack = s.expect(".", seq=1001, ack=5001)
    assert ack.options.timestamps is not None and ack.options.timestamps[1] == 101
    assert conn._ts_recent == 101 and conn.readable == 0
    # the genuine next segment passes PAWS and is taken
    s.inject("P.", 5001, 1001, window=1000, payload=b"good",
             options=wire.Options(timestamps=(102, 0)))
    assert conn.read() == b"good" and conn._ts_recent == 102 and conn.paws_drops == 0
