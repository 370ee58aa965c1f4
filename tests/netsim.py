"""A deterministic network simulator for sans-IO endpoints, on a fake clock.

Endpoints never see a socket or a real clock: the simulator hands them datagrams
(`receive_datagram`), fires their timers (`handle_timer`), and after every event
collects what they want to send (`datagrams_to_send`), pushing it through a
`LinkProfile` (MTU, filters, a FIFO bandwidth queue, loss, delay, jitter,
reordering, duplication) into a schedule of future deliveries.

Everything random comes from one `random.Random(seed)`, drawn in a fixed order,
so the same seed, profiles and endpoints give the same run byte for byte.

Typical use::

    net = Network(seed=1, profile=LinkProfile(loss=0.01, delay=0.02))
    net.add(("10.0.0.1", 1000), client)
    net.add(("10.0.0.2", 2000), server)
    client.write(b"hello")          # application side, outside the simulator
    net.flush()                     # schedule what that produced, at net.now
    net.run(until=30.0, stop=lambda: server.received == b"hello")

Pipeline for each datagram an endpoint emits at time `now` on the link src -> dst:

1. `drop_next` rules and the `filter` hook see it (both see every emitted datagram);
2. larger than `mtu`: dropped (`dropped_mtu`);
3. bandwidth: it waits for the datagrams ahead of it on that link and then occupies the
   link for `len / bandwidth` seconds; if the bytes not yet serialized (itself
   included) would exceed `queue_limit` it is tail-dropped (`dropped_queue`);
4. `loss`: dropped on the wire (`dropped`) -- it still used the bandwidth;
5. arrival = end of serialization + `delay` + uniform(0, `jitter`), plus
   `reorder_delay` with probability `reorder`;
6. with probability `duplicate` a second copy is scheduled (own jitter draw);
7. at arrival, an address with no endpoint makes it `unroutable`.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "Address",
    "DatagramPredicate",
    "LinkProfile",
    "NetStats",
    "Network",
    "SansIOEndpoint",
    "SimulationStuck",
    "TraceRecord",
]

Address = tuple[str, int]
DatagramPredicate = Callable[[bytes, Address, Address, float], bool]
"""`(data, src, dst, now) -> bool`, called once per emitted datagram."""


@runtime_checkable
class SansIOEndpoint(Protocol):
    """What the simulator drives. Times are absolute fake-clock seconds."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram that arrived from `addr`."""
        ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Drain the output: `(payload, destination address)` pairs, in send order."""
        ...

    def get_timer(self) -> float | None:
        """The absolute deadline of the next timer, or None."""
        ...

    def handle_timer(self, now: float) -> None:
        """Called at (or after) the deadline; must move or clear the deadline."""
        ...


class SimulationStuck(RuntimeError):
    """`Network.run` hit `max_steps` with work still pending."""


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"LinkProfile.{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class LinkProfile:
    """How one direction of a link treats datagrams.

    loss, duplicate, reorder: per-datagram probabilities.
    delay: one-way propagation delay in seconds; jitter: uniform extra in [0, jitter].
    reorder_delay: extra seconds for a reordered datagram, so that datagrams sent
        within that window overtake it; None means max(delay, 1 ms).
    bandwidth: bytes per second, None for infinite. queue_limit: bytes (needs bandwidth).
    mtu: largest datagram payload carried, None for no limit.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.01
    jitter: float = 0.0
    bandwidth: float | None = None
    queue_limit: int | None = None
    mtu: int | None = None
    reorder_delay: float | None = None

    def __post_init__(self) -> None:
        _check_probability("loss", self.loss)
        _check_probability("duplicate", self.duplicate)
        _check_probability("reorder", self.reorder)
        for name in ("delay", "jitter", "reorder_delay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"LinkProfile.{name} must be finite and >= 0, got {value!r}")
        if self.bandwidth is not None and not (
            math.isfinite(self.bandwidth) and self.bandwidth > 0
        ):
            raise ValueError(f"LinkProfile.bandwidth must be > 0 or None, got {self.bandwidth!r}")
        if self.queue_limit is not None:
            if self.queue_limit < 0:
                raise ValueError(f"LinkProfile.queue_limit must be >= 0, got {self.queue_limit}")
            if self.bandwidth is None:
                raise ValueError("LinkProfile.queue_limit needs a bandwidth (no queue otherwise)")
        if self.mtu is not None and self.mtu <= 0:
            raise ValueError(f"LinkProfile.mtu must be > 0 or None, got {self.mtu}")

    @property
    def effective_reorder_delay(self) -> float:
        if self.reorder_delay is not None:
            return self.reorder_delay
        return max(self.delay, 0.001)


@dataclass
class NetStats:
    """Counters over the whole network (all links)."""

    sent: int = 0  # datagrams emitted by endpoints
    bytes_sent: int = 0
    delivered: int = 0  # receive_datagram calls (duplicates included)
    bytes_delivered: int = 0
    dropped: int = 0  # random loss
    dropped_queue: int = 0  # tail-dropped by queue_limit
    dropped_mtu: int = 0
    dropped_filter: int = 0  # filter hook or drop_next rule
    unroutable: int = 0  # no endpoint at the destination
    duplicated: int = 0  # extra copies scheduled
    reordered: int = 0  # datagrams given reorder_delay
    timers_fired: int = 0  # handle_timer calls
    stuck_timers: int = 0  # deadline still <= now right after handle_timer
    steps: int = 0  # events performed (deliveries + timers)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class TraceRecord(NamedTuple):
    """One line of `Network.trace`. `data` is the payload itself.

    fate: "sent" (scheduled), "reordered" (scheduled with reorder_delay), "duplicated"
    (the extra copy), "lost", "filtered", "dropped_queue", "dropped_mtu" -- recorded at
    send time -- and "delivered" or "unroutable", recorded at arrival time.
    """

    time: float
    src: Address
    dst: Address
    data: bytes
    fate: str


@dataclass(order=True)
class _Delivery:
    time: float
    seq: int  # global send order: breaks ties between equal arrival times
    src: Address = field(compare=False)
    dst: Address = field(compare=False)
    data: bytes = field(compare=False)


@dataclass
class _DropRule:
    predicate: DatagramPredicate | None
    remaining: int  # matches still to let through + 1


@dataclass
class _LinkQueue:
    """Serialization state of one direction of a link with finite bandwidth."""

    busy_until: float = 0.0
    in_queue: deque[tuple[float, int]] = field(default_factory=deque)  # (finish, size)
    queued_bytes: int = 0

    def drain(self, now: float) -> None:
        while self.in_queue and self.in_queue[0][0] <= now:
            _, size = self.in_queue.popleft()
            self.queued_bytes -= size


class Network:
    """Deterministic discrete-event network of sans-IO endpoints.

    One `step()` performs exactly one event: the earliest pending delivery or the
    earliest due timer (a timer whose deadline is <= now is due at once). Ties: all
    deliveries at a time go before timers at that time; deliveries in send order;
    timers in `add()` order. After every event, every endpoint's output is collected
    (in `add()` order) and scheduled, stamped with the current clock.
    """

    def __init__(
        self,
        seed: int,
        profile: LinkProfile | None = None,
        *,
        start: float = 0.0,
        trace: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.profile = profile if profile is not None else LinkProfile()
        self.now: float = float(start)
        self.stats = NetStats()
        self.trace: list[TraceRecord] | None = [] if trace else None
        self.filter: DatagramPredicate | None = None
        """Hook called for every emitted datagram; return False to drop it."""
        self._endpoints: dict[Address, SansIOEndpoint] = {}
        self._links: dict[tuple[Address, Address], LinkProfile] = {}
        self._queues: dict[tuple[Address, Address], _LinkQueue] = {}
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._drop_rules: list[_DropRule] = []
        # addr -> (clock, deadline) of a timer that stayed due right after handle_timer;
        # ignored until the clock moves or the endpoint changes that deadline.
        self._stuck: dict[Address, tuple[float, float]] = {}

    # -- topology ------------------------------------------------------------------

    def add(self, addr: Address, endpoint: SansIOEndpoint) -> None:
        """Register `endpoint` at `addr`; datagrams for `addr` are delivered to it."""
        if addr in self._endpoints:
            raise ValueError(f"address {addr!r} already has an endpoint")
        self._endpoints[addr] = endpoint

    def remove(self, addr: Address) -> SansIOEndpoint:
        """Unregister (e.g. to simulate a crash); its in-flight datagrams become unroutable."""
        self._stuck.pop(addr, None)
        return self._endpoints.pop(addr)

    @property
    def endpoints(self) -> dict[Address, SansIOEndpoint]:
        return dict(self._endpoints)

    def set_link(
        self,
        src: Address,
        dst: Address,
        profile: LinkProfile,
        *,
        both_directions: bool = False,
    ) -> None:
        """Override the default profile for src -> dst (and dst -> src if asked)."""
        self._links[(src, dst)] = profile
        if both_directions:
            self._links[(dst, src)] = profile

    def link(self, src: Address, dst: Address) -> LinkProfile:
        """The profile in force for src -> dst."""
        return self._links.get((src, dst), self.profile)

    def drop_next(self, predicate: DatagramPredicate | None = None, *, nth: int = 1) -> None:
        """Drop the `nth` datagram from now on for which `predicate(data, src, dst, now)`
        is true (any datagram if None). One-shot. Several rules may be pending: they are
        checked in the order added, and a datagram one rule drops is not counted by the
        rules after it (so `drop_next(); drop_next()` drops the next two datagrams)."""
        if nth < 1:
            raise ValueError("nth must be >= 1")
        self._drop_rules.append(_DropRule(predicate, nth))

    # -- clock and events -----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Datagrams scheduled but not yet delivered."""
        return len(self._heap)

    def flush(self) -> None:
        """Collect and schedule every endpoint's output at `now`; the clock does not move."""
        now = self.now
        for src, endpoint in list(self._endpoints.items()):
            for data, dst in endpoint.datagrams_to_send(now):
                self._send(bytes(data), src, dst)

    def next_event_time(self) -> float | None:
        """When the next `step()` would happen (never before `now`), or None if idle."""
        event = self._next_event()
        return None if event is None else event[0]

    def step(self) -> bool:
        """Flush, then perform the next event (advancing the clock to it) and flush again.

        Returns False, doing nothing else, when nothing is scheduled and no timer is due.
        """
        self.flush()
        event = self._next_event()
        if event is None:
            return False
        self._perform(event)
        return True

    def run(
        self,
        until: float | None = None,
        max_steps: int = 1_000_000,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Step until `stop()` is true (checked before every step), the next event lies
        after `until` (the clock is then set to `until`), or nothing is left to do (the
        clock then moves to `until` if given). Raises SimulationStuck if `max_steps`
        steps were performed and work remains."""
        steps = 0
        while True:
            if stop is not None and stop():
                return
            self.flush()
            event = self._next_event()
            if event is None or (until is not None and event[0] > until):
                if until is not None and until > self.now:
                    self._advance(until)
                return
            if steps >= max_steps:
                raise SimulationStuck(self._stuck_message(steps, event[0]))
            self._perform(event)
            steps += 1

    # -- internals ------------------------------------------------------------------

    def _next_event(self) -> tuple[float, Address | None] | None:
        """(time, None) for a delivery, (time, addr) for a timer, or None."""
        best_time: float | None = self._heap[0].time if self._heap else None
        best_addr: Address | None = None
        for addr, endpoint in self._endpoints.items():
            deadline = endpoint.get_timer()
            if deadline is None:
                continue
            stuck = self._stuck.get(addr)
            if stuck is not None and stuck == (self.now, deadline):
                continue
            t = max(deadline, self.now)
            if best_time is None or t < best_time:  # strict: deliveries win ties
                best_time, best_addr = t, addr
        if best_time is None:
            return None
        return max(best_time, self.now), best_addr

    def _advance(self, t: float) -> None:
        if t > self.now:
            self.now = t
            self._stuck.clear()

    def _perform(self, event: tuple[float, Address | None]) -> None:
        t, addr = event
        self._advance(t)
        self.stats.steps += 1
        if addr is None:
            self._deliver(heapq.heappop(self._heap))
        else:
            endpoint = self._endpoints[addr]
            self.stats.timers_fired += 1
            endpoint.handle_timer(self.now)
            deadline = endpoint.get_timer()
            if deadline is not None and deadline <= self.now:
                self.stats.stuck_timers += 1
                self._stuck[addr] = (self.now, deadline)
        self.flush()

    def _deliver(self, d: _Delivery) -> None:
        endpoint = self._endpoints.get(d.dst)
        if endpoint is None:
            self.stats.unroutable += 1
            self._record(d.src, d.dst, d.data, "unroutable")
            return
        self.stats.delivered += 1
        self.stats.bytes_delivered += len(d.data)
        self._record(d.src, d.dst, d.data, "delivered")
        endpoint.receive_datagram(d.data, d.src, self.now)

    def _record(self, src: Address, dst: Address, data: bytes, fate: str) -> None:
        if self.trace is not None:
            self.trace.append(TraceRecord(self.now, src, dst, data, fate))

    def _hooks_drop(self, data: bytes, src: Address, dst: Address) -> bool:
        # drop_next rules in the order they were added; the first that fires drops the
        # datagram and the rules after it do not see (or count) it.
        drop = False
        for i, rule in enumerate(self._drop_rules):
            if rule.predicate is None or rule.predicate(data, src, dst, self.now):
                rule.remaining -= 1
                if rule.remaining == 0:
                    del self._drop_rules[i]
                    drop = True
                    break
        # the filter sees every emitted datagram, dropped by a rule or not
        if self.filter is not None and not self.filter(data, src, dst, self.now):
            drop = True
        return drop

    def _send(self, data: bytes, src: Address, dst: Address) -> None:
        now = self.now
        size = len(data)
        self.stats.sent += 1
        self.stats.bytes_sent += size
        if self._hooks_drop(data, src, dst):
            self.stats.dropped_filter += 1
            self._record(src, dst, data, "filtered")
            return
        profile = self.link(src, dst)
        if profile.mtu is not None and size > profile.mtu:
            self.stats.dropped_mtu += 1
            self._record(src, dst, data, "dropped_mtu")
            return
        depart = now
        if profile.bandwidth is not None:
            queue = self._queues.setdefault((src, dst), _LinkQueue())
            queue.drain(now)
            if profile.queue_limit is not None and queue.queued_bytes + size > profile.queue_limit:
                self.stats.dropped_queue += 1
                self._record(src, dst, data, "dropped_queue")
                return
            depart = max(now, queue.busy_until) + size / profile.bandwidth
            queue.busy_until = depart
            queue.in_queue.append((depart, size))
            queue.queued_bytes += size
        rng = self.rng
        if profile.loss > 0.0 and rng.random() < profile.loss:
            self.stats.dropped += 1
            self._record(src, dst, data, "lost")
            return
        arrival = depart + profile.delay
        if profile.jitter > 0.0:
            arrival += rng.uniform(0.0, profile.jitter)
        fate = "sent"
        if profile.reorder > 0.0 and rng.random() < profile.reorder:
            arrival += profile.effective_reorder_delay
            self.stats.reordered += 1
            fate = "reordered"
        self._schedule(arrival, src, dst, data)
        self._record(src, dst, data, fate)
        if profile.duplicate > 0.0 and rng.random() < profile.duplicate:
            copy_arrival = depart + profile.delay
            if profile.jitter > 0.0:
                copy_arrival += rng.uniform(0.0, profile.jitter)
            self._schedule(copy_arrival, src, dst, data)
            self.stats.duplicated += 1
            self._record(src, dst, data, "duplicated")

    def _schedule(self, arrival: float, src: Address, dst: Address, data: bytes) -> None:
        heapq.heappush(self._heap, _Delivery(arrival, next(self._seq), src, dst, data))

    def _stuck_message(self, steps: int, next_time: float) -> str:
        timers = {
            f"{host}:{port}": endpoint.get_timer()
            for (host, port), endpoint in self._endpoints.items()
        }
        return (
            f"simulation still busy after max_steps={steps} steps: clock at "
            f"t={self.now:.6f}s, next event at t={next_time:.6f}s, "
            f"{len(self._heap)} datagram(s) in flight, timers {timers}, stats {self.stats}"
        )

    def format_trace(self, limit: int | None = None) -> str:
        """The trace (last `limit` records) as text, for assertion messages."""
        if self.trace is None:
            return "(trace disabled: use Network(..., trace=True))"
        records = self.trace if limit is None else self.trace[-limit:]
        lines = [
            f"{r.time:12.6f} {r.src[0]}:{r.src[1]} -> {r.dst[0]}:{r.dst[1]} "
            f"{len(r.data):6d}B {r.fate} {r.data[:16].hex()}"
            for r in records
        ]
        return "\n".join(lines)
