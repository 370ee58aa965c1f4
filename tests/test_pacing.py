"""Pacing (utcp.pacing): data leaves at gain x cwnd / srtt, with a small burst allowance.

Everything runs on the fake clock: the simulator's trace gives each segment's departure
time, the scripted endpoint its exact send times. Each scenario is also run with
`Config(pacing=False)` to show what pacing changes: without it the same segments leave
in one burst.
"""

from __future__ import annotations

import math
import random

import pytest

from tests.netsim import Address, LinkProfile, Network
from tests.script import ANY, Script
from utcp import pacing, wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.pacing import Pacer

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
MSS = 1400
CFG = Config(msl=1.0, rto_min=0.2, rto_initial=1.0, pmtu_probing=False, mss=MSS,
             timestamps=False)  # whole MSS payloads: the arithmetic below counts them
HEADER = wire.HEADER_LEN


class Pair:
    """A client and a server endpoint on one simulated link, the client's connection
    established (its SRTT is the handshake's round trip, 2 x delay), and the server's
    window known in full (a SYN's window is never scaled: one byte from the server
    brings the real one)."""

    def __init__(self, config: Config, delay: float) -> None:
        self.net = Network(1, LinkProfile(delay=delay), trace=True)
        self.server = Endpoint(config, SERVER[1], listening=True, rng=random.Random(1))
        self.client = Endpoint(config, CLIENT[1], rng=random.Random(2))
        self.net.add(SERVER, self.server)
        self.net.add(CLIENT, self.client)
        self.conn = self.client.connect(SERVER, self.net.now)
        self.net.run(until=5.0, stop=lambda: bool(self.server.accept_queue))
        self.peer: Connection | None = self.server.accept()
        assert self.peer is not None
        self.peer.send(b"w")
        self.net.run(until=5.0, stop=lambda: self.conn.readable > 0)
        assert self.conn.read() == b"w" and self.conn.snd_wnd > 1 << 20

    def _reader(self) -> bool:
        if self.peer is None:
            self.peer = self.server.accept()
        if self.peer is not None:
            self.peer.read()
        return False

    def run_until(self, t: float) -> None:
        self.net.run(until=t, stop=self._reader)

    def run_until_acked(self) -> None:
        conn = self.conn
        self.net.run(until=self.net.now + 60.0,
                     stop=lambda: self._reader() or (conn.snd_una == conn.snd_max
                                                     and not conn.unsent))
        assert conn.snd_una == conn.snd_max and not conn.unsent

    def departures(self, since: float) -> list[float]:
        """When the client's data segments left, from `since` on."""
        assert self.net.trace is not None
        return [r.time for r in self.net.trace
                if r.src == CLIENT and r.fate == "sent" and len(r.data) > HEADER
                and r.time >= since]


def test_a_large_initial_window_is_spread_over_the_round_trip() -> None:
    """100 segments of initial window on a 100 ms path: the first ten leave at once (the
    initial burst of RFC 6928), the other 90 at 2 x cwnd / srtt, one per 0.5 ms."""
    cfg = CFG.replace(initial_cwnd_segments=100)
    pair = Pair(cfg, delay=0.05)
    conn = pair.conn
    assert conn.stats().srtt == pytest.approx(0.1)
    t0 = pair.net.now
    conn.send(bytes(100 * MSS))
    pair.run_until(t0 + 0.099)  # before the first ACK can come back
    times = pair.departures(t0)
    assert len(times) == 100
    assert times[:10] == [t0] * 10
    spacing = MSS / (pacing.SLOW_START_GAIN * 100 * MSS / 0.1)  # 0.5 ms
    for k, t in enumerate(times[10:], start=1):
        assert t - t0 == pytest.approx(k * spacing, rel=1e-6, abs=1e-9)
    assert conn.stats().pacing_rate == pytest.approx(2 * 100 * MSS / 0.1)
    assert conn.sender.pacer is not None and conn.sender.pacer.holds == 90


def test_without_pacing_the_initial_window_leaves_in_one_burst() -> None:
    cfg = CFG.replace(initial_cwnd_segments=100, pacing=False)
    pair = Pair(cfg, delay=0.05)
    t0 = pair.net.now
    pair.conn.send(bytes(100 * MSS))
    pair.run_until(t0 + 0.099)
    assert pair.departures(t0) == [t0] * 100
    assert pair.conn.sender.pacer is None and pair.conn.stats().pacing_rate is None


def _after_idle(config: Config, delay: float) -> tuple[Pair, float, list[float]]:
    """Grow the window with a transfer, stay idle for 10 s, then write a lot: the
    departures of the following round trip."""
    pair = Pair(config, delay=delay)
    pair.conn.send(bytes(400_000))
    pair.run_until_acked()
    pair.run_until(pair.net.now + 10.0)
    t0 = pair.net.now
    pair.conn.send(bytes(4 << 20))
    pair.run_until(t0 + 2 * delay - 1e-6)
    return pair, t0, pair.departures(t0)


@pytest.mark.parametrize("congestion", ["newreno", "cubic"])
def test_after_an_idle_period_the_window_is_paced_not_burst(congestion: str) -> None:
    """The window stays large over an idle period; when the application writes again,
    only the burst allowance leaves at once (here 1 ms of the rate, about 20 segments,
    more than the two-segment floor), the rest one segment per MSS / rate."""
    pair, t0, times = _after_idle(CFG.replace(congestion=congestion), delay=0.005)
    conn = pair.conn
    stats = conn.stats()
    cwnd, srtt, ssthresh = stats.cwnd, stats.srtt, stats.ssthresh
    assert srtt is not None and cwnd > 100 * MSS
    gain = pacing.SLOW_START_GAIN if ssthresh is None or \
        cwnd < ssthresh // 2 else pacing.AVOIDANCE_GAIN
    rate = gain * cwnd / srtt
    burst = rate * pacing.HORIZON
    assert burst > pacing.MIN_BURST_SEGMENTS * MSS
    at_once = int((burst + 1) // MSS)
    assert 10 < at_once < 40
    assert times.count(t0) == at_once
    # the window is sent within the round trip, evenly
    assert len(times) == cwnd // MSS
    spacing = MSS / rate
    gaps = [b - a for a, b in zip(times[at_once - 1:], times[at_once:], strict=False)]
    assert all(g == pytest.approx(spacing, rel=1e-3) for g in gaps[1:])
    assert times[-1] - t0 < 2 * 0.005


def test_without_pacing_the_window_leaves_in_one_burst_after_idle() -> None:
    pair, t0, times = _after_idle(CFG.replace(pacing=False), delay=0.005)
    assert len(times) == pair.conn.stats().cwnd // MSS > 100
    assert set(times) == {t0}


def test_a_long_path_gets_the_two_segment_floor() -> None:
    """On a 200 ms path a millisecond of the rate is less than two segments: after
    idle, two segments leave together, then one at a time."""
    pair, t0, times = _after_idle(CFG, delay=0.1)
    conn = pair.conn
    assert conn.sender.pacer is not None
    assert conn.sender.pacer.rate * pacing.HORIZON < 2 * MSS
    assert times.count(t0) == 2
    assert len(set(times)) == len(times) - 1


def test_the_pacing_timer_is_the_connections_timer() -> None:
    """A held segment is released by the connection's own timer (get_timer /
    handle_timer), through the endpoint, not by the retransmission timer: one timer
    event per paced segment, no more."""
    cfg = CFG.replace(initial_cwnd_segments=30)
    pair = Pair(cfg, delay=0.05)
    conn, ep = pair.conn, pair.client
    t0 = pair.net.now
    conn.send(bytes(30 * MSS))
    pair.net.flush()
    assert conn.sender.pacer is not None
    deadline = conn.sender.pacer.deadline
    assert deadline is not None
    # the pacer's turn comes first, long before the RTO armed as the flight left
    assert ep.get_timer() == conn.get_timer() == deadline < t0 + conn.stats().rto
    assert deadline == pytest.approx(t0 + MSS / (2 * 30 * MSS / 0.1))
    fired = pair.net.stats.timers_fired
    pair.run_until(t0 + 0.099)
    assert len(pair.departures(t0)) == 30
    assert pair.net.stats.timers_fired - fired == 20  # the 20 paced segments
    assert pair.net.stats.stuck_timers == 0
    assert conn.sender.pacer.deadline is None and conn.stats().timeouts == 0


# ------------------------------------------------------------------ what is not paced

OUR_ISN = 1_000_000
PEER_ISN = 5_000_000
SCRIPT_CFG = CFG.replace(mss=1000, initial_cwnd_segments=40)
RTT = 0.1


def _established(cfg: Config = SCRIPT_CFG) -> tuple[Script, Connection]:
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.advance(RTT)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=wire.Options(mss=1000, sack_permitted=True))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.stats().srtt == pytest.approx(RTT)
    return s, conn


def _sent_at(s: Script, t: float) -> list[int]:
    """Sequence numbers of the data segments sent at `t` (and no later)."""
    s.app()
    out = []
    while s.sent and s.sent[0].time <= t:
        item = s.sent.popleft()
        if item.seg.payload:
            out.append(item.seg.seq)
    return out


def test_fast_retransmission_is_not_held_by_the_pacer() -> None:
    """The bucket is empty (ten segments out, thirty held), yet SACKs that show the
    first segment lost get it resent at once; what recovery sends after it is paced."""
    s, conn = _established()
    t = s.now
    conn.send(bytes(40 * 1000))
    assert len(_sent_at(s, t)) == 10
    assert conn.sender.pacer is not None and conn.sender.pacer.deadline is not None
    base = OUR_ISN + 1
    for k in range(2, 5):  # segments 2..4 arrived (SACKed), the first did not
        s.inject(".", PEER_ISN + 1, base,
                 options=wire.Options(sack=((base + 1000, base + 1000 * k),)))
    assert conn.stats().fast_retransmits == 1
    assert _sent_at(s, s.now) == [base]
    assert conn.sender.pacer.deadline is not None  # the rest still waits its turn


def test_retransmission_timeout_resends_at_once() -> None:
    """Go-back-N after a timeout starts with one segment exactly at the deadline: a
    timeout follows a silence longer than the round trip, so the bucket is full."""
    # without SACK there is no tail loss probe to come first: the timeout itself
    s, conn = _established(SCRIPT_CFG.replace(initial_cwnd_segments=10, sack=False))
    conn.send(bytes(10 * 1000))
    assert len(_sent_at(s, s.now)) == 10
    deadline = conn.get_timer()                 # the RTO: nothing else is armed
    assert deadline is not None and deadline == pytest.approx(s.now + conn.stats().rto)
    s.advance_to(deadline)
    assert conn.stats().timeouts == 1
    s.expect(ANY, OUR_ISN + 1, length=1000, at=deadline)


def test_pure_acks_and_window_probes_are_not_paced() -> None:
    """With the bucket empty, an ACK for the peer's data still goes at once, and so does
    a zero-window probe."""
    s, conn = _established()
    conn.send(bytes(40 * 1000))
    assert len(_sent_at(s, s.now)) == 10
    assert conn.sender.pacer is not None and conn.sender.pacer.credit <= 0
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"x" * 1000)
    s.inject("P.", PEER_ISN + 1001, OUR_ISN + 1, payload=b"y" * 1000)
    s.expect(".", ANY, PEER_ISN + 2001, payload=b"", at=s.now)  # every second segment
    # the peer takes everything sent and closes its window: probes, unpaced
    s.inject(".", PEER_ISN + 2001, OUR_ISN + 1 + 10_000, window=0)
    assert _sent_at(s, s.now) == []
    probe_at = conn.get_timer()                 # the persist timer, one RTO away
    assert probe_at is not None and probe_at == pytest.approx(s.now + conn.stats().rto)
    s.advance_to(probe_at)
    s.expect(".", OUR_ISN + 10_000, at=probe_at, payload=b"")


def test_pacing_off_sends_the_whole_window() -> None:
    s, conn = _established(SCRIPT_CFG.replace(pacing=False))
    conn.send(bytes(40 * 1000))
    assert len(_sent_at(s, s.now)) == 40
    assert conn.sender.pacer is None  # the next timer is a probe or the RTO, never the pacer's
    probe_at = conn.get_timer()
    assert probe_at is not None
    assert probe_at == pytest.approx(s.now + 2 * RTT)  # the tail loss probe's (RFC 8985)
    s.advance_to(probe_at)
    s.expect(ANY, OUR_ISN + 1 + 39 * 1000, length=1000, at=probe_at)  # the last again
    s.expect_nothing()


# ------------------------------------------------------------------ the bucket alone

def test_bucket_starts_with_ten_segments_and_refills_to_its_size() -> None:
    p = Pacer()
    # no RTT yet: nothing to pace by
    assert p.refill(0.0, 100 * MSS, None, None, MSS) == math.inf and p.rate == 0
    credit = p.refill(1.0, 100 * MSS, None, 0.1, MSS)
    assert p.rate == pytest.approx(2 * 100 * MSS / 0.1)           # slow start: 2x
    assert p.burst == pytest.approx(max(2 * MSS, p.rate * 0.001))
    assert credit == 10 * MSS
    p.spent(credit - 10 * MSS)
    assert p.refill(1.0001, 100 * MSS, None, 0.1, MSS) == pytest.approx(p.rate * 0.0001)
    p.spent(0.0)
    assert p.refill(60.0, 100 * MSS, None, 0.1, MSS) == p.burst   # never above its size


def test_bucket_gain_drops_to_1_2_once_the_window_nears_ssthresh() -> None:
    p = Pacer()
    p.refill(0.0, 40 * MSS, 100 * MSS, 0.1, MSS)
    assert p.rate == pytest.approx(2 * 40 * MSS / 0.1)     # below ssthresh / 2
    p.refill(0.0, 60 * MSS, 100 * MSS, 0.1, MSS)
    assert p.rate == pytest.approx(1.2 * 60 * MSS / 0.1)   # as Linux: from ssthresh / 2


def test_bucket_lets_a_segment_larger_than_itself_go_once_full() -> None:
    """A path MTU probe can be larger than the bucket; it must not wait forever."""
    p = Pacer()
    credit = p.refill(0.0, 4 * MSS, None, 0.1, MSS)       # burst: two segments
    assert p.burst == 2 * MSS
    p.spent(0.0)
    credit = p.refill(0.01, 4 * MSS, None, 0.1, MSS)
    assert credit < p.burst
    assert p.blocks(0.01, credit, 9000)
    assert p.deadline == pytest.approx(0.01 + (p.burst - credit) / p.rate)
    due = p.deadline
    credit = p.refill(due, 4 * MSS, None, 0.1, MSS)
    assert not p.blocks(due, credit, 9000)                  # a full bucket is enough
    p.spent(credit - 9000)                                  # ... and is owed afterwards
    assert p.credit < 0


def test_bucket_keeps_an_armed_deadline_while_the_rate_changes() -> None:
    """An ACK that changes cwnd must not move the timer each time (no re-arming per
    ACK); a deadline that has passed is computed anew."""
    p = Pacer()
    credit = p.refill(0.0, 20 * MSS, None, 0.1, MSS)
    p.spent(credit - 11 * MSS)
    credit = p.refill(0.0, 20 * MSS, None, 0.1, MSS)
    assert p.blocks(0.0, credit, MSS)
    first = p.deadline
    assert first is not None and first > 0
    credit = p.refill(first / 2, 22 * MSS, None, 0.1, MSS)  # a faster rate now
    assert p.blocks(first / 2, credit, MSS) and p.deadline == first
    credit = p.refill(first, 22 * MSS, None, 0.1, MSS)
    assert not p.blocks(first, credit, MSS)


def test_a_window_the_pacer_spreads_out_still_counts_as_used() -> None:
    """RFC 7661 grows cwnd only while the flight fills at least half of it. Segments
    the pacer holds are not application-limited: an ACK that comes back before the
    pacer has sent half the window (the path got faster than the SRTT says) must still
    grow it. Without this, pacing kept cwnd small on the lossy link benchmark."""
    s, conn = _established()
    conn.send(bytes(40 * 1000))
    assert len(_sent_at(s, s.now)) == 10
    s.advance(0.01)  # eight more at 1.25 ms intervals, when the real RTT is 10 ms
    assert conn.snd_max - conn.snd_una == 18 * 1000 < conn.stats().cwnd // 2
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1 + 10 * 1000)
    assert conn.stats().cwnd == 42 * 1000  # slow start: + min(acked, 2 MSS) (RFC 3465)
