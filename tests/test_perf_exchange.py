"""A request/response exchange's cost in the pure-Python build, counted in Python calls
(deterministic, unlike time): issue #13 asks the pure build to be no slower than the core
before the restructure (96be91c), and its ping-pong was ~17% slower, mostly in calls the
split added (`Timers` methods, properties). `python -m benchmarks.instructions
--ping-pong` gives the instructions; this keeps the calls from creeping back."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from types import FrameType

import pytest

from utcp import wire
from utcp.config import Config
from utcp.endpoint import Endpoint
from utcp.timers import Timer, Timers

SERVER, CLIENT = ("127.0.0.1", 5000), ("127.0.0.1", 6000)


class _PingPong:
    """Two sans-IO endpoints on a fake clock, 50 µs per hop, as benchmarks.instructions."""

    def __init__(self) -> None:
        self.server = Endpoint(Config(), SERVER[1], listening=True, rng=random.Random(1))
        self.client = Endpoint(Config(), CLIENT[1], rng=random.Random(2))
        self.now = 0.0
        self.conn = self.client.connect(SERVER, self.now)
        for _ in range(5):
            self.hop()
        peer = self.server.accept()
        assert peer is not None
        self.peer = peer

    def hop(self) -> None:
        self.now += 50e-6
        for ep in (self.client, self.server):
            deadline = ep.get_timer()
            if deadline is not None and deadline <= self.now:
                ep.handle_timer(self.now)
        for d, _a in self.client.datagrams_to_send(self.now):
            self.server.receive_datagram(d, CLIENT, self.now)
        for d, _a in self.server.datagrams_to_send(self.now):
            self.client.receive_datagram(d, SERVER, self.now)

    def exchange(self) -> None:
        self.conn.send(b"x" * 64)
        self.hop()
        self.peer.send(self.peer.read_pieces(1 << 16))
        self.hop()
        assert self.conn.read_pieces(1 << 16) == b"x" * 64


def python_calls(step: Callable[[], object], times: int) -> float:
    """Python function calls per `step()`, averaged over `times` runs (interpreted code
    only: a compiled function makes none the profiler sees)."""
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        for _ in range(times):
            step()
    finally:
        sys.setprofile(None)
    return calls / times


@pytest.mark.skipif(not wire.__file__.endswith(".py"), reason="counts interpreted calls")
def test_python_calls_per_request_and_echo() -> None:
    pp = _PingPong()
    for _ in range(20):  # RTT and window settled
        pp.exchange()
    per_exchange = python_calls(pp.exchange, 100)
    # per exchange, both ends and the driver: 182 at 96be91c, 259 after the
    # restructure, 194 with the timer table indexed in place and rto/end attributes
    assert per_exchange < 205, per_exchange


def test_timer_constants_are_the_enum_and_the_table_stays_one_list() -> None:
    """The T_* indices name the same slots as `Timer`, and clearing the table keeps the
    list that hot paths hold for the length of a call."""
    from utcp import timers

    assert {t.name: t.value for t in Timer} == {
        name[2:]: value for name, value in vars(timers).items() if name.startswith("T_")}
    table = Timers()
    deadlines = table.at
    table.arm(Timer.RTX, 1.0)
    deadlines[timers.T_ACK] = 2.0
    assert table.pending() == {Timer.RTX: 1.0, Timer.ACK: 2.0}
    table.cancel_all()
    assert table.at is deadlines and table.earliest() is None
