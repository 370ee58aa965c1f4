"""Selective acknowledgments (RFC 2018) and SACK-based loss recovery (RFC 6675)."""

from __future__ import annotations

import hashlib
import random

import pytest

from tests import peek
from tests.netsim import Address, LinkProfile, Network
from utcp import sack, wire
from utcp.buffers import ReceiveBuffer
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
MASK = (1 << 32) - 1
CFG = Config(msl=1.0, rto_min=0.2, rto_initial=0.5, mss=1000, pmtu_probing=False)
TS_OPTION = 12  # the timestamps option with its two NOPs, on every segment (RFC 7323)


def _full(conn: Connection) -> int:
    """A full segment's payload: the MSS less the timestamps every segment carries."""
    return conn.stats().mss - TS_OPTION


# --------------------------------------------------------------------------- scoreboard

def test_blocks_merge_and_trim() -> None:
    sb = sack.Scoreboard()
    assert sb.add(200, 300) and sb.add(400, 500)
    assert sb.add(250, 420)                      # bridges both
    assert (sb.starts, sb.ends) == ([200], [500])
    assert not sb.add(210, 220)                  # nothing new
    sb.add(700, 800)
    sb.trim(450)
    assert (sb.starts, sb.ends) == ([450, 700], [500, 800])
    sb.trim(800)
    assert not sb and (sb.starts, sb.ends) == ([], [])


def test_block_of_names_the_merged_range() -> None:
    sb = sack.Scoreboard()
    sb.add(200, 300)
    sb.add(300, 400)                             # adjacent: one range
    assert sb.block_of(250) == (200, 400) and sb.block_of(399) == (200, 400)
    assert sb.block_of(400) is None and sb.block_of(199) is None


def test_receiver_blocks_put_the_latest_first() -> None:
    buf = ReceiveBuffer()
    for seq, data in ((30, b"z" * 3), (10, b"x" * 5), (50, b"w"), (15, b"y" * 5)):
        buf.insert_ooo(buf.find_ooo(seq, data)[0], seq, data, 0)
    held = buf.held
    assert sack.receiver_blocks(held, latest=31, limit=4) == [(30, 33), (50, 51), (10, 20)]
    assert sack.receiver_blocks(held, latest=12, limit=2) == [(10, 20), (50, 51)]
    assert sack.receiver_blocks(held, latest=40, limit=2) == [(50, 51), (30, 33)]
    buf.drain(10)  # 10..20 in order now: what SACK reports goes with it
    assert sack.receiver_blocks(held, latest=50, limit=4) == [(50, 51), (30, 33)]
    option = sack.encode_blocks([(1, 2), (3, 4)])
    assert option[:4] == bytes((1, 1, 5, 18)) and len(option) == 20


# --------------------------------------------------------------------------- on the wire

def _pair(config: Config, seed: int = 1, profile: LinkProfile | None = None,
          server_config: Config | None = None, trace: bool = False,
          ) -> tuple[Network, Endpoint, Endpoint, Connection]:
    net = Network(seed, profile or LinkProfile(delay=0.01), trace=trace)
    server = Endpoint(server_config or config, SERVER[1], listening=True,
                      rng=random.Random(1))
    client = Endpoint(config, CLIENT[1], rng=random.Random(2))
    net.add(SERVER, server)
    net.add(CLIENT, client)
    conn = client.connect(SERVER, net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED)
    net.run(until=net.now + 0.011)  # the handshake's last ACK reaches the server
    return net, server, client, conn


@pytest.mark.parametrize("server_sack", [True, False])
def test_sack_is_used_only_when_both_offer_it(server_sack: bool) -> None:
    """Both ends offer SACK-permitted in their SYNs and then report holes with blocks;
    when the server does not offer it, neither end sends a block (RFC 2018 §2)."""
    net, server, _, conn = _pair(CFG, server_config=CFG.replace(sack=server_sack),
                                 trace=True)
    peer = server.accept()
    assert peer is not None and net.trace is not None
    syns = {rec.src: wire.parse(rec.data) for rec in net.trace
            if rec.fate == "sent" and wire.parse(rec.data).flags & wire.SYN}
    assert syns[CLIENT].options.sack_permitted
    assert syns[SERVER].options.sack_permitted is server_sack
    data_sent: dict[Address, int] = {CLIENT: 0, SERVER: 0}
    acks: dict[Address, list[wire.Segment]] = {CLIENT: [], SERVER: []}

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        if seg.payload:
            data_sent[src] += 1
            return data_sent[src] != 1          # each side loses its first segment
        acks[src].append(seg)
        return True

    net.filter = tap
    conn.send(bytes(3 * _full(conn)))
    peer.send(bytes(3 * _full(peer)))
    net.run(until=net.now + 0.015)              # the data and the first answers
    for side in (CLIENT, SERVER):               # each answered the other's hole
        assert len(acks[side]) >= 2, acks[side]
        assert any(seg.options.sack for seg in acks[side]) is server_sack, acks[side]


def test_a_duplicate_ack_carries_a_block_for_the_out_of_order_segment() -> None:
    net, _server, _, conn = _pair(CFG)
    seen: list[wire.Segment] = []
    data_sent: list[wire.Segment] = []

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        if src == CLIENT and seg.payload:
            data_sent.append(seg)
            return len(data_sent) != 2          # lose the second data segment
        if src == SERVER:
            seen.append(seg)
        return True

    net.filter = tap
    room = _full(conn)
    conn.send(bytes(3 * room))
    net.run(until=net.now + 0.015)              # the data and the first answers
    sacks = [seg.options.sack for seg in seen if seg.options.sack]
    assert sacks, seen
    assert [len(seg.payload) for seg in data_sent] == [room] * 3
    third = data_sent[2].seq
    assert sacks[0][0] == (third, (third + room) & MASK)  # exactly the third, held aside


def _lossy_run(config: Config, drops: set[int]) -> tuple[Connection, float]:
    net, server, _, conn = _pair(config, seed=4)
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload:
            sent[0] += 1
            return sent[0] not in drops
        return True

    net.filter = tap
    payload = random.Random(9).randbytes(200_000)
    conn.send(payload)
    start = net.now
    got = bytearray()
    peer: list[Connection] = []

    def done() -> bool:
        if not peer and (accepted := server.accept()) is not None:
            peer.append(accepted)
        if peer:
            got.extend(peer[0].read())
        return len(got) == len(payload)

    net.run(until=net.now + 60, stop=done)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    return conn, net.now - start


def test_several_losses_in_one_window_are_repaired_without_a_timeout() -> None:
    drops = {30, 33, 36, 39, 42}                # five holes in one flight
    with_sack, t_sack = _lossy_run(CFG, drops)
    _without, t_plain = _lossy_run(CFG.replace(sack=False), drops)
    assert with_sack.stats().timeouts == 0
    assert with_sack.stats().fast_retransmits == 1            # one recovery episode
    assert with_sack.stats().segments_retransmitted == len(drops)  # nothing needless
    assert t_sack < t_plain                                    # NewReno: one hole per RTT


def test_a_lost_tail_is_found_by_a_probe_not_by_the_timeout() -> None:
    """RFC 8985 §7: the last two segments of a flight vanish and nothing more is sent, so
    no duplicate ACK can come. A probe after about two round trips (the last segment
    again) is SACKed, which shows the hole before it: repaired well before the RTO."""
    net, server, _, conn = _pair(CFG)
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload:
            sent[0] += 1
            return sent[0] not in (5, 6)        # the tail of a 6-segment flight
        return True

    net.filter = tap
    payload = bytes(6 * _full(conn))             # six full segments
    start = net.now
    conn.send(payload)
    peer = server.accept()
    assert peer is not None
    got = bytearray()

    def done() -> bool:
        got.extend(peer.read())
        return len(got) == len(payload)

    net.run(until=net.now + 10, stop=done)
    assert bytes(got) == payload
    stats = conn.stats()
    assert stats.timeouts == 0 and peek.counter(conn, "tail_loss_probes") == 1
    assert stats.segments_retransmitted == 2     # the probe (segment 6) and segment 5
    assert net.now - start < CFG.rto_min         # no 200 ms timeout was waited for


def test_a_flight_from_idle_gets_a_probe_after_two_round_trips() -> None:
    """Ten segments leave an idle connection and every one is lost: the probe timeout is
    two round trips, armed for the whole flight. (Armed at its first segment it took
    that for a lone one, waited for a worst-case delayed ACK on top, and came after the
    RTO, so the loss cost a timeout.)"""
    net, server, _, conn = _pair(CFG)
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload:
            sent[0] += 1
            return sent[0] > 10                  # the flight is lost, the probe is not
        return True

    net.filter = tap
    srtt = conn.stats().srtt
    assert srtt is not None
    sends: list[tuple[float, int, int]] = []    # (time, seq, length) of the client's data
    lossy = net.filter

    def record(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        if src == CLIENT and seg.payload:
            sends.append((now, seg.seq, len(seg.payload)))
        return lossy(data, src, dst, now)

    net.filter = record
    start = net.now
    size = 10 * _full(conn)
    conn.send(bytes(size))
    net.run(until=start + 0.01)
    assert len(sends) == 10 and all(n == _full(conn) for _, _, n in sends)
    probe_at = conn.get_timer()                 # the probe's, before the RTO's
    assert probe_at == pytest.approx(start + 2 * srtt)
    net.run(until=probe_at)
    assert len(sends) == 11                     # the probe: the last segment again
    assert sends[10][0] == pytest.approx(start + 2 * srtt)
    assert sends[10][1:] == sends[9][1:]
    peer = server.accept()
    assert peer is not None
    got = bytearray()

    def done() -> bool:
        got.extend(peer.read())
        return len(got) == size

    net.run(until=net.now + 10, stop=done)
    assert peek.counter(conn, "tail_loss_probes") == 1 and conn.stats().timeouts == 0
