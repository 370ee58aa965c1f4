"""Tests of the network simulator itself, with tiny fake sans-IO endpoints."""

from __future__ import annotations

import itertools

import pytest

from tests.netsim import (
    Address,
    LinkProfile,
    Network,
    SansIOEndpoint,
    SimulationStuck,
    TraceRecord,
)

A: Address = ("10.0.0.1", 1000)
B: Address = ("10.0.0.2", 2000)
C: Address = ("10.0.0.3", 3000)


class Node:
    """Sends what it is told to, records what it receives, optional timer deadlines."""

    def __init__(self, deadlines: list[float] | None = None) -> None:
        self.outbox: list[tuple[bytes, Address]] = []
        self.received: list[tuple[bytes, Address, float]] = []
        self.deadlines = sorted(deadlines or [])
        self.fired: list[float] = []

    def send(self, data: bytes, dst: Address) -> None:
        self.outbox.append((data, dst))

    def burst(self, n: int, dst: Address, size: int = 8) -> None:
        for i in range(n):
            self.send(i.to_bytes(4, "big").ljust(size, b"."), dst)

    def numbers(self) -> list[int]:
        return [int.from_bytes(data[:4], "big") for data, _, _ in self.received]

    def times(self) -> list[float]:
        return [t for _, _, t in self.received]

    # SansIOEndpoint
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received.append((data, addr, now))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return self.deadlines[0] if self.deadlines else None

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        while self.deadlines and self.deadlines[0] <= now:
            self.deadlines.pop(0)


class Echo(Node):
    """Sends every datagram straight back: two Echoes ping-pong forever."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        super().receive_datagram(data, addr, now)
        self.send(data, addr)


class Ticker(Node):
    """Periodic timer that sends a datagram to `dst` on every tick."""

    def __init__(self, period: float, dst: Address) -> None:
        super().__init__()
        self.period = period
        self.dst = dst
        self.next = period

    def get_timer(self) -> float | None:
        return self.next

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.send(len(self.fired).to_bytes(4, "big"), self.dst)
        self.next = now + self.period


class StuckTimer(Node):
    """A buggy endpoint whose deadline never moves."""

    def get_timer(self) -> float | None:
        return 1.0

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)


def pair(
    seed: int = 1, profile: LinkProfile | None = None, *, trace: bool = False
) -> tuple[Network, Node, Node]:
    net = Network(seed, profile, trace=trace)
    a, b = Node(), Node()
    net.add(A, a)
    net.add(B, b)
    return net, a, b


def test_fakes_satisfy_protocol() -> None:
    assert isinstance(Node(), SansIOEndpoint)
    assert isinstance(Echo(), SansIOEndpoint)


def test_delivery_lands_at_exactly_now_plus_delay() -> None:
    net, a, b = pair(profile=LinkProfile(delay=0.25))
    a.send(b"x", B)
    net.run()
    assert b.received == [(b"x", A, 0.25)]
    assert net.now == 0.25
    # later sends are stamped with the clock at send time
    net.run(until=1.5)
    assert net.now == 1.5
    a.send(b"y", B)
    net.flush()
    assert net.now == 1.5 and net.in_flight == 1
    net.run()
    assert b.received[-1] == (b"y", A, 1.5 + 0.25)


def test_start_time() -> None:
    net = Network(seed=1, start=100.0)
    a, b = Node(), Node()
    net.add(A, a)
    net.add(B, b)
    a.send(b"x", B)
    net.run()
    assert b.times() == [100.0 + 0.01]


def test_zero_delay_and_default_profile() -> None:
    net, a, b = pair(profile=LinkProfile(delay=0.0))
    a.burst(5, B)
    net.run()
    assert b.numbers() == [0, 1, 2, 3, 4]
    assert b.times() == [0.0] * 5
    assert net.stats.delivered == 5


def test_loss_rate_about_ten_percent() -> None:
    net, a, b = pair(seed=7, profile=LinkProfile(loss=0.1))
    a.burst(10_000, B)
    net.run()
    assert net.stats.sent == 10_000
    assert net.stats.delivered + net.stats.dropped == 10_000
    assert 850 <= net.stats.dropped <= 1150
    assert len(b.received) == net.stats.delivered
    assert b.numbers() == sorted(b.numbers())  # loss alone never reorders


def _chaotic_run(seed: int) -> tuple[list[tuple[bytes, Address, float]], list[TraceRecord]]:
    profile = LinkProfile(
        loss=0.1, duplicate=0.05, reorder=0.1, delay=0.02, jitter=0.01, bandwidth=50_000
    )
    net, a, b = pair(seed=seed, profile=profile, trace=True)
    for i in range(300):
        a.send(i.to_bytes(4, "big") * (1 + i % 7), B)
        net.run(until=net.now + 0.001)
    net.run()
    assert net.trace is not None
    return b.received, net.trace


def test_same_seed_same_run_different_seed_different_run() -> None:
    first, trace1 = _chaotic_run(42)
    second, trace2 = _chaotic_run(42)
    other, _ = _chaotic_run(43)
    assert first == second
    assert trace1 == trace2
    assert first != other


def test_reorder_makes_later_datagrams_overtake() -> None:
    net, a, b = pair(seed=3, profile=LinkProfile(reorder=0.2, delay=0.01))
    a.burst(200, B)
    net.run()
    got = b.numbers()
    assert sorted(got) == list(range(200))  # nothing lost or duplicated
    assert got != sorted(got)
    assert 0 < net.stats.reordered < 200
    inversions = sum(1 for x, y in itertools.pairwise(got) if x > y)
    assert inversions > 0
    # every reordered datagram arrives exactly reorder_delay (= delay) late
    assert set(b.times()) == {0.01, 0.02}


def test_no_reorder_without_reorder_or_jitter() -> None:
    net, a, b = pair(profile=LinkProfile(delay=0.05, bandwidth=10_000))
    for _ in range(50):
        a.burst(3, B, size=100)
        net.run(until=net.now + 0.003)
    net.run()
    assert len(b.received) == 150
    assert b.times() == sorted(b.times())


def test_explicit_reorder_delay() -> None:
    net, a, b = pair(seed=5, profile=LinkProfile(reorder=1.0, delay=0.01, reorder_delay=0.5))
    a.send(b"late", B)
    net.run()
    assert b.times() == [0.51]


def test_duplicate_produces_duplicates() -> None:
    net, a, b = pair(seed=9, profile=LinkProfile(duplicate=0.3))
    a.burst(1000, B)
    net.run()
    got = b.numbers()
    assert len(got) == 1000 + net.stats.duplicated
    assert 200 <= net.stats.duplicated <= 400
    assert set(got) == set(range(1000))
    assert sum(1 for n in set(got) if got.count(n) == 2) == net.stats.duplicated


def test_bandwidth_burst_takes_about_one_second() -> None:
    net, a, b = pair(profile=LinkProfile(delay=0.01, bandwidth=100_000))
    a.burst(100, B, size=1000)
    net.run()
    times = b.times()
    assert len(times) == 100
    assert times[0] == pytest.approx(0.01 + 0.01)  # serialization + propagation
    assert times[-1] == pytest.approx(1.0 + 0.01)
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert all(g == pytest.approx(0.01) for g in gaps)
    assert b.numbers() == list(range(100))


def test_bandwidth_is_per_direction() -> None:
    net, a, b = pair(profile=LinkProfile(delay=0.0, bandwidth=1000))
    a.send(b"x" * 1000, B)
    b.send(b"y" * 1000, A)
    net.run()
    assert b.times() == [pytest.approx(1.0)]
    assert a.times() == [pytest.approx(1.0)]


def test_queue_limit_tail_drops() -> None:
    profile = LinkProfile(delay=0.01, bandwidth=100_000, queue_limit=10_000)
    net, a, b = pair(profile=profile)
    a.burst(100, B, size=1000)
    net.run()
    assert net.stats.dropped_queue == 90
    assert b.numbers() == list(range(10))  # the head of the burst, the tail dropped
    # once the queue has drained the link accepts again
    a.burst(3, B, size=1000)
    net.run()
    assert len(b.received) == 13
    assert net.stats.dropped_queue == 90


def test_queue_limit_partial_drain() -> None:
    profile = LinkProfile(delay=0.0, bandwidth=1000, queue_limit=3000)
    net, a, b = pair(profile=profile)
    a.burst(4, B, size=1000)  # 3 fit, 1 dropped
    net.run(until=1.0)  # the first has been serialized: room for one more
    a.burst(2, B, size=1000)
    net.run()
    assert net.stats.dropped_queue == 2
    assert len(b.received) == 4
    assert b.times() == pytest.approx([1.0, 2.0, 3.0, 4.0])


def test_mtu_drops_oversize() -> None:
    net, a, b = pair(profile=LinkProfile(mtu=1200))
    for size in (1000, 1200, 1201, 5000):
        a.send(b"z" * size, B)
    net.run()
    assert [len(d) for d, _, _ in b.received] == [1000, 1200]
    assert net.stats.dropped_mtu == 2


def test_timers_fire_at_their_deadlines() -> None:
    net = Network(seed=1)
    n = Node(deadlines=[0.5, 1.25, 3.0])
    net.add(A, n)
    net.run()
    assert n.fired == [0.5, 1.25, 3.0]
    assert net.now == 3.0
    assert net.stats.timers_fired == 3


def test_past_timer_fires_immediately() -> None:
    net = Network(seed=1, start=10.0)
    n = Node(deadlines=[2.0])
    net.add(A, n)
    assert net.next_event_time() == 10.0
    assert net.step()
    assert n.fired == [10.0]
    assert not net.step()


def test_timer_order_between_endpoints_and_deliveries() -> None:
    """At equal times: deliveries first (in send order), then timers (in add order)."""
    net = Network(seed=1, profile=LinkProfile(delay=1.0))
    events: list[str] = []

    class Logged(Node):
        def __init__(self, name: str, deadlines: list[float]) -> None:
            super().__init__(deadlines)
            self.name = name

        def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
            events.append(f"{self.name} rx {data.decode()} @{now}")

        def handle_timer(self, now: float) -> None:
            events.append(f"{self.name} timer @{now}")
            super().handle_timer(now)

    x, y = Logged("x", [1.0]), Logged("y", [1.0])
    net.add(A, x)
    net.add(B, y)
    x.send(b"1", B)
    x.send(b"2", B)
    net.run()
    assert events == ["y rx 1 @1.0", "y rx 2 @1.0", "x timer @1.0", "y timer @1.0"]


def test_run_stop_predicate() -> None:
    net = Network(seed=1)
    t = Ticker(0.1, B)
    sink = Node()
    net.add(A, t)
    net.add(B, sink)
    net.run(stop=lambda: len(t.fired) >= 5)
    assert len(t.fired) == 5
    assert net.now == t.fired[-1]
    net.run(stop=lambda: len(sink.received) >= 5)
    assert len(sink.received) == 5


def test_run_stop_checked_before_first_step() -> None:
    net, a, b = pair()
    a.send(b"x", B)
    net.run(stop=lambda: True)
    assert net.now == 0.0 and b.received == []


def test_run_until_does_not_pass_until() -> None:
    net, a, b = pair(profile=LinkProfile(delay=1.0))
    a.send(b"x", B)
    net.run(until=0.5)
    assert net.now == 0.5 and b.received == [] and net.in_flight == 1
    net.run(until=1.0)  # an event exactly at `until` is performed
    assert b.times() == [1.0]
    net.run(until=7.0)  # idle: the clock still moves to `until`
    assert net.now == 7.0


def test_max_steps_raises_simulation_stuck() -> None:
    net = Network(seed=1)
    e1, e2 = Echo(), Echo()
    net.add(A, e1)
    net.add(B, e2)
    e1.send(b"ping", B)
    with pytest.raises(SimulationStuck, match=r"max_steps=100 steps: clock at t=1\.0000"):
        net.run(max_steps=100)
    assert net.stats.steps == 100
    assert net.now == pytest.approx(1.0)
    assert net.in_flight == 1


def test_max_steps_not_raised_when_work_ends_exactly() -> None:
    net, a, b = pair()
    a.burst(10, B)
    net.run(max_steps=10)
    assert len(b.received) == 10


def test_ticker_forever_hits_max_steps() -> None:
    net = Network(seed=1)
    net.add(A, Ticker(1.0, B))
    with pytest.raises(SimulationStuck):
        net.run(max_steps=50)
    # each tick is one step and its (unroutable) datagram's arrival another
    assert net.stats.timers_fired == 25
    assert net.stats.unroutable == 25


def test_stuck_timer_does_not_spin() -> None:
    net = Network(seed=1)
    bad = StuckTimer()
    net.add(A, bad)
    net.run(max_steps=1000)  # terminates without SimulationStuck
    assert bad.fired == [1.0]
    assert net.stats.stuck_timers == 1
    net.run(max_steps=1000)  # still nothing can progress
    assert bad.fired == [1.0]


def test_stuck_timer_refires_only_when_clock_moves() -> None:
    net = Network(seed=1)
    bad = StuckTimer()
    other = Node(deadlines=[0.5, 1.5, 2.0, 2.5, 3.0])
    net.add(A, bad)
    net.add(B, other)
    net.run(max_steps=1000)
    assert other.fired == [0.5, 1.5, 2.0, 2.5, 3.0]
    assert bad.fired == [1.0, 1.5, 2.0, 2.5, 3.0]  # once per clock value, never spinning
    assert net.stats.stuck_timers == 5


def test_stuck_timer_with_changed_deadline_fires_again_at_same_clock() -> None:
    """Suppression is keyed on (clock, deadline): a new deadline is a new timer."""
    net = Network(seed=1, profile=LinkProfile(delay=0.0))

    class Rearms(Node):
        def __init__(self) -> None:
            super().__init__()
            self.deadline: float | None = 1.0

        def get_timer(self) -> float | None:
            return self.deadline

        def handle_timer(self, now: float) -> None:
            self.fired.append(now)  # bug: leaves the deadline in the past
            self.send(b"ping", B)

        def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
            super().receive_datagram(data, addr, now)
            if len(self.received) == 1:
                self.deadline = 0.5  # a different (past) deadline

    r, echo = Rearms(), Echo()
    net.add(A, r)
    net.add(B, echo)
    net.run(max_steps=100)
    assert r.fired == [1.0, 1.0]
    assert len(r.received) == 2
    assert net.stats.stuck_timers == 2
    assert net.now == 1.0


def test_unroutable_counted() -> None:
    net, a, _ = pair(trace=True)
    a.send(b"x", C)
    net.run()
    assert net.stats.unroutable == 1 and net.stats.delivered == 0
    assert net.trace is not None
    assert [r.fate for r in net.trace] == ["sent", "unroutable"]


def test_remove_endpoint_makes_in_flight_unroutable() -> None:
    net, a, b = pair()
    a.send(b"x", B)
    net.flush()
    assert net.remove(B) is b
    net.run()
    assert net.stats.unroutable == 1 and b.received == []


def test_drop_next_nth_matching() -> None:
    net, a, b = pair()
    net.drop_next(lambda data, src, dst, now: data.startswith(b"D"), nth=3)
    for i in range(6):
        a.send(b"D" + bytes([i]), B)
        a.send(b"A" + bytes([i]), B)
    net.run()
    got = [d for d, _, _ in b.received]
    assert b"D\x02" not in got
    assert len(got) == 11
    assert net.stats.dropped_filter == 1


def test_drop_next_any() -> None:
    net, a, b = pair()
    net.drop_next()
    net.drop_next()
    a.burst(5, B)
    net.run()
    assert b.numbers() == [2, 3, 4]


def test_filter_hook_false_drops() -> None:
    net, a, b = pair()
    seen: list[tuple[bytes, Address, Address, float]] = []

    def keep(data: bytes, src: Address, dst: Address, now: float) -> bool:
        seen.append((data, src, dst, now))
        return data != b"bad"

    net.filter = keep
    a.send(b"good", B)
    a.send(b"bad", B)
    b.send(b"back", A)
    net.run()
    assert [d for d, _, _ in b.received] == [b"good"]
    assert [d for d, _, _ in a.received] == [b"back"]
    assert seen == [(b"good", A, B, 0.0), (b"bad", A, B, 0.0), (b"back", B, A, 0.0)]
    assert net.stats.dropped_filter == 1


def test_set_link_overrides_one_direction() -> None:
    net, a, b = pair(profile=LinkProfile(delay=0.01))
    net.set_link(A, B, LinkProfile(delay=0.5))
    a.send(b"slow", B)
    b.send(b"fast", A)
    net.run()
    assert b.times() == [0.5]
    assert a.times() == [0.01]
    net.set_link(A, B, LinkProfile(loss=1.0), both_directions=True)
    a.send(b"x", B)
    b.send(b"y", A)
    net.run()
    assert net.stats.dropped == 2
    assert net.link(A, C) == net.profile


def test_trace_records() -> None:
    net, a, _ = pair(profile=LinkProfile(mtu=10), trace=True)
    a.send(b"ok", B)
    a.send(b"x" * 11, B)
    net.run()
    assert net.trace == [
        TraceRecord(0.0, A, B, b"ok", "sent"),
        TraceRecord(0.0, A, B, b"x" * 11, "dropped_mtu"),
        TraceRecord(0.01, A, B, b"ok", "delivered"),
    ]
    text = net.format_trace()
    assert "dropped_mtu" in text and "10.0.0.2:2000" in text


def test_step_returns_false_when_idle() -> None:
    net, a, _ = pair()
    assert not net.step()
    assert net.next_event_time() is None
    a.send(b"x", B)
    assert net.next_event_time() is None  # not flushed yet
    net.flush()
    assert net.next_event_time() == 0.01
    assert net.step()
    assert not net.step()


def test_stats_bytes() -> None:
    net, a, _ = pair(profile=LinkProfile(duplicate=1.0))
    a.send(b"abc", B)
    net.run()
    s = net.stats.as_dict()
    assert s["sent"] == 1 and s["bytes_sent"] == 3
    assert s["delivered"] == 2 and s["bytes_delivered"] == 6 and s["duplicated"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": 1.5},
        {"duplicate": -0.1},
        {"delay": -1.0},
        {"jitter": float("nan")},
        {"bandwidth": 0},
        {"queue_limit": 100},
        {"bandwidth": 10, "queue_limit": -1},
        {"mtu": 0},
    ],
)
def test_link_profile_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LinkProfile(**kwargs)  # type: ignore[arg-type]


def test_add_same_address_twice() -> None:
    net, _, _ = pair()
    with pytest.raises(ValueError):
        net.add(A, Node())
