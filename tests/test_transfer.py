"""Randomized end-to-end transfers: two sans-IO endpoints through the seeded simulator.

The acceptance criterion this file meets: 100 seeded transfers of 1 MiB in each
direction (both at once) under 10 % loss with duplication and reordering deliver
byte-exact streams (SHA-256), and both ends end in CLOSED after the TIME_WAIT side's
2 x MSL, on the fake clock. Every run also checks that each side's state sequence
(from its StateChanged events) is a legal path of RFC 9293's diagram for the way
the run closed, and that no timer was left stuck or armed.

A few more transfers use other link profiles: a slow link with a small queue (tail
drops), heavy reordering, 30 % loss, 8960-byte segments under an MTU, and a slow
reader whose window closes to zero and reopens.
"""

from __future__ import annotations

import enum
import hashlib
import random
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
MiB = 1 << 20

# Small timers: the fake clock makes them free, and they keep the runs short.
CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2)

LOSSY = LinkProfile(loss=0.10, duplicate=0.05, reorder=0.10, delay=0.005, jitter=0.002,
                    bandwidth=10e6, queue_limit=200_000)

# How each side may leave ESTABLISHED (RFC 9293 §3.3.2 and §3.6).
ACTIVE_CLOSE = {
    (S.FIN_WAIT_1, S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED),
    (S.FIN_WAIT_1, S.TIME_WAIT, S.CLOSED),              # their FIN acked ours
    (S.FIN_WAIT_1, S.CLOSING, S.TIME_WAIT, S.CLOSED),   # simultaneous close
}
SIMULTANEOUS_CLOSE = (S.FIN_WAIT_1, S.CLOSING, S.TIME_WAIT, S.CLOSED)
SIMULTANEOUS_CLOSE_RESET = (S.FIN_WAIT_1, S.CLOSING, S.CLOSED)
PASSIVE_CLOSE = {(S.CLOSE_WAIT, S.LAST_ACK, S.CLOSED)}
CLIENT_OPEN = (S.CLOSED, S.SYN_SENT, S.ESTABLISHED)
SERVER_OPEN = (S.LISTEN, S.SYN_RCVD, S.ESTABLISHED)


class Closing(enum.Enum):
    CLIENT_FIRST = "client closes first, right after queueing its data"
    SERVER_FIRST = "server closes first, right after queueing its data"
    BOTH = "both close right after queueing their data (FINs may cross)"
    CLIENT_AFTER_DATA = "client closes once it has all the server's data"


@dataclass
class Side:
    """One application: its connection, the bytes it sends and gets, its state history."""

    name: str
    data: bytes
    close_first: bool             # close right after queueing the data
    close_when_complete: bool = False  # close once all the peer's bytes were read
    conn: Connection | None = None
    got: bytearray = field(default_factory=bytearray)
    states: list[tuple[float, State]] = field(default_factory=list)
    terminated: Terminated | None = None
    closed_by_app: bool = False
    saw_zero_window: bool = False
    expect: int = 0               # bytes the peer sends us
    reading: bool = True          # an eager reader; a slow one reads from the outer loop

    def poll(self, now: float) -> None:
        conn = self.conn
        if conn is None:
            return
        while (event := conn.next_event()) is not None:
            if isinstance(event, StateChanged):
                if not self.states:
                    self.states.append((now, event.old))
                assert event.old == self.states[-1][1], (self.name, event, self.states)
                self.states.append((now, event.new))
            elif isinstance(event, Terminated):
                assert self.terminated is None, f"{self.name}: two Terminated events"
                self.terminated = event
        if self.reading:
            self.got += conn.read()
        if conn.snd_wnd == 0 and conn.state != S.CLOSED:
            self.saw_zero_window = True
        if self.closed_by_app or conn.state in (S.SYN_SENT, S.SYN_RCVD, S.CLOSED):
            return
        if (self.close_first
                or (self.close_when_complete and len(self.got) == self.expect)
                or (conn.eof_received and conn.readable == 0)):
            conn.close()
            self.closed_by_app = True

    @property
    def path(self) -> tuple[State, ...]:
        return tuple(state for _, state in self.states)

    def time_entered(self, state: State) -> float:
        """When the side last entered `state` (CLOSED is also where a client starts)."""
        return next(t for t, s in reversed(self.states) if s == state)


class FixedIss(random.Random):
    """An endpoint's random source whose 32-bit draws (the ISS) are all `iss`."""

    def __init__(self, iss: int) -> None:
        super().__init__(0)
        self.iss = iss

    def getrandbits(self, k: int) -> int:
        return self.iss if k == 32 else super().getrandbits(k)


@dataclass
class Run:
    net: Network
    client_ep: Endpoint
    server_ep: Endpoint
    client: Side
    server: Side


def transfer(seed: int, profile: LinkProfile, *, c2s: int, s2c: int, closing: Closing,
             config: Config = CFG, server_config: Config | None = None,
             read_every: float | None = None, read_chunk: int = 0,
             limit: float = 600.0, iss: int | None = None, trace: bool = False) -> Run:
    """Move `c2s` and `s2c` random bytes at the same time, close as `closing` says,
    and run until both connections are CLOSED. With `read_every`, the server's
    application reads at most `read_chunk` bytes that often instead of at once. `iss`
    fixes both initial sequence numbers. With `trace`, `run.net.trace` keeps every
    datagram, for a test that checks what went on the wire."""
    rng = random.Random(seed)
    net = Network(seed, profile, trace=trace)
    server_rng = random.Random(rng.getrandbits(64)) if iss is None else FixedIss(iss)
    client_rng = random.Random(rng.getrandbits(64)) if iss is None else FixedIss(iss)
    server_ep = Endpoint(server_config or config, SERVER[1], listening=True, rng=server_rng)
    client_ep = Endpoint(config, CLIENT[1], rng=client_rng)
    net.add(SERVER, server_ep)
    net.add(CLIENT, client_ep)
    client = Side("client", rng.randbytes(c2s), expect=s2c,
                  close_first=closing in (Closing.CLIENT_FIRST, Closing.BOTH),
                  close_when_complete=closing == Closing.CLIENT_AFTER_DATA)
    server = Side("server", rng.randbytes(s2c), expect=c2s,
                  close_first=closing in (Closing.SERVER_FIRST, Closing.BOTH),
                  reading=read_every is None)
    client.conn = client_ep.connect(SERVER, net.now)
    client.conn.send(client.data)

    def done() -> bool:
        now = net.now
        if server.conn is None:
            server.conn = server_ep.accept()
            if server.conn is not None:
                server.conn.send(server.data)
        client.poll(now)
        server.poll(now)
        return (client.terminated is not None and server.terminated is not None
                and client.conn is not None and client.conn.state == S.CLOSED
                and server.conn is not None and server.conn.state == S.CLOSED)

    if read_every is None:
        net.run(until=limit, stop=done)
    else:
        while not done() and net.now < limit:
            net.run(until=net.now + read_every, stop=done)
            if server.conn is not None:
                server.got += server.conn.read(read_chunk)
        if server.conn is not None:
            server.got += server.conn.read()  # what a first closer left unread
    assert done(), (f"not finished by t={net.now}: client {client.path}, server"
                    f" {server.path}, {net.stats}")
    return Run(net, client_ep, server_ep, client, server)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def check(run: Run, closing: Closing, msl: float = CFG.msl) -> None:
    """Everything a finished run must satisfy."""
    client, server, net = run.client, run.server, run.net
    # byte-exact both ways
    assert len(server.got) == len(client.data)
    assert sha(server.got) == sha(client.data)
    assert len(client.got) == len(server.data)
    assert sha(client.got) == sha(server.data)
    # orderly ends, and each side's states are a legal path for how the run closed
    assert client.terminated is not None and client.terminated.error is None
    assert server.terminated is not None and server.terminated.error is None
    assert client.path[:3] == CLIENT_OPEN, client.path
    assert server.path[:3] == SERVER_OPEN, server.path
    first = {Closing.CLIENT_FIRST: client, Closing.CLIENT_AFTER_DATA: client,
             Closing.SERVER_FIRST: server}.get(closing)
    for side, other in ((client, server), (server, client)):
        tail = side.path[3:]
        if closing == Closing.BOTH:
            legal = set(ACTIVE_CLOSE)  # each closed at ESTABLISHED, before any FIN came
        elif side is first:
            legal = ACTIVE_CLOSE - {SIMULTANEOUS_CLOSE}  # the peer's FIN acks ours
        else:
            legal = set(PASSIVE_CLOSE)
        if (S.TIME_WAIT in other.path and side.states[-1][0] > other.time_entered(S.CLOSED)):
            # the peer's TIME_WAIT ran out before our last FIN got there: its RST then ends
            # CLOSING (LAST_ACK -> CLOSED looks the same as the orderly end)
            legal.add(SIMULTANEOUS_CLOSE_RESET)
        assert tail in legal, (side.name, side.path, closing)
    # TIME_WAIT lasts 2 x MSL on the fake clock; the other side is CLOSED too
    tw_sides = [side for side in (client, server) if S.TIME_WAIT in side.path]
    assert tw_sides, "a graceful close leaves at least one side in TIME_WAIT"
    for side in tw_sides:
        waited = side.time_entered(S.CLOSED) - side.time_entered(S.TIME_WAIT)
        assert waited >= 2 * msl - 1e-9, (side.name, waited)
    assert client.conn is not None and client.conn.state == S.CLOSED
    assert server.conn is not None and server.conn.state == S.CLOSED
    # nothing left behind: no connection in the tables, no timer armed or stuck
    assert run.client_ep.connections == {} and run.server_ep.connections == {}
    assert run.client_ep.get_timer() is None and run.server_ep.get_timer() is None
    assert not run.server_ep.syn_queue and not run.server_ep.accept_queue
    net.run(until=net.now + 10 * msl)  # late duplicates still in flight
    assert run.client_ep.get_timer() is None and run.server_ep.get_timer() is None
    assert net.stats.stuck_timers == 0


CLOSINGS = list(Closing)


@pytest.mark.parametrize("seed", range(100))
def test_lossy_bidirectional_1mib(seed: int) -> None:
    closing = CLOSINGS[seed % len(CLOSINGS)]
    run = transfer(seed, LOSSY, c2s=MiB, s2c=MiB, closing=closing)
    check(run, closing)
    # the profile really did lose, duplicate and reorder
    stats = run.net.stats
    assert stats.dropped > 0 and stats.duplicated > 0 and stats.reordered > 0


def test_bandwidth_limited_small_queue_tail_drops() -> None:
    profile = LinkProfile(delay=0.02, bandwidth=1e6, queue_limit=20_000)
    run = transfer(1, profile, c2s=MiB, s2c=256 << 10, closing=Closing.CLIENT_FIRST)
    check(run, Closing.CLIENT_FIRST)
    assert run.net.stats.dropped_queue > 0
    assert run.client.conn is not None and run.client.conn.stats().segments_retransmitted > 0


def test_heavy_reordering() -> None:
    profile = LinkProfile(reorder=0.5, reorder_delay=0.03, delay=0.01, jitter=0.01,
                          duplicate=0.1)
    run = transfer(2, profile, c2s=MiB, s2c=MiB, closing=Closing.SERVER_FIRST)
    check(run, Closing.SERVER_FIRST)
    assert run.net.stats.reordered > 500
    assert run.server.conn is not None and run.server.conn.stats().ooo_segments_received > 0


@pytest.mark.parametrize("seed", range(3))
def test_thirty_percent_loss(seed: int) -> None:
    profile = LinkProfile(loss=0.30, duplicate=0.05, reorder=0.05, delay=0.005, jitter=0.002)
    closing = CLOSINGS[seed % len(CLOSINGS)]
    # Without timestamps, Karn's rule takes no RTT sample from retransmitted data, and after
    # go-back-N nearly everything is retransmitted: the backed-off RTO only collapses once
    # new data is acked. At 30 % loss it climbs to rto_max, so cap it to keep the run short.
    config = CFG.replace(rto_max=1.0)
    run = transfer(seed, profile, c2s=128 << 10, s2c=128 << 10, closing=closing,
                   config=config)
    check(run, closing)
    assert run.net.stats.dropped > 100


def test_jumbo_mss_under_mtu() -> None:
    mss = 8960
    config = CFG.replace(mss=mss)
    # 20-byte header + 8960 payload fits exactly; the MSS option keeps every segment under
    profile = LinkProfile(loss=0.02, delay=0.005, mtu=20 + mss)
    run = transfer(3, profile, c2s=4 * MiB, s2c=MiB, closing=Closing.BOTH, config=config)
    check(run, Closing.BOTH)
    assert run.net.stats.dropped_mtu == 0
    for side in (run.client, run.server):
        assert side.conn is not None and side.conn.snd_mss == mss
    # far fewer segments than with 1400-byte ones
    assert run.client.conn is not None and run.client.conn.stats().segments_sent < 4 * MiB // 1400


def test_peer_smaller_mss_is_respected_under_mtu() -> None:
    # the client would send 8960 bytes, but the server's SYN says 1400 and the link says so too
    profile = LinkProfile(loss=0.02, delay=0.005, mtu=20 + 1400 + 40)
    run = transfer(4, profile, c2s=MiB, s2c=MiB, closing=Closing.CLIENT_FIRST,
                   config=CFG.replace(mss=8960), server_config=CFG)
    check(run, Closing.CLIENT_FIRST)
    assert run.net.stats.dropped_mtu == 0
    assert run.client.conn is not None and run.client.conn.snd_mss == 1400


def test_slow_reader_window_closes_and_reopens() -> None:
    # 64 KiB of receive buffer, drained 16 KiB every 50 ms: the sender outruns the reader,
    # the window closes to zero, and it reopens each time the application reads.
    config = CFG.replace(recv_buffer=64 << 10)
    profile = LinkProfile(loss=0.02, duplicate=0.02, reorder=0.02, delay=0.005, jitter=0.002)
    run = transfer(5, profile, c2s=MiB, s2c=64 << 10, closing=Closing.CLIENT_FIRST,
                   config=config, read_every=0.05, read_chunk=16 << 10)
    check(run, Closing.CLIENT_FIRST)
    assert run.client.saw_zero_window
    # 1 MiB at 16 KiB per 50 ms takes at least 3.2 s: the reader, not the link, set the pace
    assert run.server.time_entered(S.CLOSE_WAIT) >= 3.0


def test_sequence_numbers_wrap_mid_transfer() -> None:
    # both ISNs 300 kB below 2**32: every comparison must be modular (RFC 9293 §3.4)
    iss = (1 << 32) - 300_000
    run = transfer(6, LOSSY, c2s=MiB, s2c=MiB, closing=Closing.BOTH, iss=iss)
    check(run, Closing.BOTH)
    for side in (run.client, run.server):
        assert side.conn is not None and side.conn.iss == iss
        assert side.conn.snd_una > 1 << 32  # unwrapped: it went past the wrap


def test_pure_ack_after_a_timeout_rewind_is_not_old() -> None:
    """Regression: after an RTO rewinds snd_nxt (go-back-N), a pure ACK must still carry
    snd_max. With snd_nxt, a peer that had received everything dropped each such ACK as
    old (seq < rcv_nxt), ACK field and all; with both sides rewound, each retransmission
    was old for the other and each answer to it too, and the connection deadlocked
    (seed 0 of the lossy test found it). Without SACK: with it, a timeout resends what
    RACK calls lost and does not rewind."""
    config = CFG.replace(sack=False)
    net = Network(0, LinkProfile(delay=0.01))
    server_ep = Endpoint(config, SERVER[1], listening=True, rng=random.Random(1))
    client_ep = Endpoint(config, CLIENT[1], rng=random.Random(2))
    net.add(SERVER, server_ep)
    net.add(CLIENT, client_ep)
    c = client_ep.connect(SERVER, net.now)
    net.run(until=1.0, stop=lambda: c.state == S.ESTABLISHED and bool(server_ep.accept_queue))
    s = server_ep.accept()
    assert s is not None
    # both send at once; all the data arrives, every pure ACK is lost: both RTOs rewind
    net.filter = lambda data, src, dst, now: bool(wire.parse(data).payload)
    c.send(bytes(10 * 1400))
    s.send(bytes(10 * 1400))
    net.run(until=net.now + 1.0, stop=lambda: c.stats().timeouts > 0 and s.stats().timeouts > 0)
    for a, b in ((c, s), (s, c)):
        assert a.snd_nxt < a.snd_max == b.rcv_nxt  # rewound, and the peer has it all
    # ACKs flow again: each side's answer to the other's (old) retransmission must count
    pure_acks: list[tuple[Address, wire.Segment]] = []

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seg = wire.parse(data)
        if not seg.payload:
            pure_acks.append((src, seg))
        return True

    net.filter = tap
    net.run(until=net.now + 1.0, stop=lambda: c.snd_una == c.snd_max and s.snd_una == s.snd_max)
    assert c.snd_una == c.snd_max and s.snd_una == s.snd_max
    assert pure_acks
    for src, seg in pure_acks:
        sender = c if src == CLIENT else s
        assert seg.seq == sq.wrap(sender.snd_max)
