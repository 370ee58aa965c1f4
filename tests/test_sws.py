"""Sender silly-window-syndrome avoidance (RFC 9293 §3.8.6.2.1) on a tiny peer window
(issue #11, item 5), on the fake clock of `tests/script.py`.

A peer that offers less than two segments (2,000 bytes with an MSS of 1,400) got one
full segment and then waited a round trip for the rest. Now, as Linux does
(`tcp_bound_to_half_wnd`), segments to such a peer are half its largest window, so the
window is filled at once; and a small usable window that is neither a full segment nor
all that is queued nor half the largest window waits for an ACK, or, with nothing in
flight, for the override timer (RFC 1122 §4.2.3.4: within 0.1-1.0 s; here one RTO, as
Linux's probe timer).
"""

from __future__ import annotations

import pytest

from tests.script import ANY, Script
from utcp import wire
from utcp.config import Config
from utcp.connection import SWS_OVERRIDE_MAX, Connection
from utcp.state import State

S = State
MOD = 1 << 32
OUR_ISN = MOD - 2
PEER_ISN = MOD - 1000
SERVER: tuple[str, int] = ("10.0.0.2", 80)
CFG = Config(mss=1400, rto_initial=1.0, rto_min=0.2, pacing=False, pmtu_probing=False)
TS_PEER = 777  # the peer's TSval, when it offers timestamps


def client(cfg: Config, *, peer_window: int, timestamps: bool = False,
           rtt: float = 0.125) -> tuple[Script, Connection]:
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    syn = s.expect("S", OUR_ISN)
    s.advance(rtt)
    ts = (TS_PEER, syn.options.timestamps[0]) if timestamps and syn.options.timestamps \
        else None
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=peer_window,
             options=wire.Options(mss=1460, wscale=0, timestamps=ts))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.state is S.ESTABLISHED
    return s, conn


def ack(s: Script, upto: int, window: int) -> None:
    """The peer acknowledges our bytes up to `upto` (counted from 0) with `window`, with
    timestamps if ours carry them (RFC 7323 §3.2: both or neither, once negotiated)."""
    assert s.last_sent is not None
    ts = (TS_PEER, 0) if s.last_sent.seg.options.timestamps is not None else None
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1 + upto, window=window,
             options=wire.Options(timestamps=ts))


@pytest.mark.parametrize("timestamps", [False, True], ids=["plain", "timestamps"])
def test_a_window_under_two_segments_is_filled_at_once(timestamps: bool) -> None:
    """2,000 bytes of window, MSS 1,400 (1,388 with timestamps): two 1,000-byte segments
    go at once and again after each ACK, never one full one and a round trip's wait."""
    s, conn = client(CFG.replace(timestamps=timestamps), peer_window=2000,
                     timestamps=timestamps)
    assert s.last_sent is not None  # the handshake's ACK: timestamps only if negotiated
    assert (s.last_sent.seg.options.timestamps is not None) is timestamps
    conn.send(bytes(10_000))
    s.app()
    t = s.now
    s.expect(ANY, OUR_ISN + 1, length=1000, at=t)
    s.expect(ANY, OUR_ISN + 1001, length=1000, at=t)
    s.expect_nothing()
    for upto in range(2000, 10_000, 2000):
        s.advance(0.125)
        ack(s, upto, 2000)
        s.expect(ANY, OUR_ISN + 1 + upto, length=1000, at=s.now)
        s.expect(ANY, OUR_ISN + 1001 + upto, length=1000, at=s.now)
        s.expect_nothing()
    s.advance(0.125)
    ack(s, 10_000, 2000)
    assert conn.queued == 0 and conn.stats().timeouts == 0


def test_full_segments_when_the_window_holds_two() -> None:
    """The bound applies only below two segments' worth: 2,800 bytes take two 1,400s."""
    s, conn = client(CFG, peer_window=2800)
    conn.send(bytes(5000))
    s.app()
    s.expect(ANY, OUR_ISN + 1, length=1400)
    s.expect(ANY, OUR_ISN + 1401, length=1400)
    s.expect_nothing()


def test_a_small_usable_window_waits_for_the_ack_in_flight() -> None:
    """Data in flight: the ACK for it widens the window, so a sliver is not sent (the
    old code sent nothing here either; the override timer is not armed)."""
    s, conn = client(CFG, peer_window=6000)
    conn.send(bytes(20_000))
    s.app()
    for i in range(4):
        s.expect(".", OUR_ISN + 1 + 1400 * i, length=1400)
    s.expect_nothing()  # 400 usable: neither a full segment nor half of 6,000
    s.advance(0.125)
    ack(s, 1400, 4600)  # the edge does not move: still 400 usable, 4,200 in flight
    s.expect_nothing()
    # no override timer (an ACK will come): the next timer is the RTO, restarted by the
    # ACK (RFC 6298 §5.3), and what it sends is the head, no sliver
    rto_at = s.ep.get_timer()
    assert rto_at is not None and rto_at == pytest.approx(s.now + conn.stats().rto)
    s.advance_to(rto_at)
    assert conn.stats().timeouts == 1  # the RTO resends the head; no sliver ever went
    s.expect(ANY, OUR_ISN + 1401, length=1400)
    s.expect_nothing()


def test_override_timer_sends_a_sliver_when_nothing_is_in_flight() -> None:
    """A peer that offered 64 KiB and now offers 300 bytes with everything acknowledged:
    the 300 wait (RFC 9293: less than Fs * max window, not all queued), then the override
    timer sends them; a second sliver waits again. The old code sent each at once."""
    s, conn = client(CFG, peer_window=65535)
    conn.send(bytes(4000))
    s.app()
    s.expect(ANY, OUR_ISN + 1, length=1400)
    s.expect(ANY, OUR_ISN + 1401, length=1400)
    s.expect(ANY, OUR_ISN + 2801, length=1200)  # all that is queued: goes (Nagle off)
    s.advance(0.125)
    conn.send(bytes(1000))
    ack(s, 4000, 300)
    s.expect_nothing()
    delay = min(conn.stats().rto, SWS_OVERRIDE_MAX)
    t = s.now
    s.advance(delay - 1e-6)
    s.expect_nothing()
    s.advance(1e-6)
    s.expect(ANY, OUR_ISN + 4001, length=300, at=t + delay)
    s.expect_nothing()
    s.advance(0.125)
    ack(s, 4300, 300)
    s.expect_nothing()
    t = s.now
    delay = min(conn.stats().rto, SWS_OVERRIDE_MAX)
    s.advance(delay)
    s.expect(ANY, OUR_ISN + 4301, length=300, at=t + delay)
    s.advance(0.125)
    ack(s, 4600, 400)  # all that is left fits: at once
    s.expect(ANY, OUR_ISN + 4601, length=400, at=s.now)
    s.expect_nothing()
    assert conn.stats().timeouts == 0


def test_override_timer_meets_a_shut_window_and_probes() -> None:
    """The window shuts while the override timer waits: the timer probes instead, and
    the probes back off as for any zero window."""
    s, conn = client(CFG, peer_window=65535)
    conn.send(bytes(1400))
    s.app()
    s.expect(ANY, OUR_ISN + 1, length=1400)
    s.advance(0.125)
    conn.send(bytes(1000))
    ack(s, 1400, 300)
    s.expect_nothing()
    ack(s, 1400, 0)
    s.expect_nothing()
    deadline = s.ep.get_timer()
    assert deadline is not None
    s.advance_to(deadline)
    s.expect(".", OUR_ISN + 1400, length=0)  # a zero-window probe, not data
    s.expect_nothing()
    ack(s, 1400, 1000)
    s.expect(ANY, OUR_ISN + 1401, length=1000)  # all that is queued fits


def test_no_path_mtu_probe_into_a_window_that_cannot_hold_it() -> None:
    """A PMTU probe (a bigger segment with three behind it, RFC 8899) does not fit a
    2,000-byte window: half-window segments go, not a probe and a held-back rest."""
    cfg = CFG.replace(mss=1000, pmtu_probing=True)
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    conn.max_mss = 1460  # the route would carry bigger segments: probing is on
    s.expect("S", OUR_ISN)
    s.advance(0.125)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=2000, options=wire.Options(mss=1460))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.pmtu is not None
    assert conn.pmtu.next_size() == 1460  # a probe is wanted: only the window stops it
    conn.send(bytes(20_000))
    s.app()
    s.expect(ANY, OUR_ISN + 1, length=1000)
    s.expect(ANY, OUR_ISN + 1001, length=1000)
    s.expect_nothing()
    assert conn.pmtu.probes_sent == 0


def test_a_resend_after_a_timeout_is_not_held_back() -> None:
    """SWS avoidance is for new data: after an RTO the head goes again at once into
    whatever window the peer now offers (it shrank it to 500 bytes), as before."""
    s, conn = client(CFG, peer_window=65535)
    conn.send(bytes(4200))
    s.app()
    sent_at = s.now
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1400 * i, length=1400, at=sent_at)
    s.advance(0.05)
    ack(s, 0, 500)  # nothing acknowledged; the window shrinks
    s.expect_nothing()
    rto_at = s.ep.get_timer()  # the RTO, as armed when the data left
    assert rto_at is not None and rto_at == pytest.approx(sent_at + conn.stats().rto)
    s.advance_to(rto_at)
    s.expect(ANY, OUR_ISN + 1, length=500, at=rto_at)
    s.expect_nothing()
    assert conn.stats().timeouts == 1
