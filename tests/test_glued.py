"""A UDP GRO read through `Endpoint.receive_glued`: the same stream as datagram by datagram.

The port hands the core one buffer of datagrams glued at a segment size; a run of
in-order data whose headers differ only in the sequence number goes through the
connection as one segment (`wire.glued_run`, `wire.parse_run`). These tests hold the
merge to the per-datagram path: two identical servers, one fed the glued buffer, one fed
its datagrams one by one, must end with the same bytes delivered, the same sequence
state and the same counters, whatever the datagrams are (gaps, duplicates, a changed
ACK, window or timestamp, PSH, FIN, SACK options, a short last one).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from utcp import seq as sq
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.sender import CHALLENGE_ACK_LIMIT
from utcp.state import State

SERVER = ("127.0.0.1", 5000)
CLIENT = ("127.0.0.1", 6000)
CFG = Config(pmtu_probing=False)
MSS = 1000
STEP = MSS + 32  # a datagram with the timestamps-only header


class Twins:
    """A client and two servers that saw the same handshake, so that the servers are
    identical: `glued` gets the buffer whole, `single` its datagrams one by one."""

    def __init__(self, server_config: Config = CFG) -> None:
        self.now = 0.0
        self.client = Endpoint(CFG, CLIENT[1], rng=random.Random(2))
        self.glued = Endpoint(server_config, SERVER[1], listening=True, rng=random.Random(1))
        self.single = Endpoint(server_config, SERVER[1], listening=True, rng=random.Random(1))
        conn = self.client.connect(SERVER, self.now)
        for _ in range(4):
            self.now += 0.001
            for ep in (self.client, self.glued, self.single):
                deadline = ep.get_timer()
                if deadline is not None and deadline <= self.now:
                    ep.handle_timer(self.now)
            for data, _ in self.client.datagrams_to_send(self.now):
                self.glued.receive_datagram(data, CLIENT, self.now)
                self.single.receive_datagram(data, CLIENT, self.now)
            replies = self.glued.datagrams_to_send(self.now)
            assert replies == self.single.datagrams_to_send(self.now)
            for data, _ in replies:
                self.client.receive_datagram(data, SERVER, self.now)
        assert conn.state is State.ESTABLISHED
        a, b = self.glued.accept(), self.single.accept()
        assert a is not None and b is not None
        self.a: Connection = a
        self.b: Connection = b
        assert a.ts.ok and a.snd_wnd > 0

    def datagram(self, offset: int, size: int, *, flags: int = wire.ACK, ack_delta: int = 0,
                 window: int = 4000, ts_delta: int = 0, sack: bool = False) -> bytes:
        """A data segment from the client, `offset` bytes past the servers' rcv_nxt."""
        conn = self.a
        payload = bytes((offset + i) % 251 for i in range(size))
        seq = (conn.rcv_nxt + offset) & sq.MASK
        ack = (conn.snd_nxt + ack_delta) & sq.MASK
        tsval = (conn.ts.recent + 1 + ts_delta) & sq.MASK
        if not sack:
            return wire.build_ts(CLIENT[1], SERVER[1], seq, ack, flags, window, tsval, 0,
                                 payload)
        opts = wire.Options(timestamps=(tsval, 0), sack=((1, 2),))
        return wire.build(wire.Segment(CLIENT[1], SERVER[1], seq, ack, flags, window,
                                       payload, opts))

    def both(self, datagram: bytes) -> None:
        """One datagram alone, to both servers (a state they share before a glued read)."""
        self.glued.receive_datagram(datagram, CLIENT, self.now)
        self.single.receive_datagram(datagram, CLIENT, self.now)

    def replies(self) -> tuple[list[wire.Segment], list[wire.Segment]]:
        return acks(self.glued.datagrams_to_send(self.now)), acks(
            self.single.datagrams_to_send(self.now))

    def feed(self, datagrams: list[bytes], step: int) -> None:
        """As a GRO read would: every datagram but the last exactly `step` bytes."""
        self.now += 0.001
        buffer = memoryview(bytearray(b"".join(datagrams) + b"\xee" * 64))  # stale tail
        n = sum(map(len, datagrams))
        self.glued.receive_glued(buffer[:n], step, CLIENT, self.now)
        for data in datagrams:
            self.single.receive_datagram(data, CLIENT, self.now)

    def read(self, conn: Connection) -> bytes:
        chunks = []
        while data := conn.read_pieces(1 << 20):
            chunks.append(data)
        return b"".join(chunks)

    def assert_same(self) -> tuple[bytes, bytes]:
        a, b = self.a, self.b
        got_a, got_b = self.read(a), self.read(b)
        assert got_a == got_b
        assert (a.state, a.rcv_nxt, a.snd_una, a.snd_wnd, a.ts.recent, a.eof_received) == (
            b.state, b.rcv_nxt, b.snd_una, b.snd_wnd, b.ts.recent, b.eof_received)
        assert a.counters.segments_received == b.counters.segments_received
        assert a.counters.bytes_received == b.counters.bytes_received
        assert a.counters.ooo_segments_received == b.counters.ooo_segments_received
        return got_a, got_b


def acks(out: list[tuple[bytes, object]]) -> list[wire.Segment]:
    return [wire.parse(d) for d, _ in out]


def test_in_order_run_is_one_segment_and_is_acknowledged_at_once() -> None:
    t = Twins()
    datagrams = [t.datagram(i * MSS, MSS) for i in range(8)]
    t.feed(datagrams, STEP)
    # one segment through the connection: its payload is one piece of the buffer
    assert [len(p) for p in t.a.rcv.pieces] == [8 * MSS]
    assert [len(p) for p in t.b.rcv.pieces] == [MSS] * 8
    got, _ = t.assert_same()
    assert got == bytes(i % 251 for i in range(8 * MSS))
    # two full-sized segments or more: an ACK now, not after the delayed-ACK timer
    (ack,) = acks(t.glued.datagrams_to_send(t.now))
    assert ack.ack == t.a.rcv_nxt & sq.MASK and not ack.payload


def test_short_last_datagram_ends_the_run_inside_it() -> None:
    t = Twins()
    datagrams = [t.datagram(0, MSS), t.datagram(MSS, MSS), t.datagram(2 * MSS, 300)]
    t.feed(datagrams, STEP)
    got, _ = t.assert_same()
    assert len(got) == 2 * MSS + 300


def test_stale_bytes_past_the_read_are_never_taken() -> None:
    """The shared receive buffer holds an older, longer read beyond this one's end."""
    t = Twins()
    datagrams = [t.datagram(0, MSS), t.datagram(MSS, MSS)]
    t.feed(datagrams, STEP)
    got, _ = t.assert_same()
    assert got == bytes(i % 251 for i in range(2 * MSS))


def test_what_ends_a_run() -> None:
    """Each variant breaks the run where it stands; the bytes are the per-datagram ones."""
    variants = [
        {"flags": wire.ACK | wire.FIN},
        {"ack_delta": -1},
        {"window": 3000},
        {"ts_delta": 1},
        {"sack": True},
        {"flags": wire.ACK | wire.URG},
    ]
    for variant in variants:
        t = Twins()
        size = MSS if not variant.get("sack") else MSS - 12  # same datagram size: glued
        datagrams = [t.datagram(0, MSS), t.datagram(MSS, MSS),
                     t.datagram(2 * MSS, size, **variant),  # type: ignore[arg-type]
                     t.datagram(2 * MSS + size, MSS)]
        assert all(len(d) == STEP for d in datagrams)
        start = t.a.rcv_nxt & sq.MASK
        n = 4 * STEP
        buffer = b"".join(datagrams)
        assert wire.glued_run(buffer, 0, STEP, n, start, 1 << 30) == 2 * STEP, variant
        t.feed(datagrams, STEP)
        t.assert_same()


def test_psh_does_not_end_a_run_and_is_kept() -> None:
    t = Twins()
    datagrams = [t.datagram(0, MSS), t.datagram(MSS, MSS, flags=wire.ACK | wire.PSH),
                 t.datagram(2 * MSS, MSS)]
    buffer = b"".join(datagrams)
    start = t.a.rcv_nxt & sq.MASK
    assert wire.glued_run(buffer, 0, STEP, len(buffer), start, 1 << 30) == len(buffer)
    seg = wire.parse_run(buffer, 0, len(buffer), STEP)
    assert seg.flags == wire.ACK | wire.PSH and len(seg.payload) == 3 * MSS
    t.feed(datagrams, STEP)
    t.assert_same()


def test_a_run_past_a_hole_is_left_to_the_per_datagram_path() -> None:
    """Out-of-order data keeps its duplicate ACK per datagram (the sender counts them)."""
    t = Twins()
    datagrams = [t.datagram(MSS * (i + 1), MSS) for i in range(4)]  # the first is lost
    buffer = b"".join(datagrams)
    assert wire.glued_run(buffer, 0, STEP, len(buffer), t.a.rcv_nxt & sq.MASK, 1 << 30) == STEP
    t.feed(datagrams, STEP)
    t.assert_same()
    assert len(t.glued.datagrams_to_send(t.now)) == len(t.single.datagrams_to_send(t.now))


def test_glued_runs_across_a_transfer_deliver_the_stream() -> None:
    """Several reads in a row, each glued: what arrives is the stream, in order."""
    t = Twins()
    offset = 0
    expected = b""
    for count in (3, 1, 5, 2):
        datagrams = [t.datagram(offset + i * MSS, MSS) for i in range(count)]
        expected += b"".join(d[32:] for d in datagrams)
        offset = 0  # datagram() counts from rcv_nxt, which moves with each read
        t.feed(datagrams, STEP)
        t.assert_same()
        t.glued.datagrams_to_send(t.now)
        t.single.datagrams_to_send(t.now)
    assert t.a.counters.bytes_received == len(expected)


kinds = st.sampled_from(["next", "next", "next", "gap", "dup", "fin", "ack", "win", "ts",
                         "psh", "sack"])


@settings(max_examples=200, deadline=None)
@given(st.lists(kinds, min_size=1, max_size=12), st.integers(1, MSS),
       st.sampled_from(["none", "held piece", "held fin"]))
def test_any_glued_read_equals_its_datagrams_one_by_one(kinds_: list[str], last: int,
                                                        before: str) -> None:
    t = Twins()
    if before == "held piece":  # out of order, held by both before the read
        t.both(t.datagram(3 * MSS, MSS))
    elif before == "held fin":
        t.both(t.datagram(4 * MSS, 0, flags=wire.ACK | wire.FIN))
    t.replies()
    datagrams = []
    offset = 0
    for i, kind in enumerate(kinds_):
        size = last if i == len(kinds_) - 1 else MSS
        if kind == "sack":
            size = min(size, MSS - 12)  # the SACK block's 12 bytes: same datagram size
        at = offset
        if kind == "gap":
            at += MSS
        elif kind == "dup":
            at = max(offset - MSS, 0)
        options = {"fin": {"flags": wire.ACK | wire.FIN}, "ack": {"ack_delta": -1},
                   "win": {"window": 3000}, "ts": {"ts_delta": 1},
                   "psh": {"flags": wire.ACK | wire.PSH}, "sack": {"sack": True},
                   }.get(kind, {})
        datagrams.append(t.datagram(at, size, **options))  # type: ignore[arg-type]
        offset = at + size
    step = len(datagrams[0])
    if any(len(d) != step for d in datagrams[:-1]) or len(datagrams[-1]) > step:
        # not what GRO glues: cut where the sizes change, as separate reads
        groups: list[list[bytes]] = [[]]
        for d in datagrams:
            if groups[-1] and (len(d) > len(groups[-1][0])
                               or len(groups[-1][-1]) != len(groups[-1][0])):
                groups.append([])
            groups[-1].append(d)
    else:
        groups = [datagrams]
    for group in groups:
        t.feed(group, len(group[0]))
        t.assert_same()
        glued, single = t.replies()
        assert (glued == []) == (single == [])
        # the last reply says the same: flags, ACK, SACK and D-SACK blocks
        assert [(s.flags, s.ack, s.options.sack) for s in glued[-1:]] == [
            (s.flags, s.ack, s.options.sack) for s in single[-1:]]


# Where header prediction would not take each datagram, the per-datagram path decides
# (found by review: each of these differed while runs were merged there too).


def test_under_memory_pressure_the_datagrams_that_fit_are_taken() -> None:
    """The endpoint's memory budget spent by others: each datagram is admitted on its
    own (under the connection's floor), not a whole run refused at once."""
    t = Twins(Config(pmtu_probing=False, max_buffer_memory=1 << 20))
    for i in range(30):  # 30 KB in order, unread: the application is slow
        t.both(t.datagram(i * MSS, MSS))
    t.replies()
    for ep in (t.glued, t.single):
        assert ep.memory is not None
        ep.memory.used = ep.memory.limit
    t.feed([t.datagram(i * MSS, MSS) for i in range(34)], STEP)
    got, _ = t.assert_same()
    assert len(got) > 30 * MSS  # some of the 34 fit, as one by one


def test_a_run_over_pieces_already_held_reports_the_duplicate() -> None:
    """A go-back-N resend covering out-of-order pieces we hold: the ACK carries the
    D-SACK block for them (RFC 2883), as datagram by datagram."""
    t = Twins()
    t.both(t.datagram(MSS, MSS))
    t.both(t.datagram(2 * MSS, MSS))
    t.replies()
    t.feed([t.datagram(i * MSS, MSS) for i in range(4)], STEP)
    t.assert_same()
    glued, single = t.replies()
    assert [s.options.sack for s in glued] == [s.options.sack for s in single]
    assert any(s.options.sack for s in glued)


def test_a_run_across_a_held_fin_ends_as_one_by_one() -> None:
    t = Twins()
    t.both(t.datagram(2 * MSS, 0, flags=wire.ACK | wire.FIN))  # held: a hole before it
    t.replies()
    t.feed([t.datagram(i * MSS, MSS) for i in range(3)], STEP)
    t.assert_same()
    glued, single = t.replies()
    assert [s.flags for s in glued] == [s.flags for s in single]


def test_refused_runs_stay_within_the_challenge_ack_limit() -> None:
    """Runs that acknowledge data never sent draw challenge ACKs (RFC 5961 §5), at most
    so many a second: the run path adds no ACK of its own to a segment it refused."""
    t = Twins()
    sent = [0, 0]
    for _ in range(150):
        t.feed([t.datagram(i * MSS, MSS, ack_delta=5000) for i in range(3)], STEP)
        t.now -= 0.0009  # all within one second
        glued, single = t.replies()
        sent[0] += len(glued)
        sent[1] += len(single)
    # one challenge per run where one by one counts one per datagram: within the limit
    assert sent[1] <= sent[0] <= CHALLENGE_ACK_LIMIT < 150


def test_a_step_of_zero_is_one_datagram() -> None:
    t = Twins()
    datagram = t.datagram(0, MSS)
    t.glued.receive_glued(memoryview(datagram), 0, CLIENT, t.now)
    t.single.receive_datagram(datagram, CLIENT, t.now)
    t.assert_same()


def test_a_run_stops_at_the_window_offered() -> None:
    """Header prediction takes a datagram only within the window we offered: the run
    ends at the last datagram that fits, and what follows goes one by one (dropped as
    out of the window, and acknowledged), as datagram by datagram."""
    t = Twins()
    room = t.a.rcv_adv - t.a.rcv_nxt
    fits = room // MSS
    assert 2 <= fits < 100
    t.feed([t.datagram(i * MSS, MSS) for i in range(fits + 3)], STEP)
    assert [len(p) for p in t.a.rcv.pieces][:1] == [fits * MSS]  # one run, cut at the edge
    got, _ = t.assert_same()
    assert len(got) == room  # what the window held: the next datagram's head, trimmed
