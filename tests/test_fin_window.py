"""A FIN waits for the peer's window, as data does (`Sender.fin_fits`).

A FIN is a sequence number like a byte. A receiver whose window is shut drops one (RFC
9293's acceptability test; Linux counts it as TCPZeroWindowDrop, and utcp does the
same). utcp used to send the FIN anyway once the data was out; it then resent it by RTO
until `max_retransmissions` ran out, and ended, with a TimeoutError and a RST, a
connection whose peer was alive and only not reading yet (about nine minutes with the
defaults). Linux holds the FIN (tcp_snd_wnd_test counts it) and probes the shut window
with the persist timer, which a live peer answers for as long as it likes. utcp does
that now: the FIN leaves when the window has room for it, on the last data segment
when that leaves room, or alone once the window opens.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from tests.script import ANY, Script
from tests.test_flow import CFG, CLIENT, RCVBUF, establish, is_probe, pump_until
from tests.test_persist import CFG as SCRIPTED
from tests.test_persist import OUR_ISN, PEER_ISN, PEER_OPTS, SERVER, probe_times
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.state import State

S = State


def client_with(window: int, queued: int,
                cfg: Config = SCRIPTED) -> tuple[Script, Connection]:
    """ESTABLISHED against a hand-played peer offering `window`; `queued` bytes written
    and the connection closed at t=1.0, before anything is sent."""
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.advance(0.125)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=window, options=PEER_OPTS)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
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
    buffer holds and closes; the server's application reads nothing for 30 minutes (30
    times what the FIN's retransmissions used to survive here); then it reads
    everything, and the end of the stream after it."""
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
