"""Keepalive is on by default (issue #11 item 2), on the simulator's fake clock.

A peer that dies silently (SIGKILL, a pulled cable, a NAT that forgot us) must not
leave the other side waiting forever with default settings. Defaults: after 25 s with
nothing heard, a probe (under the ~30 s after which many NATs drop a quiet UDP mapping,
so the probe and its answer keep the mapping alive); unanswered, 6 more probes 5 s apart
at most; then TimeoutError and a RST, 55 s after the peer was last heard.
"""

from __future__ import annotations

from tests.test_flow import CLIENT, EPS, SERVER, Pair, establish, events, is_probe
from utcp.config import Config
from utcp.connection import Connection
from utcp.events import Terminated
from utcp.state import State

IDLE, INTERVAL, PROBES = 25.0, 5.0, 6
# Only what the test needs changed: keepalive stays at its defaults.
CFG = Config(msl=1.0, rto_min=0.2, rto_initial=0.5)


def state(conn: Connection) -> State:
    return conn.state  # read afresh: mypy keeps an earlier assert's narrowing otherwise


def server_vanishes(p: Pair) -> float:
    """The server goes without a word: the client's keepalive ends the connection
    IDLE + PROBES x INTERVAL after the server was last heard. Returns that time."""
    assert p.net.trace is not None
    last_heard = max(r.time for r in p.net.trace if r.dst == CLIENT and r.fate == "delivered")
    p.net.remove(SERVER)
    p.net.run(until=p.net.now + 120.0, stop=lambda: p.c.state == State.CLOSED)
    assert state(p.c) == State.CLOSED and isinstance(p.c.error, TimeoutError)
    assert abs(p.net.now - (last_heard + IDLE + PROBES * INTERVAL)) < 1e-6
    return last_heard


def test_defaults_are_on_and_documented_values() -> None:
    c = Config()
    assert (c.keepalive_interval, c.keepalive_probe_interval, c.keepalive_probes) == (
        IDLE, INTERVAL, PROBES)
    assert IDLE + PROBES * INTERVAL <= 60.0  # "noticed within about a minute"
    assert IDLE < 30.0                       # under a typical NAT's UDP timeout


def test_idle_connection_is_probed_under_the_nat_timeout_and_a_dead_peer_noticed() -> None:
    p = establish(client_cfg=CFG, server_cfg=CFG)
    p.net.run(until=p.net.now + 1.0)
    events(p.c)
    # idle for 3 minutes: the path carries a probe and its answer at least every 25 s
    t_idle = p.net.now
    p.net.run(until=t_idle + 180.0)
    times = sorted(s.time for s in p.tap.seen if s.time >= t_idle)
    gaps = [b - a for a, b in zip([t_idle, *times], times, strict=False)]
    assert len(times) >= 2 * 180 // 25 and max(gaps) <= IDLE + 0.1
    assert p.c.state == State.ESTABLISHED and p.s.state == State.ESTABLISHED

    # the server vanishes without a word: probes 25 s after it was last heard, then
    # every 5 s; the 6th unanswered ends the connection 55 s after it was last heard
    last_heard = server_vanishes(p)
    unanswered = p.tap.sent_by(CLIENT, since=last_heard + EPS)
    probes = [s.time - last_heard for s in unanswered if is_probe(s, p.c)]
    first = probes.index(IDLE) if IDLE in probes else 0
    assert probes[first:] == [IDLE + i * INTERVAL for i in range(PROBES)]
    assert unanswered[-1].seg.flags & 0x04  # RST: a peer that comes back learns at once
    assert isinstance(events(p.c)[-1], Terminated)


def test_keepalive_leaves_a_connection_with_data_in_flight_to_retransmission() -> None:
    """As Linux's keepalive timer: while data waits for an ACK, the retransmission timer
    judges the peer, and a path down for a few minutes does not end the connection
    sooner than `max_retransmissions` would."""
    cfg = CFG.replace(rto_max=60.0, max_retransmissions=12, keepalive_interval=IDLE,
                      keepalive_probes=PROBES)
    p = establish(client_cfg=cfg, server_cfg=cfg)
    p.net.remove(SERVER)
    t_send = p.net.now
    p.c.send(b"x" * 5000)
    p.net.run(until=t_send + 3 * 60.0, stop=lambda: p.c.state == State.CLOSED)
    assert p.c.state == State.ESTABLISHED  # keepalive alone would have ended it at ~55 s
    assert not [s for s in p.tap.sent_by(CLIENT, since=t_send) if is_probe(s, p.c)]
    p.net.run(until=t_send + 30 * 60.0, stop=lambda: p.c.state == State.CLOSED)
    assert state(p.c) == State.CLOSED and isinstance(p.c.error, TimeoutError)
    assert "keepalive" not in str(p.c.error)


def test_keepalive_can_be_turned_off() -> None:
    off = CFG.replace(keepalive_interval=None)
    p = establish(client_cfg=off, server_cfg=off)
    t_idle = p.net.now + 1.0
    p.net.run(until=t_idle + 300.0)
    assert p.tap.sent_by(CLIENT, since=t_idle) == [] == p.tap.sent_by(SERVER, since=t_idle)
    assert p.c.get_timer() is None


def test_a_half_closed_connection_in_fin_wait_2_probes_and_notices_a_dead_peer() -> None:
    """FIN_WAIT_2 after write_eof: our FIN is acknowledged, the application still reads,
    and the peer (in CLOSE_WAIT) sends nothing. As Linux's keepalive timer, which probes
    once nothing is in flight or queued, the probes go on there; they used to stop at
    the FIN (`Connection.unsent` read -1 once it was out, which was taken for data
    waiting), and a peer that died then held the connection forever."""
    p = establish(client_cfg=CFG, server_cfg=CFG)
    p.c.close()
    p.net.run(until=p.net.now + 5.0, stop=lambda: p.c.state == State.FIN_WAIT_2)
    assert p.c.state == State.FIN_WAIT_2 and p.s.state == State.CLOSE_WAIT
    t_fw2 = p.net.now
    p.net.run(until=t_fw2 + 3 * IDLE)  # a live peer answers: probes, and nothing ends
    assert [s for s in p.tap.sent_by(CLIENT, since=t_fw2) if is_probe(s, p.c)]
    assert p.c.state == State.FIN_WAIT_2

    server_vanishes(p)  # then it dies: noticed 55 s after it was last heard

