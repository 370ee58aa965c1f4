"""The per-segment cuts of issue #13 keep what goes on the wire and what a connection
does identical: the one-pack timestamps encoder and parser against the general ones,
and a data segment's cost counted in Python calls (deterministic, unlike time)."""

from __future__ import annotations

import random
import sys
from types import FrameType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utcp import wire
from utcp.config import Config
from utcp.endpoint import Endpoint
from utcp.state import State

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@given(u16, u16, u32, u32, st.integers(0, 0xFF), u16, u32, u32, st.binary(max_size=64))
def test_build_ts_is_build_with_the_timestamps_option(
        src: int, dst: int, seq: int, ack: int, flags: int, window: int, tsval: int,
        tsecr: int, payload: bytes) -> None:
    seg = wire.Segment(src, dst, seq, ack, flags, window, payload,
                       wire.Options(timestamps=(tsval, tsecr)))
    assert wire.build_ts(src, dst, seq, ack, flags, window, tsval, tsecr,
                         payload) == wire.build(seg)
    assert wire.build_ts(src, dst, seq, ack, flags, window, tsval, tsecr,
                         memoryview(payload)) == wire.build(seg)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@given(u32, u32, st.integers(0, 0xFF), u16, u32, u32, st.binary(max_size=64))
def test_parse_of_the_timestamps_layout(kind: Any, seq: int, ack: int, flags: int,
                                        window: int, tsval: int, tsecr: int,
                                        payload: bytes) -> None:
    data = wire.build_ts(1, 2, seq, ack, flags, window, tsval, tsecr, payload)
    seg = wire.parse(kind(data))
    assert (seg.seq, seg.ack, seg.flags, seg.window) == (seq, ack, flags, window)
    assert seg.options == wire.Options(timestamps=(tsval, tsecr))
    assert bytes(seg.payload) == payload
    # bytes are sliced, a buffer is viewed, no payload is b"" (as the general path)
    if not payload:
        assert seg.payload == b"" and isinstance(seg.payload, bytes)
    else:
        assert isinstance(seg.payload, bytes if kind is bytes else memoryview)


def test_reserved_bits_take_the_general_path() -> None:
    data = bytearray(wire.build_ts(1, 2, 3, 4, wire.ACK, 5, 6, 7, b"xy"))
    data[12] |= 0x0F  # reserved bits set: the data offset is still 8 words
    seg = wire.parse(bytes(data))
    assert seg.options.timestamps == (6, 7) and seg.payload == b"xy"


def _pair(config: Config) -> tuple[Endpoint, Endpoint, Any, Any]:
    server = Endpoint(config, 5000, listening=True, rng=random.Random(1))
    client = Endpoint(config, 6000, rng=random.Random(2))
    conn = client.connect(("127.0.0.1", 5000), 0.0)
    for _ in range(4):
        for d, _a in client.datagrams_to_send(0.0):
            server.receive_datagram(d, ("127.0.0.1", 6000), 0.0)
        for d, _a in server.datagrams_to_send(0.0):
            client.receive_datagram(d, ("127.0.0.1", 5000), 0.0)
        for ep in (client, server):
            deadline = ep.get_timer()
            if deadline is not None and deadline <= 0.0:
                ep.handle_timer(0.0)
    peer = server.accept()
    assert conn.state is State.ESTABLISHED and peer is not None
    return client, server, conn, peer


def test_fast_path_rearms_keepalive_and_idle() -> None:
    """Header prediction does what Connection.heard and last_activity did."""
    client, server, conn, peer = _pair(Config(idle_timeout=30.0, keepalive_interval=7.0))
    peer.sender.keepalive_sent = 2
    conn.send(b"x" * 100)
    for d, _a in client.datagrams_to_send(1.0):
        server.receive_datagram(d, ("127.0.0.1", 6000), 1.0)
    assert peer.counters.bytes_received == 100
    pending = {t.name: at for t, at in peer.timers.pending().items()}
    assert pending["KEEPALIVE"] == 8.0 and pending["IDLE"] == 31.0
    assert peer.sender.keepalive_sent == 0


@pytest.mark.skipif(not wire.__file__.endswith(".py"), reason="counts interpreted calls")
def test_python_calls_per_data_segment() -> None:
    """The work per data segment, both ends, in Python function calls: a cut that is
    undone (an option encoded apart, a helper called twice) shows here first."""
    client, server, conn, _peer = _pair(Config())
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    conn.send(b"x" * 1000 * 20)
    sys.setprofile(count)
    try:
        out = client.datagrams_to_send(1.0)
        for d, _a in out:
            server.receive_datagram(d, ("127.0.0.1", 6000), 1.0)
    finally:
        sys.setprofile(None)
    assert len(out) == 10  # the initial window
    # 41.3 per segment before the cuts (send and receive side); 29.1 after
    assert calls / len(out) < 31, calls / len(out)


@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 200_000), st.sampled_from([bytes, bytearray,
                                                                          memoryview])),
    st.tuples(st.just("free"), st.integers(0, 300_000), st.just(bytes)),
    st.tuples(st.just("view"), st.integers(0, 300_000), st.integers(1, 9000)),
), max_size=40))
def test_send_buffer_is_the_bytearray_it_replaced(ops: list[tuple[str, int, Any]]) -> None:
    """Chunks behave exactly as one bytearray freed from the front (the old model)."""
    from utcp.buffers import SendBuffer
    buf = SendBuffer(base=1000)
    model = bytearray()
    base = 1000
    counter = 0
    for op, a, b in ops:
        if op == "append":
            counter += 1
            data = bytes([counter % 251]) * a
            buf.append(b(data))
            model += data
        elif op == "free":
            ack = base + a
            n = max(0, min(ack, base + len(model)) - base)
            assert buf.free(ack) == n
            del model[:n]
            base += n
        elif model:
            seq = base + a % len(model)
            n = min(b, base + len(model) - seq)
            assert bytes(buf.view(seq, n)) == model[seq - base:seq - base + n]
        assert buf.base == base and buf.end == base + len(model)
        assert buf.size == len(model) and buf.data == model


def test_a_large_write_is_sent_from_the_application_bytes() -> None:
    """No copy in: a segment's payload views the bytes the application gave."""
    from utcp.buffers import SendBuffer
    big = bytes(range(256)) * 1024
    buf = SendBuffer(base=1)
    buf.append(big)
    view = buf.view(1 + 5000, 1400)
    assert isinstance(view, memoryview) and view.obj is big
    assert buf.free(1 + 100_000) == 100_000 and bytes(buf.view(100_001, 10)) == big[100_000:100_010]


def _ping_pong(client: Endpoint, server: Endpoint, conn: Any, peer: Any, rounds: int,
               check: Any = None) -> None:
    """`rounds` request/response exchanges on a clock that moves 1 ms a step, serving
    timers as they fall due; `check(now)` runs after every step."""
    now = 1.0
    for _ in range(rounds):
        for sender, receiver, ends, src in ((conn, peer, (client, server), 6000),
                                            (peer, conn, (server, client), 5000)):
            sender.send(b"p" * 64)
            for d, _a in ends[0].datagrams_to_send(now):
                ends[1].receive_datagram(d, ("127.0.0.1", src), now)
            ends[1].datagrams_to_send(now)
            assert receiver.read() == b"p" * 64
            now += 0.001
            for ep in (client, server):
                deadline = ep.get_timer()
                if deadline is not None and deadline <= now:
                    ep.handle_timer(now)
                    ep.datagrams_to_send(now)
            if check is not None:
                check(now)


def test_endpoint_deadline_is_exact_at_every_step() -> None:
    """What the endpoint reports is each connection's own earliest deadline, exactly, at
    every step of an exchange whose every segment moves one (a sans-IO caller may sleep
    until it, and scripts jump the clock to it)."""
    client, server, conn, peer = _pair(Config())

    def check(now: float) -> None:
        for ep, c in ((client, conn), (server, peer)):
            assert ep.get_timer() == c.get_timer()

    _ping_pong(client, server, conn, peer, 300, check)



def test_what_is_made_per_segment_or_connection_is_native_when_compiled() -> None:
    """A dataclass compiled by mypyc keeps the Python `__init__` the dataclasses module
    writes (a call into the interpreter per object), and an enum of an interpreted module
    is looked up through `EnumType.__getattr__` at each use: neither on the hot path."""
    import dataclasses
    import types

    import utcp
    from utcp import rack, state, timers
    from utcp.stats import Counters
    for cls in (wire.Segment, wire.Options, rack.Segment, Counters):
        assert not dataclasses.is_dataclass(cls), cls
        if utcp.compiled:
            assert not isinstance(cls.__init__, types.FunctionType), cls
    if utcp.compiled:
        for module in (state, timers, wire):
            assert not (module.__file__ or "").endswith(".py"), module


def test_stale_deadlines_do_not_pile_up_in_the_timer_heap() -> None:
    """In a ping-pong the client's deadline is the RTO while its request is out and the
    delayed ACK once the response is in: each is filed, and the RTO entry it replaces
    stays behind the live one, stale, until time reaches it. A caller that asks for the
    deadline once per round (as an event loop does after each wake-up) never pops them:
    200 ms of RTO piled up a thousand at loopback speed, and every push and pop paid for
    the depth. The heap stays within a small multiple of the live entries."""
    from tests.peek import timer_heap_entries
    client, server, conn, peer = _pair(Config())
    now, most = 1.0, 0
    for _ in range(500):
        conn.send(b"p" * 64)
        for d, _a in client.datagrams_to_send(now):
            server.receive_datagram(d, ("127.0.0.1", 6000), now)
        server.datagrams_to_send(now)
        peer.send(peer.read())
        for d, _a in server.datagrams_to_send(now):
            client.receive_datagram(d, ("127.0.0.1", 5000), now)
        client.datagrams_to_send(now)
        assert conn.read() == b"p" * 64
        now += 20e-6  # a loopback round trip: 200 ms of RTO spans 10,000 rounds
        for ep in (client, server):
            deadline = ep.get_timer()
            assert deadline is not None and deadline > now
        most = max(most, timer_heap_entries(client), timer_heap_entries(server))
    assert most <= 2 * 1 + 16, most


def test_a_lone_connections_deadlines_push_nothing_and_a_second_one_rebuilds() -> None:
    """One connection's deadline is read from the endpoint's table of armed deadlines: a
    ping-pong pushes nothing on the heap. When a second connection arms, the heap is
    built from the table, and the endpoint's deadline stays the earliest of its
    connections', exactly, as they come and go (one, two, one again, two again); back
    at one, the heap keeps no stale entry (each held a connection that is gone)."""
    from tests.peek import timer_heap_entries
    client, server, conn, peer = _pair(Config())
    _ping_pong(client, server, conn, peer, 50)
    assert timer_heap_entries(client) == 0 and timer_heap_entries(server) == 0

    def exact(now: float, conns: list[Any]) -> None:
        deadlines = [d for c in conns if (d := c.get_timer()) is not None]
        assert server.get_timer() == (min(deadlines) if deadlines else None), now

    now = 1.0
    # a second client: its SYN+ACK arms the server's second deadline, with the heap
    other = Endpoint(Config(), 6001, rng=random.Random(3))
    conn2 = other.connect(("127.0.0.1", 5000), now)
    for d, _a in other.datagrams_to_send(now):
        server.receive_datagram(d, ("127.0.0.1", 6001), now)
    server.datagrams_to_send(now)
    exact(now, [peer, *server.connections.values()])
    assert timer_heap_entries(server) >= 2
    # the first connection aborts: one deadline left, then the timers run out in order
    conn.abort()
    for d, _a in client.datagrams_to_send(now):
        server.receive_datagram(d, ("127.0.0.1", 6000), now)
    server.datagrams_to_send(now)
    left = list(server.connections.values())
    assert left and peer not in left
    exact(now, left)
    # one deadline left: the heap's stale entries (the gone connection's among them) go
    assert timer_heap_entries(server) == 0
    fired = 0
    while (deadline := server.get_timer()) is not None and fired < 20:
        now = deadline
        server.handle_timer(now)  # the SYN+ACK's retransmissions, then it gives up
        server.datagrams_to_send(now)
        exact(now, list(server.connections.values()))
        fired += 1
    assert server.get_timer() is None and not server.connections, fired
    assert conn2.state is State.SYN_SENT  # it never heard the SYN+ACKs
    # and again two: a fresh heap from the table
    for port in (6002, 6003):
        ep = Endpoint(Config(), port, rng=random.Random(port))
        ep.connect(("127.0.0.1", 5000), now)
        for d, _a in ep.datagrams_to_send(now):
            server.receive_datagram(d, ("127.0.0.1", port), now)
        server.datagrams_to_send(now)
        exact(now, list(server.connections.values()))
    assert len(server.connections) == 2


def test_send_buffer_views_in_order_across_many_chunks_and_their_compaction() -> None:
    """Segments cut in order start from the chunk the last one began in; freeing drops
    emptied chunks from the front now and then. Every view is still the stream's bytes,
    also a resend from behind and a view spanning two chunks."""
    from utcp.buffers import SendBuffer
    chunk = 70_000
    stream = b"".join(bytes([i % 251]) * chunk for i in range(100))
    buf = SendBuffer(base=1)
    for i in range(100):
        buf.append(stream[i * chunk:(i + 1) * chunk])
    seq = 1
    while seq < 1 + len(stream):
        n = min(1400, 1 + len(stream) - seq)
        assert bytes(buf.view(seq, n)) == stream[seq - 1:seq - 1 + n]
        if seq > 20_000:  # a retransmission from a little behind
            back = seq - 15_000
            assert bytes(buf.view(back, 1400)) == stream[back - 1:back - 1 + 1400]
        seq += n
        if seq % (chunk * 3) < 1400:
            buf.free(seq - 30_000)  # the front acknowledged, emptied chunks dropped
    assert buf.first < 40  # compacted on the way, not a list of 100 emptied chunks
