"""Flow control and the connection timers, driven through the simulator on its fake clock.

- the receive window closes when the application stops reading: the sender stops at the
  advertised edge and loses nothing; reading reopens it with a window update at once;
- zero-window probes recover from a lost window update and keep a long-closed window alive;
- keepalive probes an idle connection the peer answers, and ends one whose peer is gone
  with TimeoutError after `keepalive_probes` unanswered probes;
- user_timeout ends a connection whose data (or FIN) is never acknowledged;
- idle_timeout closes an idle connection gracefully, and not a busy one.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.netsim import Address, LinkProfile, Network
from utcp import seq as sq
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.events import StateChanged, Terminated
from utcp.state import State

S = State
SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
DELAY = 0.01
# rto_min stays above RTT + the 40 ms delayed ACK, so a lossless link sees no spurious RTO
CFG = Config(msl=1.0, rto_min=0.2, rto_initial=0.5, rto_max=2.0)
EPS = 1e-9


@dataclass
class Seen:
    time: float
    src: Address
    dst: Address
    seg: wire.Segment

    @property
    def pure_ack(self) -> bool:
        return self.seg.flags == wire.ACK and not self.seg.payload


class Tap:
    """The network's filter hook: records every emitted segment, drops nothing."""

    def __init__(self, net: Network) -> None:
        self.seen: list[Seen] = []
        net.filter = self

    def __call__(self, data: bytes, src: Address, dst: Address, now: float) -> bool:
        self.seen.append(Seen(now, src, dst, wire.parse(data)))
        return True

    def sent_by(self, addr: Address, since: float = 0.0) -> list[Seen]:
        return [s for s in self.seen if s.src == addr and s.time >= since]


@dataclass
class Pair:
    net: Network
    tap: Tap
    cli_ep: Endpoint
    srv_ep: Endpoint
    c: Connection
    s: Connection
    c_got: bytearray = field(default_factory=bytearray)  # what the client application read
    s_got: bytearray = field(default_factory=bytearray)


def establish(*, client_cfg: Config = CFG, server_cfg: Config = CFG,
              profile: LinkProfile | None = None, seed: int = 1) -> Pair:
    net = Network(seed, profile or LinkProfile(delay=DELAY), trace=True)
    tap = Tap(net)
    srv_ep = Endpoint(server_cfg, SERVER[1], listening=True, rng=random.Random(seed))
    cli_ep = Endpoint(client_cfg, CLIENT[1], rng=random.Random(seed + 1))
    net.add(SERVER, srv_ep)
    net.add(CLIENT, cli_ep)
    c = cli_ep.connect(SERVER, net.now)
    accepted: list[Connection] = []

    def up() -> bool:
        if not accepted and (s := srv_ep.accept()) is not None:
            accepted.append(s)
        return bool(accepted) and c.state == S.ESTABLISHED

    net.run(until=5.0, stop=up)
    assert up()
    return Pair(net, tap, cli_ep, srv_ep, c, accepted[0])


def events(conn: Connection) -> list[object]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def is_probe(seen: Seen, conn: Connection) -> bool:
    """A zero-window or keepalive probe: no data, one below snd_una (never acceptable)."""
    return seen.pure_ack and seen.seg.seq == sq.wrap(conn.snd_una - 1)


def pump_until(p: Pair, done: Callable[[], bool], *, limit: float) -> None:
    """Run with both applications reading everything, until `done()` or `limit` seconds."""

    def stop() -> bool:
        p.c_got += p.c.read()
        p.s_got += p.s.read()
        return done()

    p.net.run(until=p.net.now + limit, stop=stop)


# --------------------------------------------------------------------------- windows

RCVBUF = 16 * 1024


def fill_window(p: Pair, total: int) -> bytes:
    """The client sends `total` bytes to a server application that does not read."""
    data = random.Random(7).randbytes(total)
    p.c.send(data)
    p.net.run(until=p.net.now + 3.0)
    return data


def test_window_closes_when_the_application_stops_reading() -> None:
    p = establish(server_cfg=CFG.replace(recv_buffer=RCVBUF))
    data = fill_window(p, 100_000)
    # the receiver holds exactly one buffer's worth, unread; the sender stopped there
    assert p.s.readable == RCVBUF
    # in order, all of it: nothing came out of order, so nothing is held so
    assert p.s.stats().bytes_received == RCVBUF and p.s.stats().ooo_segments_received == 0
    assert p.c.snd_wnd == 0
    assert p.c.in_flight == 0
    assert p.c.unsent == len(data) - RCVBUF
    assert p.c.stats().bytes_sent == RCVBUF
    # nothing was lost or resent: no byte went past the window the server advertised
    assert p.c.stats().bytes_retransmitted == 0 and p.c.stats().timeouts == 0
    edge = 0
    for seen in p.tap.seen:
        seg = seen.seg
        if seen.src == SERVER and seg.flags & wire.ACK:
            edge = max(edge, sq.unwrap(seg.ack, p.c.iss) + (seg.window << p.c.snd_wscale))
        elif seen.src == CLIENT and seg.payload:
            assert sq.unwrap(seg.seq, p.c.iss) + len(seg.payload) <= edge, seen
    # the server said so: its last ACKs advertise a zero window; the client probes it
    server_acks = [s for s in p.tap.sent_by(SERVER) if s.pure_ack]
    assert server_acks[-1].seg.window == 0
    assert sum(is_probe(s, p.c) for s in p.tap.sent_by(CLIENT)) >= 2

    # reading reopens the window with an update sent at once, not at the next probe
    t_read = p.net.now
    p.s_got += p.s.read()
    p.net.flush()
    update = p.tap.seen[-1]
    assert update.src == SERVER and update.pure_ack and update.time == t_read
    assert update.seg.window << p.c.snd_wscale == RCVBUF
    p.net.run(until=t_read + 2 * DELAY + 0.001)
    resumed = [s for s in p.tap.sent_by(CLIENT, since=t_read) if s.seg.payload]
    assert resumed and resumed[0].time <= t_read + DELAY + EPS

    pump_until(p, lambda: len(p.s_got) == len(data), limit=30.0)
    assert hashlib.sha256(p.s_got).digest() == hashlib.sha256(data).digest()
    assert p.c.stats().bytes_retransmitted == 0


def test_zero_window_probe_recovers_a_lost_window_update() -> None:
    # user_timeout is on too, and longer than the window stays shut here: answered probes
    # do not end the connection before it (a window shut longer than user_timeout does,
    # as Linux's TCP_USER_TIMEOUT: tests/test_persist.py)
    p = establish(client_cfg=CFG.replace(user_timeout=60.0),
                  server_cfg=CFG.replace(recv_buffer=RCVBUF))
    data = fill_window(p, 60_000)
    assert p.c.snd_wnd == 0 and p.s.readable == RCVBUF
    # the window stays shut for a long time: probes (backed off to rto_max) keep going,
    # the server answers every one, and nothing times out
    t_shut = p.net.now
    p.net.run(until=t_shut + 30.0)
    probes = [s for s in p.tap.sent_by(CLIENT, since=t_shut) if is_probe(s, p.c)]
    assert len(probes) >= 30.0 / CFG.rto_max - 1
    gaps = [b.time - a.time for a, b in itertools.pairwise(probes)]
    assert max(gaps) <= CFG.rto_max + EPS
    answers = [s for s in p.tap.sent_by(SERVER, since=t_shut) if s.pure_ack]
    assert len(answers) >= len(probes) - 1 and all(a.seg.window == 0 for a in answers)
    assert p.c.state == S.ESTABLISHED and p.s.state == S.ESTABLISHED

    # the application reads; the window update that says so is lost
    def window_update(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        return src == SERVER and seg.window > 0 and not seg.payload

    p.net.drop_next(window_update)
    probe_seq = sq.wrap(p.c.snd_una - 1)
    t_read = p.net.now
    p.s_got += p.s.read()
    p.net.flush()
    assert p.net.stats.dropped_filter == 1
    # the next probe's answer carries the open window, and the data flows again
    p.net.run(until=t_read + CFG.rto_max + 0.1)
    after = p.tap.sent_by(CLIENT, since=t_read)
    first_data = next((i for i, s in enumerate(after) if s.seg.payload), None)
    assert first_data is not None, "the sender never learned that the window reopened"
    assert [s.seg.seq for s in after[:first_data]] == [probe_seq]  # one probe did it
    pump_until(p, lambda: len(p.s_got) == len(data), limit=30.0)
    assert hashlib.sha256(p.s_got).digest() == hashlib.sha256(data).digest()
    assert p.c.state == S.ESTABLISHED and p.c.error is None


# --------------------------------------------------------------------------- keepalive

def test_keepalive_probes_an_idle_connection_and_detects_a_dead_peer() -> None:
    interval, probes = 1.0, 3
    p = establish(client_cfg=CFG.replace(keepalive_interval=interval, keepalive_probes=probes))
    p.c.send(b"ping")
    p.s.send(b"pong")
    pump_until(p, lambda: False, limit=0.5)
    assert p.c_got == b"pong" and p.s_got == b"ping"
    events(p.c)

    # idle for 20 s: one probe a second, each answered, and the connection lives on
    t_idle = p.net.now
    p.net.run(until=t_idle + 20.0)
    sent = p.tap.sent_by(CLIENT, since=t_idle)
    assert sent and all(is_probe(s, p.c) for s in sent)
    assert 18 <= len(sent) <= 21
    answers = p.tap.sent_by(SERVER, since=t_idle)
    assert len(answers) == len(sent) and all(a.pure_ack for a in answers)
    assert p.c.state == S.ESTABLISHED and p.s.state == S.ESTABLISHED

    # the peer vanishes: `probes` unanswered probes, then TimeoutError (and a RST)
    assert p.net.trace is not None
    last_heard = max(r.time for r in p.net.trace
                     if r.dst == CLIENT and r.fate == "delivered")
    p.net.remove(SERVER)
    p.net.run(until=p.net.now + 30.0, stop=lambda: p.c.state == S.CLOSED)
    assert p.c.state == S.CLOSED
    assert isinstance(p.c.error, TimeoutError)
    died = p.net.now
    assert abs(died - (last_heard + (probes + 1) * interval)) < 1e-6
    unanswered = [s for s in p.tap.sent_by(CLIENT, since=last_heard + EPS)]
    assert sum(is_probe(s, p.c) for s in unanswered) == probes
    assert unanswered[-1].seg.flags & wire.RST
    evs = events(p.c)
    assert StateChanged(S.ESTABLISHED, S.CLOSED) in evs
    assert isinstance(evs[-1], Terminated) and isinstance(evs[-1].error, TimeoutError)
    assert p.cli_ep.connections == {} and p.cli_ep.get_timer() is None


def test_keepalive_off_sends_nothing_on_an_idle_connection() -> None:
    off = CFG.replace(keepalive_interval=None)  # on by default
    p = establish(client_cfg=off, server_cfg=off)
    t_idle = p.net.now + 1.0
    p.net.run(until=t_idle + 60.0)
    assert p.tap.sent_by(CLIENT, since=t_idle) == []
    assert p.tap.sent_by(SERVER, since=t_idle) == []
    assert p.c.state == S.ESTABLISHED and p.c.get_timer() is None


# --------------------------------------------------------------------------- user_timeout

def test_user_timeout_ends_a_connection_whose_data_is_never_acknowledged() -> None:
    user_timeout = 2.0
    p = establish(client_cfg=CFG.replace(user_timeout=user_timeout))
    p.net.remove(SERVER)
    t_send = p.net.now
    p.c.send(b"x" * 10_000)
    p.net.run(until=t_send + 30.0, stop=lambda: p.c.state == S.CLOSED)
    assert p.c.state == S.CLOSED and isinstance(p.c.error, TimeoutError)
    assert abs(p.net.now - (t_send + user_timeout)) < 1e-6
    assert p.c.stats().timeouts >= 2  # it did retransmit in between
    assert p.tap.seen[-1].src == CLIENT and p.tap.seen[-1].seg.flags & wire.RST
    evs = events(p.c)
    assert isinstance(evs[-1], Terminated) and isinstance(evs[-1].error, TimeoutError)
    assert p.cli_ep.connections == {} and p.cli_ep.get_timer() is None


def test_user_timeout_covers_an_unacknowledged_fin() -> None:
    p = establish(client_cfg=CFG.replace(user_timeout=1.5))
    p.net.remove(SERVER)
    t_close = p.net.now
    p.c.close()
    p.net.run(until=t_close + 30.0, stop=lambda: p.c.state == S.CLOSED)
    assert isinstance(p.c.error, TimeoutError)
    assert abs(p.net.now - (t_close + 1.5)) < 1e-6
    states = [e.new for e in events(p.c) if isinstance(e, StateChanged)]
    assert states[-2:] == [S.FIN_WAIT_1, S.CLOSED]


def test_user_timeout_spares_a_slow_transfer_that_is_being_acknowledged() -> None:
    # 512 KiB at 100 kB/s takes ~5 s, far more than user_timeout, but ACKs keep coming (the
    # queue holds 0.33 s, so even a tail drop's recovery makes progress within 1 s)
    profile = LinkProfile(delay=DELAY, bandwidth=100e3, queue_limit=32 * 1024)
    p = establish(client_cfg=CFG.replace(user_timeout=1.0), profile=profile)
    data = random.Random(3).randbytes(512 * 1024)
    p.c.send(data)
    p.c.close()
    pump_until(p, lambda: p.s.eof_received, limit=60.0)
    assert p.net.now > 5.0 and p.net.stats.dropped_queue > 0
    # the server has just taken the FIN: its ACK is still on the wire, then it lands
    assert p.c.error is None and p.c.state == S.FIN_WAIT_1
    assert bytes(p.s_got) == data
    pump_until(p, lambda: p.c.state != S.FIN_WAIT_1, limit=5.0)
    assert p.c.error is None and p.c.state == S.FIN_WAIT_2


# --------------------------------------------------------------------------- idle_timeout

def test_idle_timeout_closes_an_idle_connection_gracefully() -> None:
    idle = 3.0
    p = establish(server_cfg=CFG.replace(idle_timeout=idle))
    events(p.s)
    # some traffic for a while: data every second keeps it open
    for i in range(6):
        p.c.send(b"tick %d" % i)
        pump_until(p, lambda: False, limit=1.0)
    assert p.s.state == S.ESTABLISHED
    last_data = max(s.time for s in p.tap.seen if s.seg.payload)
    last_any = max(s.time for s in p.tap.seen)
    # then nothing: the server closes on its own; the client sees EOF and closes too
    pump_until(p, lambda: p.s.state != S.ESTABLISHED, limit=10.0)
    fin = next(s for s in p.tap.sent_by(SERVER, since=last_any) if s.seg.flags & wire.FIN)
    assert last_data + idle - EPS <= fin.time <= last_any + DELAY + idle + EPS
    pump_until(p, lambda: p.c.eof_received, limit=5.0)
    p.c.close()
    pump_until(p, lambda: p.s.state == S.CLOSED and p.c.state == S.CLOSED, limit=10.0)
    assert p.c.state == S.CLOSED and p.s.state == S.CLOSED
    assert p.c.error is None and p.s.error is None
    states = [e.new for e in events(p.s) if isinstance(e, StateChanged)]
    assert states in ([S.FIN_WAIT_1, S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED],
                      [S.FIN_WAIT_1, S.TIME_WAIT, S.CLOSED])


def test_idle_timeout_gives_up_on_a_vanished_peer() -> None:
    idle = 2.0
    p = establish(server_cfg=CFG.replace(idle_timeout=idle))
    p.net.remove(CLIENT)
    pump_until(p, lambda: p.s.state == S.CLOSED, limit=30.0)
    assert p.s.state == S.CLOSED
    assert isinstance(p.s.error, TimeoutError)
    states = [e.new for e in events(p.s) if isinstance(e, StateChanged)]
    assert states[-2:] == [S.FIN_WAIT_1, S.CLOSED]


@pytest.mark.parametrize("idle", [0.5, 4.0])
def test_idle_timeout_off_while_data_flows(idle: float) -> None:
    # a 1 MiB transfer at 500 kB/s lasts ~2 s; gaps between segments stay far below `idle`
    profile = LinkProfile(delay=DELAY, bandwidth=500e3, queue_limit=64 * 1024)
    p = establish(server_cfg=CFG.replace(idle_timeout=idle), profile=profile)
    data = random.Random(4).randbytes(1 << 20)
    p.c.send(data)
    pump_until(p, lambda: p.s.stats().bytes_received == len(data), limit=60.0)
    assert p.s.state == S.ESTABLISHED and bytes(p.s_got) == data
