"""An orphan in FIN_WAIT_2 is bounded by `Config.fin_timeout` (Linux's tcp_fin_timeout).

The application closed (the transport calls `Connection.orphan`), our FIN went out and
the peer acknowledged it, but the peer never sends its own FIN. Keepalive cannot end
such a connection: a live peer answers every probe. Without a bound a hostile or buggy
client could make a server hold one connection's state forever per connection it opens.
As on Linux, an orphaned FIN_WAIT_2 is dropped `fin_timeout` after it became both
orphaned and FIN_WAIT_2, silently (no RST then); a segment the peer sends later is for
no connection, and the endpoint answers it with RST. A connection only half-closed
(asyncio's `write_eof`: the application still reads) stays in FIN_WAIT_2 as long as the
peer wishes, as a Linux socket after shutdown(SHUT_WR) does.

Each test plays the peer by hand against one endpoint on the fake clock of
`tests/script.py`, answering every keepalive probe, with keepalive at its default.
"""

from __future__ import annotations

import pytest

from tests import peek
from tests.script import Script
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.events import Terminated
from utcp.state import State

S = State
MOD = 1 << 32
OUR_ISN = MOD - 2       # both across the wrap, as in the other scripts
PEER_ISN = MOD - 1000
SERVER: tuple[str, int] = ("10.0.0.2", 80)
PEER_OPTS = wire.Options(mss=1000, wscale=0)
FIN_TIMEOUT = 60.0      # the default, as Linux's
KEEPALIVE = 25.0        # the default: probes at 25 and 50 s, both answered
# timestamps off so that the scripts' segments are exact; keepalive and fin_timeout at
# their defaults
CFG = Config(mss=1000, timestamps=False, pacing=False, pmtu_probing=False)
EPS = 1e-3


def established(cfg: Config = CFG) -> tuple[Script, Connection]:
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.advance(0.125)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=PEER_OPTS)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.state is S.ESTABLISHED
    return s, conn


def to_fin_wait_2(s: Script, conn: Connection) -> float:
    """close(): our FIN goes out, and the peer acknowledges it a little later (without
    a FIN of its own). Returns the time FIN_WAIT_2 was entered."""
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
    s.expect_nothing()
    assert conn.state is S.FIN_WAIT_2
    return s.now


def answer_probes(s: Script, conn: Connection, until: float) -> list[float]:
    """Run the clock to `until`, the peer answering every keepalive probe at once (an
    ACK of our FIN, as a live peer in CLOSE_WAIT sends). Returns the probes' times."""
    times = []
    while (deadline := s.ep.get_timer()) is not None and deadline <= until:
        s.advance_to(deadline)
        while s.sent:
            s.expect(".", OUR_ISN + 1, PEER_ISN + 1, length=0)  # snd_una - 1: a probe
            times.append(s.now)
            s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
    s.advance_to(until)
    return times


def test_an_orphan_answering_keepalives_ends_fin_timeout_after_fin_wait_2() -> None:
    """(a) The default 60 s, not a moment sooner, though every probe is answered; no RST
    then, and the connection is gone from the endpoint: the peer's next segment draws
    the RST of a segment for no connection."""
    s, conn = established()
    conn.orphan(s.now)
    t_fw2 = to_fin_wait_2(s, conn)

    probes = answer_probes(s, conn, until=t_fw2 + FIN_TIMEOUT - EPS)
    assert probes == [t_fw2 + KEEPALIVE, t_fw2 + 2 * KEEPALIVE]  # the peer is alive
    assert conn.state is S.FIN_WAIT_2 and peek.counter(conn, "fin_timeouts") == 0
    assert not s.terminated(conn)

    s.advance_to(t_fw2 + FIN_TIMEOUT)
    assert conn.state is S.CLOSED
    s.expect_nothing()  # silently, as Linux's timewait bucket expires
    assert s.terminated(conn) == [None]
    assert SERVER not in s.ep.connections
    assert conn.stats().fin_timeouts == 1

    # the peer, still in CLOSE_WAIT, speaks again: its segment is for no connection
    s.advance(1.0)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
    s.expect("R", OUR_ISN + 2)
    assert s.ep.counters["RST sent for no connection"] == 1


def test_a_half_closed_connection_stays_in_fin_wait_2() -> None:
    """(b) close() alone (asyncio's write_eof): the application still reads, so the
    connection stays as long as the peer answers, as after shutdown(SHUT_WR)."""
    s, conn = established()
    t_fw2 = to_fin_wait_2(s, conn)
    probes = answer_probes(s, conn, until=t_fw2 + 20 * FIN_TIMEOUT)
    assert len(probes) >= 20 * FIN_TIMEOUT // KEEPALIVE
    assert conn.state is S.FIN_WAIT_2 and not s.terminated(conn)
    assert peek.counter(conn, "fin_timeouts") == 0


def test_the_peers_fin_before_the_deadline_gives_a_full_time_wait() -> None:
    """(c) The peer's FIN comes 30 s into FIN_WAIT_2: TIME_WAIT as usual, for its whole
    2 x MSL, which the orphan's deadline (30 s later) does not cut short."""
    s, conn = established()
    conn.orphan(s.now)
    t_fw2 = to_fin_wait_2(s, conn)
    answer_probes(s, conn, until=t_fw2 + 30.0)
    t_fin = s.now
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    assert conn.state is S.TIME_WAIT

    s.advance_to(t_fin + 2 * CFG.msl - EPS)  # well past t_fw2 + fin_timeout
    assert t_fin + 2 * CFG.msl - EPS > t_fw2 + FIN_TIMEOUT
    assert conn.state is S.TIME_WAIT
    s.expect_nothing()
    s.advance_to(t_fin + 2 * CFG.msl)
    assert conn.state is S.CLOSED
    assert s.states(conn)[-3:] == [S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED]
    assert peek.counter(conn, "fin_timeouts") == 0


@pytest.mark.parametrize("keepalive", [KEEPALIVE, None], ids=["keepalive", "quiet"])
def test_orphaned_after_reaching_fin_wait_2_counts_from_then(keepalive: float | None) -> None:
    """(d) write_eof, then close() 100 s later: the orphan's 60 s run from the close,
    not from FIN_WAIT_2. With keepalive off nothing else is armed: the endpoint learns
    the new deadline from the close itself."""
    s, conn = established(CFG.replace(keepalive_interval=keepalive))
    t_fw2 = to_fin_wait_2(s, conn)
    answer_probes(s, conn, until=t_fw2 + 100.0)
    assert conn.state is S.FIN_WAIT_2
    t_orphan = s.now
    conn.orphan(t_orphan)
    s.app()
    s.expect_nothing()

    answer_probes(s, conn, until=t_orphan + FIN_TIMEOUT - EPS)
    assert conn.state is S.FIN_WAIT_2
    s.advance_to(t_orphan + FIN_TIMEOUT)
    assert conn.state is S.CLOSED
    s.expect_nothing()
    assert s.terminated(conn) == [None]
    assert SERVER not in s.ep.connections
    assert peek.counter(conn, "fin_timeouts") == 1


def test_orphan_twice_keeps_the_first_deadline() -> None:
    """A second orphan() (the transport's close() is idempotent, a caller may not be)
    does not push the deadline back."""
    s, conn = established()
    t_fw2 = to_fin_wait_2(s, conn)
    conn.orphan(t_fw2)
    answer_probes(s, conn, until=t_fw2 + 30.0)
    conn.orphan(s.now)
    s.app()
    answer_probes(s, conn, until=t_fw2 + FIN_TIMEOUT)
    assert conn.state is S.CLOSED


def test_fin_timeout_none_keeps_an_orphan_in_fin_wait_2() -> None:
    """(e) fin_timeout=None: the old behaviour, an orphan stays while the peer answers."""
    s, conn = established(CFG.replace(fin_timeout=None))
    conn.orphan(s.now)
    t_fw2 = to_fin_wait_2(s, conn)
    answer_probes(s, conn, until=t_fw2 + 20 * FIN_TIMEOUT)
    assert conn.state is S.FIN_WAIT_2 and not s.terminated(conn)
    assert SERVER in s.ep.connections


def test_a_short_fin_timeout_is_taken_as_configured() -> None:
    """Config.fin_timeout is read, not a constant: 0.5 s ends the orphan at 0.5 s."""
    s, conn = established(CFG.replace(fin_timeout=0.5))
    conn.orphan(s.now)
    t_fw2 = to_fin_wait_2(s, conn)
    s.advance_to(t_fw2 + 0.5 - EPS)
    assert conn.state is S.FIN_WAIT_2
    s.advance_to(t_fw2 + 0.5)
    assert conn.state is S.CLOSED
    s.expect_nothing()


def test_an_orphan_still_fin_wait_1_is_not_timed_yet() -> None:
    """The clock starts at FIN_WAIT_2, not at the close: an orphan whose FIN is
    acknowledged late (here 50 s after close, the peer having been silent and our FIN
    resent) still gets its whole fin_timeout in FIN_WAIT_2."""
    s, conn = established(CFG.replace(max_retransmissions=255, rto_max=10.0))
    conn.orphan(s.now)
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    s.advance(50.0)
    s.sent.clear()  # the FIN's retransmissions, unanswered
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
    assert conn.state is S.FIN_WAIT_2
    t_fw2 = s.now
    answer_probes(s, conn, until=t_fw2 + FIN_TIMEOUT - EPS)
    assert conn.state is S.FIN_WAIT_2
    s.advance_to(t_fw2 + FIN_TIMEOUT)
    assert conn.state is S.CLOSED
    assert not any(isinstance(ev, Terminated) and ev.error for ev in s.events_of(conn))
