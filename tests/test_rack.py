"""RACK (RFC 8985 §6): loss detection by time, unit by unit and then on the wire."""

from __future__ import annotations

import random
from collections import deque

import pytest

from tests import peek
from tests import test_scripted as scripted
from tests.netsim import Address, LinkProfile, Network
from tests.script import ANY
from utcp import sack, wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.rack import Segment, SentLog
from utcp.state import State

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
CFG = Config(msl=1.0, rto_min=0.2, rto_initial=0.5, mss=1000, pmtu_probing=False,
             timestamps=False)  # 1000-byte payloads: the tests count segments
SCRIPT_CFG = scripted.CFG
SACK_PEER = wire.Options(mss=1000, wscale=0, sack_permitted=True)
MASK = (1 << 32) - 1


# --------------------------------------------------------------------------- SentLog

def _log(*segments: tuple[int, int, float]) -> SentLog:
    log = SentLog()
    log.on_rtt_sample(0.1, 0.0)
    for start, end, ts in segments:
        log.sent(start, end, ts, retransmission=False)
    return log


def _sack(log: SentLog, sb: sack.Scoreboard, left: int, right: int, now: float) -> bool:
    assert sb.add(left, right)
    return log.sacked(left, right, sb, now)


def test_lost_once_a_later_segment_is_delivered_and_the_window_has_passed() -> None:
    log = _log((100, 200, 0.0), (200, 300, 0.0), (300, 400, 0.01))
    sb = sack.Scoreboard()
    assert _sack(log, sb, 300, 400, 0.11)        # the last one arrives: RACK.rtt 0.1
    assert log.reo_wnd(False, 0.1) == 0.025      # min_rtt / 4: one SACK may be reordering
    marked, timer = log.detect_loss(0.11, 0.025)
    # the first two were sent 0.11 ago, less than RACK.rtt + reo_wnd = 0.125: wait
    assert marked == 0 and timer == 0.025
    assert log.next_lost() is None
    marked, timer = log.detect_loss(0.135, 0.025)  # the reordering timer fires
    assert marked == 2 and timer == 0.0
    first = log.next_lost()
    assert first is not None and (first.start, first.end) == (100, 200)


def test_nothing_sent_after_the_newest_delivery_is_lost() -> None:
    log = _log((100, 200, 0.0), (200, 300, 0.05))
    log.acked(200, 0.1)                          # the first arrives, in order
    assert log.detect_loss(10.0, 0.0) == (0, 0.0)  # however late: nothing newer arrived


def test_the_reordering_window_follows_rfc_8985() -> None:
    log = _log(*((s, s + 100, 0.0) for s in range(100, 700, 100)))
    assert log.reo_wnd(False, 0.2) == 0.025
    assert log.reo_wnd(True, 0.2) == 0.0         # in recovery, with no reordering seen
    assert log.reo_wnd(False, 0.01) == 0.01      # never more than SRTT
    sb = sack.Scoreboard()
    for start in (200, 300, 400):
        _sack(log, sb, start, start + 100, 0.1)
    assert log.segs_sacked == 3 and log.reo_wnd(False, 0.2) == 0.0  # DupThresh reached
    _sack(log, sb, 100, 200, 0.1)                # sent first, delivered last: reordering
    assert log.reordering_seen
    assert log.reo_wnd(True, 0.2) == 0.025
    log.on_dsack(snd_una=100, snd_nxt=700)       # a needless retransmission: wider
    assert log.reo_wnd(True, 0.2) == 0.05
    log.on_dsack(snd_una=100, snd_nxt=700)       # at most once a round trip
    assert log.reo_wnd(True, 0.2) == 0.05
    log.on_dsack(snd_una=700, snd_nxt=900)
    assert log.reo_wnd(True, 0.2) == pytest.approx(0.075)
    for _ in range(16):                          # back to min_rtt / 4 after 16 recoveries
        log.recovery_ended()
    assert log.reo_wnd(True, 0.2) == 0.025


def test_pipe_counts_sacked_lost_and_retransmitted_bytes() -> None:
    log = _log(*((s, s + 100, 0.0) for s in range(100, 600, 100)))
    sb = sack.Scoreboard()
    assert log.pipe(100, 600) == 500
    _sack(log, sb, 300, 500, 0.1)
    assert log.pipe(100, 600) == 300             # two SACKed
    log.detect_loss(0.1, 0.0)                    # 100-300 sent before 400-500 arrived
    assert log.lost_out == 200 and log.pipe(100, 600) == 100
    log.sent(100, 200, 0.1, retransmission=True)
    assert log.pipe(100, 600) == 200             # one lost segment back in flight
    nxt = log.next_lost()
    assert nxt is not None and nxt.start == 200  # RFC 6675 NextSeg(): the next hole
    log.acked(200, 0.2)
    assert log.pipe(200, 600) == 100 and log.lost_out == 100 and log.retrans_out == 0


def test_a_lost_retransmission_is_found_by_what_was_sent_after_it() -> None:
    log = _log((100, 200, 0.0), (200, 300, 0.0))
    sb = sack.Scoreboard()
    _sack(log, sb, 200, 300, 0.1)
    log.detect_loss(0.1, 0.0)
    log.sent(100, 200, 0.1, retransmission=True)   # the hole, resent...
    log.sent(300, 400, 0.1, retransmission=False)  # ...then new data
    assert log.next_lost() is None
    _sack(log, sb, 300, 400, 0.2)                # the new data arrives, the resend not
    assert log.detect_loss(0.2, 0.0)[0] == 1
    assert log.lost_retransmissions == 1
    again = log.next_lost()
    assert again is not None and again.start == 100


def test_a_retransmission_sent_after_new_data_at_the_same_instant_is_not_older() -> None:
    """On a clock that stands still within a call, transmission order decides: a resend
    made after new data in the same instant must not count as sent before it (RFC 8985
    breaks ties by sequence number, which would call the resend lost at once)."""
    log = _log((100, 200, 0.0), (200, 300, 0.0))
    sb = sack.Scoreboard()
    _sack(log, sb, 200, 300, 0.1)
    log.detect_loss(0.1, 0.0)
    log.sent(300, 400, 0.1, retransmission=False)  # new data first...
    log.sent(100, 200, 0.1, retransmission=True)   # ...then the resend, same instant
    _sack(log, sb, 300, 400, 0.2)
    assert log.detect_loss(0.2, 0.0) == (0, 0.0) and log.next_lost() is None


def test_an_ack_sooner_than_min_rtt_after_a_resend_dates_nothing() -> None:
    log = _log((100, 200, 0.0), (200, 300, 0.05))
    log.sent(100, 200, 0.09, retransmission=True)  # resent just before the original's ACK
    log.acked(200, 0.1)                          # 0.01 after the resend < min_rtt 0.1
    assert log.xmit_ts == float("-inf")          # RACK learnt nothing from it
    log.acked(300, 0.15)
    assert log.xmit_ts == 0.05 and log.rtt == pytest.approx(0.1)


def test_cost_of_an_ack_does_not_grow_with_the_flight() -> None:
    """RFC 8985 §6.2's time-ordered list: with 100,000 segments in flight, an ACK of the
    first looks at O(1) of them (the loss scan stops at the first one not overdue), and
    a SACK of one near the end finds it by bisection."""
    n = 100_000
    log = _log(*((1000 + 100 * i, 1100 + 100 * i, i * 1e-6) for i in range(n)))
    segs, queue = _CountingList(log.segs), _CountingDeque(log._by_time)
    log.segs, log._by_time = segs, queue
    log.acked(1100, 0.1)
    log.detect_loss(0.1, 0.0)
    assert segs.count + queue.count <= 6, (segs.count, queue.count)
    segs.count = queue.count = 0
    sb = sack.Scoreboard()
    _sack(log, sb, 1000 + 100 * (n - 2), 1000 + 100 * (n - 1), 0.2)
    assert segs.count <= 40, segs.count          # ~log2(n) steps of the bisection


class _CountingList(list):  # type: ignore[type-arg]
    """Stands in for SentLog.segs and counts the segments read from it."""

    def __init__(self, items: list[Segment]) -> None:
        super().__init__(items)
        self.count = 0

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self.count += 1
        return super().__getitem__(i)


class _CountingDeque(deque):  # type: ignore[type-arg]
    def __init__(self, items: deque[tuple[int, Segment]]) -> None:
        super().__init__(items)
        self.count = 0

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self.count += 1
        return super().__getitem__(i)


# --------------------------------------------------------------------------- on the wire

def _pair(config: Config = CFG, profile: LinkProfile | None = None,
          ) -> tuple[Network, Connection, Connection]:
    net = Network(5, profile or LinkProfile(delay=0.01))
    server = Endpoint(config, SERVER[1], listening=True, rng=random.Random(1))
    client = Endpoint(config, CLIENT[1], rng=random.Random(2))
    net.add(SERVER, server)
    net.add(CLIENT, client)
    conn = client.connect(SERVER, net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED
            and bool(server.accept_queue))
    peer = server.accept()
    assert peer is not None
    net.run(until=net.now + 0.011)
    return net, conn, peer


def _deliver(net: Network, peer: Connection, payload: bytes, limit: float = 10.0) -> None:
    got = bytearray()

    def done() -> bool:
        got.extend(peer.read())
        return len(got) == len(payload)

    net.run(until=net.now + limit, stop=done)
    assert bytes(got) == payload


def _drop_data(net: Network, numbers: set[int]) -> None:
    """Lose the client's data segments with these ordinal numbers (1 = the first)."""
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload:
            sent[0] += 1
            return sent[0] not in numbers
        return True

    net.filter = tap


def test_a_loss_near_the_tail_is_found_with_one_duplicate_ack() -> None:
    """Segments 8 and 9 of 10 vanish: one SACK (for 10) comes back, no third duplicate
    ACK ever will, and early retransmit needs two. RACK marks them lost a quarter of
    min_rtt after that SACK, before a tail loss probe (two round trips) would go."""
    net, conn, peer = _pair()
    _drop_data(net, {8, 9})
    payload = bytes(10_000)
    start = net.now
    conn.send(payload)
    _deliver(net, peer, payload)
    stats = conn.stats()
    assert stats.timeouts == 0 and peek.counter(conn, "tail_loss_probes") == 0
    assert stats.fast_retransmits == 1 and stats.segments_retransmitted == 2
    assert net.now - start < 2.5 * 0.02          # about two round trips, no probe timer


def test_reordering_within_the_window_is_not_loss() -> None:
    """A segment overtaken by one other shows reordering; after that, one overtaken by
    four within RACK's window (min_rtt / 4) is waited for. Counting duplicate ACKs would
    have resent it (four SACKed above it)."""
    profile = LinkProfile(delay=0.01, bandwidth=1_000_000)  # 1 ms per 1000-byte segment
    # unpaced, so that segments leave back to back and the delays below are exact
    net, conn, peer = _pair(CFG.replace(pacing=False), profile=profile)
    late = {5: 0.0015, 30: 0.0042}               # data segment -> extra delay
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload:
            sent[0] += 1
            extra = late.get(sent[0])
            net.set_link(CLIENT, SERVER, profile if extra is None else LinkProfile(
                delay=0.01, bandwidth=1_000_000, reorder=1.0, reorder_delay=extra))
        return True

    net.filter = tap
    payload = bytes(60_000)
    conn.send(payload)
    _deliver(net, peer, payload)
    assert net.stats.reordered == 2
    assert peek.rack(conn).reordering_seen
    assert conn.stats().segments_retransmitted == 0 and conn.stats().fast_retransmits == 0


def test_a_lost_retransmission_is_resent_without_a_timeout() -> None:
    """Segment 20 is lost, and so is its retransmission: the segments sent after that
    retransmission arrive first, which tells RACK it was lost too."""
    net, conn, peer = _pair()
    target: list[int] = []
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        if src == CLIENT and seg.payload:
            sent[0] += 1
            if sent[0] == 20 or (target and seg.seq == target[0] and len(target) < 2):
                target.append(seg.seq)
                return False
        return True

    net.filter = tap
    payload = bytes(150_000)
    conn.send(payload)
    _deliver(net, peer, payload)
    stats = conn.stats()
    assert len(target) == 2                      # the original and the first resend
    assert stats.timeouts == 0 and peek.rack(conn).lost_retransmissions == 1
    assert stats.segments_retransmitted == 2


def test_a_timeout_resends_only_what_was_not_sacked() -> None:
    """Three segments are lost again and again until the timer fires: the timeout resends
    those three (RACK marks them lost, RFC 8985 §6.3), not the data around them that
    the receiver holds (RFC 6675 §5.1). Go-back-N resent more with every slow-start
    round, as the receiver's ACKs jumped over what it held."""
    net, conn, peer = _pair()
    targets: set[int] = set()
    dropped = [0]
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        if src == CLIENT and seg.payload:
            sent[0] += 1
            if sent[0] in (30, 40, 50):
                targets.add(seg.seq)
            if seg.seq in targets and conn.stats().timeouts == 0:
                dropped[0] += 1
                return False
        return True

    net.filter = tap
    payload = bytes(200_000)
    conn.send(payload)
    _deliver(net, peer, payload)
    stats = conn.stats()
    assert stats.timeouts == 1 and len(targets) == 3 and dropped[0] > 3
    # each dropped copy was an original or a resend that had to be made again; after
    # the timeout one copy of each of the three went through, and nothing else
    assert stats.segments_retransmitted == dropped[0]


def test_the_timeout_waits_for_the_reordering_timer() -> None:
    """RACK's reordering timer is due after the RTO would be: the RTO waits, so that
    RACK decides first (in Linux the two share one timer slot)."""
    rtt = 0.1
    # a low floor, so that the RTO (SRTT + 4 RTTVAR, RFC 6298) falls below two round
    # trips once RTTVAR has settled: no tail loss probe stands between the two timers
    cfg = SCRIPT_CFG.replace(rto_min=0.01, pacing=False)
    s, conn = scripted.client(cfg, rtt=rtt, peer_opts=SACK_PEER)
    una = scripted.OUR_ISN + 1
    for i in range(4):                           # steady round trips settle RTTVAR
        conn.send(scripted.data(1000, 1000 * i))
        s.expect("P.", una, length=1000)
        s.advance(rtt)
        una += 1000
        s.inject(".", scripted.PEER_ISN + 1, una)
    stats = conn.stats()
    assert stats.srtt == pytest.approx(rtt) and stats.rto < 2 * rtt
    t0 = s.now
    rto_at = t0 + stats.rto
    conn.send(scripted.data(2000))
    s.expect(".", una, length=1000, at=t0)       # A
    s.expect("P.", una + 1000, length=1000, at=t0)  # B
    assert conn.get_timer() == pytest.approx(rto_at)  # the RTO alone: no probe before it
    s.advance_to(t0 + 0.16)                      # B is SACKed, A not: RACK.rtt 0.16
    s.inject(".", scripted.PEER_ISN + 1, una,
             options=wire.Options(sack=(((una + 1000) & MASK, (una + 2000) & MASK),)))
    s.expect_nothing()
    # A is late at 0.16 + reo_wnd (min_rtt / 4), which is after the RTO was due
    reo_at = conn.get_timer()
    assert reo_at is not None
    assert reo_at == pytest.approx(t0 + 0.16 + rtt / 4) and reo_at > rto_at
    s.advance_to(rto_at)
    s.expect_nothing()                           # the RTO did not fire
    s.advance_to(reo_at)
    s.expect(ANY, una, length=1000, at=reo_at)   # RACK resends A, as a fast retransmit
    s.expect_nothing()
    stats = conn.stats()
    assert stats.timeouts == 0 and stats.fast_retransmits == 1
    assert stats.segments_retransmitted == 1


def test_what_an_undo_unmarks_can_be_found_lost_again() -> None:
    log = _log((100, 200, 0.0), (200, 300, 0.0), (300, 400, 0.01))
    sb = sack.Scoreboard()
    _sack(log, sb, 200, 300, 0.1)
    assert log.detect_loss(0.1, 0.0)[0] == 1     # 100-200, sent before 200-300
    log.unmark_lost()                            # the recovery proved needless
    assert log.next_lost() is None and log.lost_out == 0
    _sack(log, sb, 300, 400, 0.2)                # later still, 100-200 is missing
    assert log.detect_loss(0.2, 0.0)[0] == 1
    again = log.next_lost()
    assert again is not None and again.start == 100
