"""A hostile peer must not buy CPU or memory out of proportion to what it sends.

Both endpoints of a connection share one event loop with every other connection of the
process, so work that grows with what a peer has piled up, paid again on each of its
datagrams, stalls them all (a peer sending 20 kB/s of one-byte pieces held a server's
loop for seconds at a time).

- Out-of-order pieces: the SACK blocks of each ACK come from the merged ranges the
  receive buffer keeps as pieces arrive, not from a walk of up to thousands of pieces.
- The sender's SACK scoreboard: ranges of a byte each, all inside the flight, grew it to
  half the flight in ranges; it now holds at most about one per segment in flight.
- In-order segments of a byte each were held as an object each (about 65 bytes of
  memory, and of the endpoint's budget, per byte of window); small pieces are glued.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import utcp
from tests.script import Script
from utcp import sack, wire
from utcp.buffers import ReceiveBuffer
from utcp.config import Config
from utcp.connection import Connection

PEER_ISN = 5000
ISN = 1000
CONFIG = Config(pmtu_probing=False, mss=1400, timestamps=False)  # 4 SACK blocks an ACK


def accepted(config: Config = CONFIG) -> tuple[Script, Connection]:
    """A server endpoint with one established connection, the peer played by hand."""
    s = Script(config, listening=True, isns=(ISN,))
    s.inject("S", PEER_ISN, options=wire.Options(mss=1400, wscale=7, sack_permitted=True))
    s.expect("S.", seq=ISN, ack=PEER_ISN + 1)
    s.inject(".", PEER_ISN + 1, ISN + 1, window=65535)  # scaled by 7: 8 MiB
    return s, s.ep.connections[s.peer]


def test_one_byte_sack_blocks_do_not_grow_the_scoreboard_past_the_flight() -> None:
    s, conn = accepted()
    conn.send(b"x" * (4 << 20))
    s.app()
    una = ISN + 1
    for _ in range(30):  # slow start on a fake clock, until a few hundred KB fly
        s.advance(0.02)
        ends = [sent.seg.seq + len(sent.seg.payload) for sent in s.sent]
        s.sent.clear()
        if conn.snd_max - una > 300_000:
            break
        for end in ends:
            s.inject(".", PEER_ISN + 1, end, window=65535, flush=False)
            una = max(una, end)
        s.app()
    s.sent.clear()
    flight = conn.snd_max - conn.snd_una
    assert flight > 300_000
    x = conn.snd_una + 2
    for _ in range(2000):  # 8,000 one-byte blocks, all inside the flight
        blocks = []
        for _ in range(4):
            blocks.append((x & 0xFFFFFFFF, (x + 1) & 0xFFFFFFFF))
            x += 2
        s.inject(".", PEER_ISN + 1, conn.snd_una, window=65535,
                 options=wire.Options(sack=tuple(blocks)), flush=False)
    s.app()
    assert conn.state is utcp.State.ESTABLISHED
    ranges = len(conn.recovery.scoreboard.starts)
    segments = conn.recovery.rack.in_flight()
    assert 0 < ranges <= 2 * segments + 16 < 8000 // 4, (ranges, segments)


@pytest.mark.parametrize("write", [1 << 20, 100])
def test_a_legitimate_receivers_blocks_are_all_taken(write: int) -> None:
    """The bound leaves room for every block a receiver can mean: one range per
    segment it holds past a hole, every other segment of the flight lost; also when
    the segments are short (an application's small writes go one a segment)."""
    s, conn = accepted()
    for _ in range(max(1, 13_000 // write)):
        conn.send(b"y" * write)
        s.app()
    s.advance(0.02)
    segs = [(sent.seg.seq, sent.seg.seq + len(sent.seg.payload)) for sent in s.sent]
    s.sent.clear()
    assert len(segs) >= 8
    held = segs[1::2]  # every other one arrived
    for k in range(0, len(held), 4):
        s.inject(".", PEER_ISN + 1, ISN + 1, window=65535,
                 options=wire.Options(sack=tuple(held[k:k + 4])), flush=False)
    assert len(conn.recovery.scoreboard.starts) == len(held)


def _lines_run(call: Callable[[], Any]) -> int:
    """Python lines executed by `call` (the pure build's work, counted, not timed)."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.skipif(utcp.compiled, reason="counts the lines Python runs: the compiled core"
                    " runs none")
def test_an_out_of_order_piece_costs_the_same_with_thousands_held() -> None:
    s, conn = accepted()
    next_seq = PEER_ISN + 1

    def piece(k: int) -> Callable[[], None]:
        # one byte at every other place past a hole at rcv_nxt
        return lambda: s.inject(".", next_seq + 2 * k, ISN + 1, window=65535,
                                payload=b"p")

    for k in range(1, 51):
        piece(k)()
    few = _lines_run(piece(51))
    for k in range(52, 3001):
        piece(k)()
    assert len(conn.rcv.ooo) == 3000
    many = _lines_run(piece(3001))
    sent = s.sent[-1].seg
    assert sent.options.sack is not None and sent.options.sack[0] == (
        (next_seq + 6002) & 0xFFFFFFFF, (next_seq + 6003) & 0xFFFFFFFF)
    assert many < few + 100, (few, many)  # was thousands more: a walk of every piece


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 12), st.booleans()),
                max_size=60))
def test_the_held_ranges_are_the_pieces_merged(ops: list[tuple[int, int, bool]]) -> None:
    buf = ReceiveBuffer()
    rcv_nxt = 0
    for start, size, drain in ops:
        if drain:
            rcv_nxt = buf.drain(max(rcv_nxt, start))
            continue
        seq = rcv_nxt + 1 + start
        data = bytes(size)
        i, known = buf.find_ooo(seq, data)
        if not known:
            buf.insert_ooo(i, seq, data, 0)
        merged: list[tuple[int, int]] = []
        for begin, piece in buf.ooo:
            end = begin + len(piece)
            if merged and begin <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((begin, end))
        assert list(zip(buf.held.starts, buf.held.ends, strict=True)) == merged
        assert sack.receiver_blocks(buf.held, seq, 4)[0] == next(
            b for b in merged if b[0] <= seq < b[1])


def test_one_byte_segments_in_order_are_held_as_their_bytes_not_as_objects() -> None:
    s, conn = accepted()
    sent = bytes(range(256)) * 80  # 20,480 one-byte segments, none read yet
    for k, byte in enumerate(sent):
        s.inject(".", PEER_ISN + 1 + k, ISN + 1, window=65535, payload=bytes((byte,)),
                 flush=False)
    s.app()
    assert conn.rcv.size == len(sent)
    assert len(conn.rcv.pieces) == 1  # was 20,480, each an object and a deque slot
    assert conn.memory_budget is not None and conn.charged < 2 * len(sent)
    assert conn.read(1000) == sent[:1000]  # a read in part, then more glued behind it
    for k in range(3):
        s.inject(".", PEER_ISN + 1 + len(sent) + k, ISN + 1, window=65535,
                 payload=b"xyz"[k:k + 1], flush=False)
    assert conn.read(-1) == sent[1000:] + b"xyz"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=700), st.integers(-1, 900)),
                max_size=80))
def test_glued_pieces_read_back_exactly(steps: list[bytes | int]) -> None:
    buf = ReceiveBuffer()
    model = bytearray()
    for step in steps:
        if isinstance(step, bytes):
            buf.append(step)
            model += step
        else:
            take = buf.read_pieces(step) if step > 0 else buf.read(step)
            assert type(take) is bytes and take == bytes(model[:len(take)])
            assert len(take) == (len(model) if step < 0 else min(step, len(model)))
            del model[:len(take)]
        assert buf.size == len(model)
    assert buf.read(-1) == bytes(model)
