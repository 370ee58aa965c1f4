"""A peer that holds its window shut is bounded as Linux bounds it (issue #12, item 5).

Each test plays the hostile (or vanished) peer by hand against one endpoint on the fake
clock of `tests/script.py`: the peer takes some data, advertises a zero window, and then
either says nothing more or answers every zero-window probe with "still zero". Without
these bounds the connection, and every byte queued on it, was kept forever:

- unanswered probes count like retransmissions (`max_retransmissions`, Linux's
  `tcp_retries2`); a probe answered with a zero window starts the count again;
- `user_timeout` counts from the last forward progress, answered probes or not (Linux's
  `TCP_USER_TIMEOUT` since 5.11, `icsk_probes_tstamp`);
- `idle_timeout` that closes a connection whose FIN cannot leave ends it one more
  `idle_timeout` later, in FIN_WAIT_1 or LAST_ACK, as documented;
- an orphan (the application closed the transport) whose peer answers every probe with a
  zero window is ended after `ORPHAN_PROBES` probes (Linux's `tcp_orphan_retries`);
- a window shrunk to nothing under data in flight makes every timeout a probe: answered,
  it keeps the connection (it was ended after `max_retransmissions`), and the window's
  opening sends again at once, with SACK too.
"""

from __future__ import annotations

import pytest

from tests.script import ANY, Script
from utcp import wire
from utcp.config import Config
from utcp.connection import ORPHAN_PROBES, Connection
from utcp.events import Terminated
from utcp.state import State

S = State
MOD = 1 << 32
OUR_ISN = MOD - 2
PEER_ISN = MOD - 1000
SERVER: tuple[str, int] = ("10.0.0.2", 80)
PEER_OPTS = wire.Options(mss=1000, wscale=0)
# rto_max small so that a backed-off probe train is short; timestamps off so that the
# scripts' segments are exact
CFG = Config(mss=1000, recv_buffer=64000, rto_initial=1.0, rto_min=0.2, rto_max=4.0,
             max_retransmissions=4, timestamps=False, pacing=False, pmtu_probing=False)


def established(cfg: Config = CFG, *, window: int,
                options: wire.Options = PEER_OPTS) -> tuple[Script, Connection]:
    """ESTABLISHED at t=0.125 against a hand-played peer that offers `window`."""
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.advance(0.125)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=window, options=options)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    return s, conn


def zero_window_client(cfg: Config = CFG, *, sent: int = 2000,
                       queued: int = 5000) -> tuple[Script, Connection, float]:
    """ESTABLISHED; `sent` bytes go out and are acknowledged with a zero window at t=1.125,
    `queued - sent` wait. Returns the script, the connection and the time of that ACK."""
    s, conn = established(cfg, window=sent)
    s.advance_to(1.0)
    conn.send(bytes(queued))
    s.app()
    for i in range(0, sent, 1000):
        s.expect(ANY, OUR_ISN + 1 + i, length=1000, at=1.0)
    s.expect_nothing()
    s.advance_to(1.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1 + sent, window=0)
    s.expect_nothing()
    assert conn.snd_wnd == 0 and conn.unsent == queued - sent
    return s, conn, 1.125


def probe_times(s: Script, conn: Connection, until: float, *, answer: bool) -> list[float]:
    """Advance to `until`; each zero-window probe is popped (and answered with a zero
    window when `answer`). Returns when the probes went out."""
    times: list[float] = []
    while s.now < until and conn.state is not S.CLOSED:
        deadline = s.ep.get_timer()
        if deadline is None or deadline > until:
            break
        s.advance_to(deadline)
        while s.sent:
            seg = s.sent[0].seg
            if seg.flags & wire.RST:
                return times
            s.expect(".", seq=conn.snd_una - 1, length=0)
            times.append(s.now)
            if answer:
                s.inject(".", conn.rcv_nxt, conn.snd_una, window=0)
                s.expect_nothing()
    return times


def the_error(s: Script, conn: Connection) -> Exception | None:
    errors = s.terminated(conn)
    assert len(errors) == 1, errors
    return errors[0]


def test_unanswered_probes_count_like_retransmissions() -> None:
    """A peer that closed its window and vanished: max_retransmissions probes, then RST
    and TimeoutError (it was kept forever, its 3,000 queued bytes with it)."""
    s, conn, t0 = zero_window_client()
    times = probe_times(s, conn, until=t0 + 600.0, answer=False)
    assert len(times) == CFG.max_retransmissions, times
    s.expect("R.", seq=conn.snd_max)
    assert conn.state is S.CLOSED
    err = the_error(s, conn)
    assert isinstance(err, TimeoutError) and "probe" in str(err)
    # the probes backed off as before (RTO, 2 RTO, ... up to rto_max), and the end came
    # when the next one was due
    gaps = [b - a for a, b in zip([t0, *times], [*times, s.now], strict=True)]
    assert gaps == [min(gaps[0] * 2**i, CFG.rto_max) for i in range(len(gaps))], gaps


def test_answered_probes_keep_a_live_connection_until_the_answers_stop() -> None:
    """RFC 9293 §3.8.6.1: a receiver that answers probes may keep its window shut as long
    as it likes; each answer starts the count again (Linux resets icsk_probes_out)."""
    s, conn, t0 = zero_window_client()
    answered = probe_times(s, conn, until=t0 + 100.0, answer=True)
    assert len(answered) > 3 * CFG.max_retransmissions
    assert conn.state is S.ESTABLISHED and conn.unsent == 3000
    # then the peer goes silent: the count from there ends it
    silent = probe_times(s, conn, until=s.now + 600.0, answer=False)
    assert len(silent) == CFG.max_retransmissions
    s.expect("R.")
    assert isinstance(the_error(s, conn), TimeoutError)


def test_user_timeout_counts_from_the_last_progress_through_answered_probes() -> None:
    """TCP_USER_TIMEOUT: a window shut for user_timeout ends the connection even though
    every probe is answered (Linux 5.11's fix; before it utcp kept it forever)."""
    cfg = CFG.replace(user_timeout=10.0)
    s, conn, t0 = zero_window_client(cfg)
    probes = probe_times(s, conn, until=t0 + 10.0 - 1e-6, answer=True)
    assert len(probes) == 5, probes  # answered, and the timeout fires all the same
    assert conn.state is S.ESTABLISHED
    probe_times(s, conn, until=t0 + 10.0, answer=True)
    s.expect("R.", seq=conn.snd_max)
    assert conn.state is S.CLOSED and s.now == t0 + 10.0
    err = the_error(s, conn)
    assert isinstance(err, TimeoutError) and "window" in str(err)


def test_user_timeout_restarts_when_the_window_opens() -> None:
    """Progress resets the clock: a window that opens just before user_timeout lets the
    data go, and the connection lives on for a full user_timeout after that."""
    cfg = CFG.replace(user_timeout=10.0)
    s, conn, t0 = zero_window_client(cfg)
    probe_times(s, conn, until=t0 + 9.0, answer=True)
    s.advance_to(t0 + 9.5)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=1000)  # a window update
    s.expect(".", OUR_ISN + 2001, length=1000, at=t0 + 9.5)
    s.expect_nothing()
    s.advance_to(t0 + 9.6)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 3001, window=0)  # acknowledged; shut again
    probe_times(s, conn, until=t0 + 9.6 + 10.0 - 1e-6, answer=True)
    assert conn.state is S.ESTABLISHED and conn.unsent == 2000
    probe_times(s, conn, until=t0 + 9.6 + 10.0, answer=True)
    assert conn.state is S.CLOSED
    assert isinstance(the_error(s, conn), TimeoutError)


@pytest.mark.parametrize("peer_fin", [False, True], ids=["FIN_WAIT_1", "LAST_ACK"])
def test_idle_timeout_ends_a_connection_whose_fin_cannot_leave(peer_fin: bool) -> None:
    """idle_timeout closes the connection (FIN queued behind the unsent data the shut
    window holds back); one more idle_timeout later it ends, as documented, instead of
    staying in FIN_WAIT_1 (or LAST_ACK) forever."""
    idle = 30.0
    s, conn, t0 = zero_window_client(CFG.replace(idle_timeout=idle))
    if peer_fin:
        s.inject("F.", PEER_ISN + 1, OUR_ISN + 2001, window=0)
        s.expect(".", OUR_ISN + 2001, PEER_ISN + 2)
        assert conn.state is S.CLOSE_WAIT
    closed_in = S.LAST_ACK if peer_fin else S.FIN_WAIT_1
    probe_times(s, conn, until=t0 + idle + 1.0, answer=True)
    assert conn.state is closed_in  # the idle timer closed it; the FIN waits
    probe_times(s, conn, until=t0 + 2 * idle + 1.0, answer=True)
    assert conn.state is S.CLOSED and s.now <= t0 + 2 * idle
    err = the_error(s, conn)
    assert isinstance(err, TimeoutError) and "idle" in str(err)


def test_an_orphan_on_a_shut_window_is_ended_after_orphan_probes() -> None:
    """The application closed the transport and will never read again: a peer that
    answers every probe with a zero window cannot pin the connection and its buffer
    (Linux's tcp_orphan_retries). No user_timeout, idle_timeout or keepalive is set."""
    s, conn, t0 = zero_window_client(CFG.replace(max_retransmissions=255))
    conn.orphaned = True
    conn.close()
    s.app()
    s.expect_nothing()
    assert conn.state is S.FIN_WAIT_1
    times = probe_times(s, conn, until=t0 + 3600.0, answer=True)
    assert len(times) == ORPHAN_PROBES
    s.expect("R.", seq=conn.snd_max)
    assert conn.state is S.CLOSED
    assert isinstance(the_error(s, conn), TimeoutError)


def test_a_half_closed_connection_is_not_an_orphan() -> None:
    """close() alone (asyncio's write_eof) leaves the application reading: RFC 1122 keeps
    it while the peer answers, as Linux keeps a socket after shutdown(SHUT_WR)."""
    s, conn, t0 = zero_window_client(CFG.replace(max_retransmissions=255))
    conn.close()
    times = probe_times(s, conn, until=t0 + 600.0, answer=True)
    assert len(times) > 2 * ORPHAN_PROBES
    assert conn.state is S.FIN_WAIT_1
    assert not [ev for ev in s.events_of(conn, Terminated)]


def test_idle_timeout_is_not_postponed_by_our_own_retransmissions() -> None:
    """CLOSING with a peer gone quiet: our FIN is resent every few seconds, and each
    resend used to count as activity, so idle_timeout never came (only the
    max_retransmissions budget, backed off, ended it). Now it ends idle_timeout after the
    peer's last segment."""
    idle = 10.0
    cfg = CFG.replace(idle_timeout=idle, max_retransmissions=255)
    s, conn, _ = zero_window_client(cfg, sent=2000, queued=2000)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=1000)  # room for our FIN again
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 2001)
    s.advance(0.125)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2001, window=1000)  # its FIN, not acking ours
    s.expect(".", OUR_ISN + 2002, PEER_ISN + 2)
    assert conn.state is S.CLOSING
    last_heard = s.now
    resends = 0
    while conn.state is not S.CLOSED and s.now < last_heard + 600.0:
        deadline = s.ep.get_timer()
        assert deadline is not None
        s.advance_to(deadline)
        while s.sent and not s.sent[0].seg.flags & wire.RST:
            s.expect("F.", OUR_ISN + 2001)
            resends += 1
    assert resends >= 3  # resends went out, and did not postpone the end
    s.expect("R.")
    assert conn.state is S.CLOSED and s.now == last_heard + idle
    err = the_error(s, conn)
    assert isinstance(err, TimeoutError) and "idle" in str(err)


def test_acknowledged_resends_are_activity() -> None:
    """A long recovery in which every segment we send is a resend is not idle while the
    peer acknowledges them: idle_timeout (2 s here) does not end a connection whose
    resends keep being acknowledged for 8 s."""
    cfg = CFG.replace(idle_timeout=2.0, max_retransmissions=255, rto_max=1.0)
    s, conn = established(cfg, window=64000)
    conn.send(bytes(10_000))
    s.app()
    while s.sent:
        s.sent.popleft()  # all of it lost
    acked = 0
    while acked < 10_000:
        deadline = s.ep.get_timer()
        assert deadline is not None
        s.advance_to(deadline)  # the RTO: go back to snd_una and resend
        assert conn.state is S.ESTABLISHED, s.terminated(conn)
        seg = s.expect(ANY, OUR_ISN + 1 + acked, length=1000)
        while s.sent:
            s.sent.popleft()  # the rest lost again
        acked += len(seg.payload)
        s.advance(0.05)
        s.inject(".", PEER_ISN + 1, OUR_ISN + 1 + acked, window=64000)
    assert s.now > 4 * cfg.idle_timeout
    assert conn.state is S.ESTABLISHED and conn.queued == 0


def answer_everything(s: Script, conn: Connection, until: float, *, ack: int) -> int:
    """Advance to `until`, answering every segment we send with a zero window (at most
    four answers per timer, so that answers never feed on each other); returns how
    many segments went out."""
    sent = 0
    while s.now < until and conn.state is not S.CLOSED:
        deadline = s.ep.get_timer()
        if deadline is None or deadline > until:
            break
        s.advance_to(deadline)
        answered = 0
        while s.sent:
            seg = s.sent.popleft().seg
            sent += 1
            if seg.flags & wire.RST or answered == 4:
                continue
            answered += 1
            s.inject(".", PEER_ISN + 1, ack, window=0)
    return sent


def shrunk_under_flight(cfg: Config, sack: bool) -> tuple[Script, Connection]:
    """2,000 bytes sent into the 2,000 offered; the peer takes 1,000 and shrinks its
    window to nothing: the rest waits in flight past the edge."""
    s, conn = established(cfg, window=2000,
                          options=wire.Options(mss=1000, wscale=0, sack_permitted=sack))
    conn.send(bytes(2000))
    s.app()
    s.expect(ANY, OUR_ISN + 1, length=1000)
    s.expect(ANY, OUR_ISN + 1001, length=1000)
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001, window=0)  # the edge moves back
    assert conn.snd_wnd == 0 and conn.snd_max == OUR_ISN + 2001
    return s, conn


@pytest.mark.parametrize("sack", [False, True], ids=["go-back-N", "SACK"])
def test_a_window_shrunk_under_data_in_flight_is_kept_while_the_peer_answers(
        sack: bool) -> None:
    """The peer takes part of what we sent and shrinks its window to nothing (RFC 9293
    discourages it, and allows it): what is past the edge waits in flight, and every
    timeout finds the window still shut. Our retransmissions (or the probes that stand
    in for them) are then zero-window probes, and a peer that answers them keeps the
    connection, as Linux's tcp_retransmit_timer keeps it; they ended it after
    max_retransmissions (about nine minutes here)."""
    cfg = CFG.replace(max_retransmissions=4, sack=sack)
    s, conn = shrunk_under_flight(cfg, sack)
    sent = answer_everything(s, conn, s.now + 3600.0, ack=OUR_ISN + 1001)
    assert conn.state is S.ESTABLISHED and conn.error is None
    assert sent > 4 * cfg.max_retransmissions  # it kept asking, and was answered
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001, window=2000)  # it read: room again
    s.expect(ANY, OUR_ISN + 1001, length=1000)  # what was past the edge, again
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=2000)
    assert conn.snd_una == conn.snd_max == OUR_ISN + 2001


@pytest.mark.parametrize("who", ["silent", "orphan"])
def test_a_window_shrunk_under_data_in_flight_still_ends_a_silent_peer_or_an_orphan(
        who: str) -> None:
    """Kept only while answered, and not for an orphan (nobody will read what it holds,
    as Linux times an orphan out there): a silent peer is ended after
    max_retransmissions, an orphan whatever the peer answers."""
    cfg = CFG.replace(max_retransmissions=4)
    s, conn = shrunk_under_flight(cfg, sack=False)
    if who == "orphan":
        conn.orphaned = True
        answer_everything(s, conn, s.now + 3600.0, ack=OUR_ISN + 1001)
    else:
        probe_times(s, conn, until=s.now + 3600.0, answer=False)
    assert conn.state is S.CLOSED
    assert isinstance(the_error(s, conn), TimeoutError)


@pytest.mark.parametrize("sack", [False, True], ids=["go-back-N", "SACK"])
def test_a_fin_sent_then_a_shrunk_window_keeps_a_live_peer(sack: bool) -> None:
    """Data and the FIN went into a window with room; the peer takes the data and shrinks
    its window to nothing before it takes the FIN. Answered, the connection is kept,
    and the FIN is resent when the window opens."""
    cfg = CFG.replace(max_retransmissions=4, sack=sack)
    s, conn = established(cfg, window=3000,
                          options=wire.Options(mss=1000, wscale=0, sack_permitted=sack))
    conn.send(bytes(2000))
    conn.close()
    s.app()
    s.expect(ANY, OUR_ISN + 1, length=1000)
    s.expect("FP.", OUR_ISN + 1001, length=1000)
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=0)  # the data, not the FIN
    answer_everything(s, conn, s.now + 3600.0, ack=OUR_ISN + 2001)
    assert conn.state is S.FIN_WAIT_1 and conn.error is None
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=1000)
    s.expect("F.", OUR_ISN + 2001)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2002, window=1000)
    assert conn.state is S.FIN_WAIT_2


def test_user_timeout_counts_when_a_small_window_then_shuts() -> None:
    """A small window holds the rest back (sender SWS avoidance arms its override on the
    persist timer); the window then shuts. user_timeout still counts from there (the
    armed override timer kept it from starting, and a peer answering "still zero" held
    the data and the FIN for as long as it liked)."""
    cfg = CFG.replace(user_timeout=30.0)
    s, conn = established(cfg, window=3000)
    s.advance_to(1.0)
    conn.send(bytes(5000))
    conn.close()
    s.app()
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i, length=1000)
    s.advance_to(1.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 3001, window=500)  # small: SWS holds the rest
    s.expect_nothing()
    s.advance_to(1.25)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 3001, window=0)  # then shut
    probe_times(s, conn, until=200.0, answer=True)
    assert conn.state is S.CLOSED and s.now <= 1.25 + 30.0
    err = the_error(s, conn)
    assert isinstance(err, TimeoutError)
