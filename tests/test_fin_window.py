"""A FIN and a shut window: sent only into a window with room for it, taken at rcv_nxt
even when ours is shut.

Sending (`Sender.fin_fits`): a FIN is a sequence number like a byte. utcp used to send
it into a shut window once the data was out. A receiver that keeps to RFC 9293's
acceptability test drops it there (utcp's own did), and utcp resent it by RTO until
`max_retransmissions` ran out: it ended, with a TimeoutError and a RST, a connection
whose peer was alive and only not reading yet (about nine minutes with the defaults).
Linux's sender holds the FIN (tcp_snd_wnd_test counts it) and probes the shut window
with the persist timer, which a live peer answers for as long as it likes. utcp does that
now: the FIN goes on the last data segment when the window leaves room for it, or alone
once the window opens.

Receiving: a bare FIN at rcv_nxt is taken even into a shut window (it costs no memory),
as Linux's receiver does, so senders that still send it there are not left resending it.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from tests.script import ANY, Script
from tests.test_flow import CFG, CLIENT, RCVBUF, establish, is_probe, pump_until
from tests.test_persist import CFG as SCRIPTED
from tests.test_persist import (
    OUR_ISN,
    PEER_ISN,
    PEER_OPTS,
    SERVER,
    established,
    probe_times,
)
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.state import State

S = State


def client_with(window: int, queued: int,
                cfg: Config = SCRIPTED) -> tuple[Script, Connection]:
    """ESTABLISHED against a hand-played peer offering `window`; `queued` bytes written
    and the connection closed at t=1.0, before anything is sent."""
    s, conn = established(cfg, window=window)
    s.advance_to(1.0)
    conn.send(bytes(queued))
    conn.close()
    s.app()
    return s, conn


@pytest.mark.parametrize(("window", "fin_rides"), [(2001, True), (2000, False)],
                         ids=["room-for-the-fin", "data-fills-the-window"])
def test_the_fin_rides_on_the_last_segment_only_if_the_window_has_room(
        window: int, fin_rides: bool) -> None:
    """2,000 bytes and a FIN: a window of 2,001 takes all three; one of 2,000 takes the
    data, and the FIN waits for the ACK that opens it again."""
    s, conn = client_with(window, 2000)
    s.expect(ANY, OUR_ISN + 1, length=1000)
    s.expect("FP." if fin_rides else "P.", OUR_ISN + 1001, length=1000)
    s.expect_nothing()
    assert conn.snd_max == OUR_ISN + 2001 + fin_rides
    if fin_rides:
        return
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=1000)  # read: room again
    s.expect("F.", OUR_ISN + 2001, PEER_ISN + 1)
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2002, window=1000)
    assert conn.state is S.FIN_WAIT_2


def test_a_held_fin_is_kept_by_answered_probes_and_goes_when_the_window_opens() -> None:
    """The peer's application reads nothing for an hour: the window stays shut and the
    FIN waits, probed for as long as the peer answers (past `max_retransmissions`,
    which ended the connection when the FIN went into the shut window and was dropped)."""
    cfg = SCRIPTED.replace(max_retransmissions=4)
    s, conn = client_with(2000, 2000, cfg)
    s.expect(ANY, OUR_ISN + 1, length=1000)
    s.expect("P.", OUR_ISN + 1001, length=1000)
    s.advance_to(1.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=0)
    s.expect_nothing()  # no FIN into the shut window
    times = probe_times(s, conn, until=3600.0, answer=True)
    assert len(times) > 4 * cfg.max_retransmissions
    assert conn.state is S.FIN_WAIT_1 and not s.terminated(conn)
    assert conn.snd_max == OUR_ISN + 2001
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=1000)  # it read: a window update
    s.expect("F.", OUR_ISN + 2001, PEER_ISN + 1)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2002, window=1000)
    s.expect(".", OUR_ISN + 2002, PEER_ISN + 2)
    assert conn.state is S.TIME_WAIT


def test_a_held_fin_still_ends_when_probes_go_unanswered() -> None:
    """Holding the FIN does not hold a dead peer's connection: unanswered probes count
    like retransmissions, for a FIN as for data."""
    s, conn = client_with(2000, 2000)
    s.expect(ANY, OUR_ISN + 1, length=1000)
    s.expect("P.", OUR_ISN + 1001, length=1000)
    s.advance_to(1.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=0)
    times = probe_times(s, conn, until=3600.0, answer=False)
    assert len(times) == SCRIPTED.max_retransmissions
    s.expect("R.", OUR_ISN + 2001)
    assert conn.state is S.CLOSED
    errors = s.terminated(conn)
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)


def test_a_reader_that_comes_back_late_gets_the_data_and_the_eof() -> None:
    """Two utcp endpoints on the simulator: the client sends exactly what the server's
    buffer holds and closes; the server's application reads nothing for 30 minutes
    (the FIN sent into the shut window and dropped there ended the client after about
    half a minute of retransmissions with this rto_max); then it reads everything, and
    the end of the stream after it. No FIN crosses while the window is shut."""
    p = establish(server_cfg=CFG.replace(recv_buffer=RCVBUF))
    data = random.Random(3).randbytes(RCVBUF)
    p.c.send(data)
    p.net.run(until=p.net.now + 3.0)
    assert p.c.snd_wnd == 0 and p.s.readable == RCVBUF and p.c.unsent == 0
    p.c.close()
    t_close = p.net.now
    p.net.run(until=t_close + 1800.0)
    assert p.c.state is S.FIN_WAIT_1 and p.c.error is None
    assert p.s.state is S.ESTABLISHED and p.s.error is None
    # no FIN went into the shut window; probes kept the connection
    sent = p.tap.sent_by(CLIENT, since=t_close)
    assert not [seen for seen in sent if seen.seg.flags & wire.FIN]
    assert sum(is_probe(seen, p.c) for seen in sent) > 100
    pump_until(p, lambda: p.s.eof_received, limit=10.0)
    assert hashlib.sha256(p.s_got).digest() == hashlib.sha256(data).digest()
    assert p.s.eof_received and p.s.state is S.CLOSE_WAIT
    p.s.close()
    pump_until(p, lambda: p.s.state is S.CLOSED, limit=10.0)
    assert p.c.state is S.TIME_WAIT and p.c.error is None and p.s.error is None


# --------------------------------------------------------------------------- receiving


def shut_server() -> tuple[Script, Connection]:
    """A utcp server whose application reads nothing, its window shut by the peer's
    2,000 bytes (its whole buffer)."""
    cfg = SCRIPTED.replace(recv_buffer=2000)
    s = Script(cfg, port=80, listening=True, isns=(OUR_ISN,), peer=SERVER)
    s.inject("S", PEER_ISN, 0, window=65535, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1)
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    conn = s.ep.accept()
    assert conn is not None
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=bytes(1000))
    s.inject("P.", PEER_ISN + 1001, OUR_ISN + 1, payload=bytes(1000))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2001, window=0)
    assert conn.rcv_adv == conn.rcv_nxt == PEER_ISN + 2001
    return s, conn


def test_a_bare_fin_into_our_shut_window_is_taken() -> None:
    """Liberal in what we accept: a FIN alone at rcv_nxt costs no memory, and a sender
    that sends it into a shut window (utcp did, and Linux's receiver takes it since
    6.x; tests/interop/test_fin_window_kernel.py saw 6.18 do so) would otherwise resend
    it until it gave up on a live connection."""
    s, conn = shut_server()
    s.inject("F.", PEER_ISN + 2001, OUR_ISN + 1, window=65535)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2002, window=0)
    assert conn.state is S.CLOSE_WAIT
    assert conn.read() == bytes(2000) and conn.eof_received


@pytest.mark.parametrize("where", ["past-rcv_nxt", "after-data"])
def test_a_fin_beyond_rcv_nxt_in_our_shut_window_is_not(where: str) -> None:
    """Only the FIN at rcv_nxt: one further on, or behind data the window cannot take,
    is outside the window and is answered with the ACK that says where it is."""
    s, conn = shut_server()
    if where == "past-rcv_nxt":
        s.inject("F.", PEER_ISN + 2002, OUR_ISN + 1, window=65535)
    else:
        s.inject("FP.", PEER_ISN + 2001, OUR_ISN + 1, window=65535, payload=b"late")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2001, window=0)
    assert conn.state is S.ESTABLISHED and not conn.eof_received


# --------------------------------------------------------------------------- the edge


def test_the_window_on_a_resent_segment_that_moves_snd_una_is_taken() -> None:
    """The ACK that moves snd_una may ride on the peer's resent segment, whose SEG.SEQ is
    older than the last one whose window we took. RFC 9293's rule alone kept the old
    window there, so snd_una + snd_wnd lay past the edge the peer had just advertised,
    and the held FIN went into its shut window. Linux's tcp_may_update_window takes the
    window from any ACK newer than the last; so does utcp."""
    s, conn = client_with(3000, 3000)
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i, length=1000)
    s.expect_nothing()  # the window is full: the FIN waits
    # the peer's data: its first segment is lost, the second draws a duplicate ACK
    s.inject(".", PEER_ISN + 101, OUR_ISN + 1, window=3000, payload=bytes(100))
    s.expect(".", OUR_ISN + 3001, PEER_ISN + 1)
    s.advance(0.1)
    # its first segment again, now carrying the ACK of all our data and a shut window
    s.inject(".", PEER_ISN + 1, OUR_ISN + 3001, window=0, payload=bytes(100))
    assert conn.snd_una == OUR_ISN + 3001 and conn.snd_wnd == 0
    s.expect(".", OUR_ISN + 3001, PEER_ISN + 201)  # its data acknowledged; no FIN
    s.expect_nothing()
    s.inject(".", PEER_ISN + 201, OUR_ISN + 3001, window=1000)
    s.expect("F.", OUR_ISN + 3001, PEER_ISN + 201)


@pytest.mark.parametrize("size", [999, 1000])
def test_a_lone_segment_with_the_fin_is_not_early_retransmitted(size: int) -> None:
    """RFC 5827's early retransmit needs two segments in flight: a full segment with the
    FIN on it is one (its FIN's sequence number counted it as two, and one stray
    duplicate ACK resent it)."""
    s, conn = client_with(65535, size)
    s.expect("FP.", OUR_ISN + 1, length=size)
    s.advance(0.05)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, window=65535)  # a stray duplicate ACK
    s.expect_nothing()
    assert conn.counters.fast_retransmits == 0
