"""The timer table (utcp.timers), the buffers (utcp.buffers) and the recovery modes
(utcp.recovery) through their own interfaces; the connection's use of them is tested by
behaviour elsewhere."""

from __future__ import annotations

import array
import random

import pytest

from tests.netsim import LinkProfile, Network
from utcp.buffers import OOO_PIECE_OVERHEAD, ReassemblyBudget, ReceiveBuffer, SendBuffer
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.recovery import Mode
from utcp.sack import Scoreboard
from utcp.state import State
from utcp.timers import Timer, Timers


def test_a_fresh_table_has_nothing_armed() -> None:
    timers = Timers()
    assert timers.earliest() is None
    assert timers.pending() == {}
    assert not any(timers.due(t, 1e9) for t in Timer)


def test_arm_cancel_and_earliest() -> None:
    timers = Timers()
    timers.arm(Timer.KEEPALIVE, 30.0)
    timers.arm(Timer.RTX, 2.0)
    timers.arm(Timer.ACK, 2.5)
    assert timers.earliest() == 2.0
    assert timers.get(Timer.ACK) == 2.5 and timers.armed(Timer.ACK)
    timers.cancel(Timer.RTX)
    assert timers.earliest() == 2.5 and not timers.armed(Timer.RTX)
    timers.arm(Timer.ACK, 40.0)  # re-arming moves the deadline
    assert timers.earliest() == 30.0
    assert timers.pending() == {Timer.KEEPALIVE: 30.0, Timer.ACK: 40.0}


def test_arm_if_idle_keeps_a_running_timer() -> None:
    timers = Timers()
    timers.arm_if_idle(Timer.RTX, 5.0)
    timers.arm_if_idle(Timer.RTX, 1.0)
    assert timers.get(Timer.RTX) == 5.0


def test_due_is_at_or_after_the_deadline() -> None:
    timers = Timers()
    timers.arm(Timer.PERSIST, 3.0)
    assert not timers.due(Timer.PERSIST, 2.999)
    assert timers.due(Timer.PERSIST, 3.0) and timers.due(Timer.PERSIST, 10.0)


def test_cancel_all_leaves_none_armed() -> None:
    timers = Timers()
    for i, t in enumerate(Timer):
        timers.arm(t, float(i))
    assert len(timers.pending()) == len(Timer)
    timers.cancel_all()
    assert timers.pending() == {} and timers.earliest() is None


def test_priority_order_ends_before_it_sends() -> None:
    # the walk order is the enum's: what ends a connection comes before what sends on it
    order = list(Timer)
    assert order.index(Timer.TIME_WAIT) < order.index(Timer.RTX)
    assert order.index(Timer.USER) < order.index(Timer.RTX)
    assert order.index(Timer.RTX) < order.index(Timer.TLP)
    assert order[-1] is Timer.KEEPALIVE


def test_an_aborted_connection_has_no_timer_left() -> None:
    conn = Connection(Config(), local_port=1, remote_port=2, iss=1000)
    conn.connect(0.0)
    assert conn.get_timer() is not None  # the SYN's retransmission timer
    conn.abort()
    assert conn.get_timer() is None and conn.timers.pending() == {}


def test_send_buffer_frees_what_is_acknowledged() -> None:
    buf = SendBuffer(base=101)
    buf.data += b"abcdefghij"
    assert buf.end == 111
    assert bytes(buf.view(103, 4)) == b"cdef"
    assert buf.free(100) == 0 and buf.free(101) == 0  # nothing before base is ours
    assert buf.free(105) == 4 and buf.base == 105 and bytes(buf.data) == b"efghij"
    assert buf.free(200) == 6 and buf.end == 111  # a FIN's ACK frees no byte more


def test_receive_buffer_reads_whole_pieces_or_glued_bytes() -> None:
    buf = ReceiveBuffer()
    buf.append(b"ab")
    buf.append(b"cde")
    assert buf.size == 5
    assert buf.read(3) == b"abc" and buf.size == 2
    assert buf.read(-1) == b"de" and buf.size == 0
    big = bytes(range(256)) * 100
    buf.append(b"x")
    buf.append(big)
    assert buf.read_pieces(1 << 20) == b"x"  # a large piece comes alone, next time
    assert buf.read_pieces(1 << 20) == big and buf.size == 0


def test_reassembly_drains_in_order_and_releases_its_budget() -> None:
    buf = ReceiveBuffer()
    budget = ReassemblyBudget(limit=10_000)
    buf.budget = budget
    for seq, data in ((20, b"klmno"), (10, b"abcde")):
        i, held = buf.find_ooo(seq, data)
        assert not held
        buf.insert_ooo(i, seq, data, len(data) + OOO_PIECE_OVERHEAD)
    assert buf.find_ooo(10, b"abcde")[1]  # the same piece again is known
    assert buf.holds_past(24) and not buf.holds_past(25)
    assert budget.used == 10 + 2 * OOO_PIECE_OVERHEAD
    assert buf.drain(10) == 15  # the first piece is in order now; the second waits
    assert buf.read(-1) == b"abcde" and budget.used == 5 + OOO_PIECE_OVERHEAD
    buf.drop_ooo()
    assert budget.used == 0 and buf.ooo == [] and buf.ooo_bytes == 0


def test_the_shared_empty_receive_buffer_refuses_appends() -> None:
    buf = ReceiveBuffer()
    with pytest.raises(RuntimeError):
        buf.pieces.append(b"x")  # one connection's bytes must never land in the shared deque
    buf.append(b"x")  # the buffer's own append gets a deque of its own
    assert ReceiveBuffer().pieces is not buf.pieces


# --------------------------------------------------------------------------- recovery modes

@pytest.mark.parametrize("sack", [True, False])
def test_a_lossy_transfer_walks_only_its_recovery_modes_and_ends_open(sack: bool) -> None:
    """LossRecovery is in exactly one Mode: without SACK only NewReno's fast recovery
    (a timeout goes back to snd_una, no mode), with SACK the pipe-driven and the timeout
    recoveries; a transfer that finishes leaves none open."""
    cfg = Config(msl=1.0, rto_min=0.2, rto_initial=0.5, mss=1000, pmtu_probing=False,
                 sack=sack)
    net = Network(7, LinkProfile(delay=0.01, loss=0.03))
    server = Endpoint(cfg, 1000, listening=True, rng=random.Random(1))
    client = Endpoint(cfg, 2000, rng=random.Random(2))
    net.add(("10.0.0.1", 1000), server)
    net.add(("10.0.0.2", 2000), client)
    conn = client.connect(("10.0.0.1", 1000), net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED)
    data = random.Random(3).randbytes(300_000)
    conn.send(data)
    seen = {conn.recovery.mode}
    deadline = net.now + 120.0
    while conn.queued and net.now < deadline and net.step():
        seen.add(conn.recovery.mode)
    assert not conn.queued, "the transfer did not finish"
    allowed = {Mode.NONE, Mode.SACK, Mode.TIMEOUT} if sack else {Mode.NONE, Mode.NEWRENO}
    entered = Mode.SACK if sack else Mode.NEWRENO
    assert entered in seen and seen <= allowed, seen
    assert conn.recovery.mode is Mode.NONE and not conn.recovery.in_recovery
    assert conn.stats().fast_retransmits >= 1


# --------------------------------------------------------------------------- idle memory

def test_the_shared_empty_list_refuses_changes_and_survives_copies() -> None:
    import copy

    from utcp.buffers import NO_ITEMS

    for change in (lambda: NO_ITEMS.append(1), lambda: NO_ITEMS.extend([1]),
                   lambda: NO_ITEMS.insert(0, 1), lambda: NO_ITEMS.__setitem__(slice(0, 0), [1]),
                   lambda: NO_ITEMS.__delitem__(slice(0, 0))):
        with pytest.raises(RuntimeError):
            change()
    assert NO_ITEMS == [] and copy.copy(NO_ITEMS) is NO_ITEMS
    assert copy.deepcopy({"x": NO_ITEMS})["x"] is NO_ITEMS


def test_an_idle_connection_keeps_no_list_of_its_own_where_it_holds_nothing() -> None:
    """What holds nothing shares one empty list (100,000 idle connections); each gets a
    list of its own when it has something to keep, and gives it back when empty."""
    from utcp.buffers import NO_ITEMS

    sb = Scoreboard()
    assert sb.starts is NO_ITEMS and not sb
    assert sb.add(200, 300) and sb.starts is not NO_ITEMS
    sb.trim(300)
    assert sb.starts is NO_ITEMS and sb.ends is NO_ITEMS and not sb
    assert sb.add(400, 500) and (sb.starts, sb.ends) == ([400], [500])

    buf = SendBuffer(base=1)
    assert buf.chunks is NO_ITEMS
    buf.append(b"hello")
    assert buf.chunks is not NO_ITEMS and buf.free(6) == 5
    assert buf.chunks is NO_ITEMS and buf.starts is NO_ITEMS
    buf.append(b"again")
    assert bytes(buf.view(6, 5)) == b"again"

    conn = Connection(Config(), local_port=1, remote_port=2, iss=1000)
    assert conn.sender.out is NO_ITEMS and conn.datagrams_to_send(0.0) == []
    conn.connect(0.0)
    syn = conn.datagrams_to_send(0.0)
    assert len(syn) == 1 and conn.sender.out is NO_ITEMS
    assert conn.datagrams_to_send(0.0) == [] and conn.sender.out is NO_ITEMS


def test_a_large_write_of_a_view_of_bytes_is_held_not_copied() -> None:
    """A view of immutable bytes (an application writing a large bytes object in
    memoryview slices) is held as it is; a view of anything that may change is copied,
    and so is nothing the caller can take back by releasing its own view."""
    payload = bytes(range(256)) * 1024
    piece = memoryview(payload)[1000:71000]
    buf = SendBuffer(base=0)
    buf.append(piece)
    piece.release()  # the caller's view: ours is another
    assert buf.chunks[0].obj is payload  # no copy
    assert bytes(buf.view(0, 100)) == payload[1000:1100]
    assert bytes(buf.view(69900, 100)) == payload[70900:71000]

    mutable = bytearray(payload[:70000])
    buf = SendBuffer(base=0)
    buf.append(memoryview(mutable))
    mutable[:3] = b"xyz"  # changed after the write: what was written is sent
    assert bytes(buf.view(0, 3)) == payload[:3]
    assert buf.chunks[0].obj is not mutable


@pytest.mark.parametrize("view", [
    memoryview(array.array("I", range(100))),             # 400 bytes: a small write
    memoryview(array.array("Q", range(20_000))),          # 160,000 bytes: held as a chunk
    memoryview(bytes(range(200)) * 50).cast("B", (100, 100)),
    memoryview(bytes(range(256)) * 400)[::5],             # gaps: copied in order
    memoryview(array.array("d", [1.5] * 9000))[100:200],
], ids=["words", "large", "2-D", "strided", "slice"])
def test_a_view_is_queued_as_the_bytes_it_covers(view: memoryview) -> None:
    """`len` of a view counts items (or rows), not bytes: the send buffer counts, keeps
    and hands out the bytes the view covers, whatever its format and shape."""
    buf = SendBuffer(base=1)
    buf.append(b"x" * 10)
    buf.append(view)
    expected = b"x" * 10 + view.tobytes()
    assert buf.size == len(expected) and buf.end == 1 + len(expected)
    assert buf.data == expected
    assert bytes(buf.view(1, len(expected))) == expected
