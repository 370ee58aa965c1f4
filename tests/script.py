"""Packetdrill-style scripts for the sans-IO core, on a fake clock.

A `Script` wraps one `utcp.endpoint.Endpoint` and plays a remote peer by hand:
`inject` feeds it an exact segment from the peer's address, `expect` pops the next
datagram the endpoint sent and asserts the fields a test names, `advance` moves the
clock and fires every timer that falls due at its exact deadline (so the send time of
a retransmission can be asserted to the microsecond), and `states` is the history of
`StateChanged` events of a connection. Nothing sleeps: the clock is a float.

Flags may be given as `utcp.wire` bits or in packetdrill's notation:
``S`` SYN, ``F`` FIN, ``R`` RST, ``P`` PSH and ``.`` ACK (``"S."`` is SYN+ACK).
Sequence and acknowledgment numbers are compared modulo 2**32, so a test may write
``ISN + 1`` with ``ISN = 2**32 - 1`` and mean 0 on the wire.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from dataclasses import dataclass, field

from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Addr, Endpoint
from utcp.events import Event, StateChanged, Terminated
from utcp.state import State

MASK = (1 << 32) - 1
LOCAL_HOST = "10.0.0.1"
PEER: Addr = ("10.0.0.2", 40000)

_FLAG_CHARS = {"S": wire.SYN, "F": wire.FIN, "R": wire.RST, "P": wire.PSH, ".": wire.ACK,
               "U": wire.URG, "E": wire.ECE, "W": wire.CWR}

Flags = int | str


def flags_of(flags: Flags) -> int:
    if isinstance(flags, int):
        return flags
    bits = 0
    for ch in flags:
        try:
            bits |= _FLAG_CHARS[ch]
        except KeyError:
            raise ValueError(f"unknown flag character {ch!r} in {flags!r}") from None
    return bits


def flag_str(bits: int) -> str:
    return "".join(ch for ch, bit in _FLAG_CHARS.items() if bits & bit) or "-"


class IsnSource(random.Random):
    """An `rng` for `Endpoint` that hands out the given ISNs in order, then fails loudly."""

    def __init__(self, *isns: int) -> None:
        super().__init__(0)
        self._isns = [isn & MASK for isn in isns]

    def getrandbits(self, k: int) -> int:
        assert k == 32, k
        assert self._isns, "the script ran out of ISNs: a connection nobody expected"
        return self._isns.pop(0)


@dataclass
class Sent:
    """One datagram the endpoint emitted, when and to whom."""

    time: float
    addr: Addr
    raw: bytes
    seg: wire.Segment = field(init=False)

    def __post_init__(self) -> None:
        self.seg = wire.parse(self.raw)

    def __repr__(self) -> str:
        s = self.seg
        return (f"<{flag_str(s.flags)} seq={s.seq} ack={s.ack} win={s.window}"
                f" len={len(s.payload)} {s.options} to {self.addr} at {self.time}>")


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: object = _Any()


class Script:
    """One endpoint under test, a hand-played peer and a fake clock."""

    def __init__(self, config: Config | None = None, *, port: int = 8000,
                 listening: bool = False, backlog: int = 128, isns: tuple[int, ...] = (),
                 seed: int | None = None, peer: Addr = PEER, host: str = LOCAL_HOST,
                 now: float = 0.0) -> None:
        self.config = config if config is not None else Config()
        rng: random.Random | None
        if isns:
            rng = IsnSource(*isns)
        elif seed is not None:
            rng = random.Random(seed)
        else:
            rng = None
        self.ep = Endpoint(self.config, port, listening=listening, backlog=backlog, rng=rng)
        self.addr: Addr = (host, port)
        self.peer = peer
        self.now = now
        self.sent: deque[Sent] = deque()
        self.events: list[tuple[Connection, Event]] = []
        self.conns: dict[Connection, None] = {}  # every connection seen, in order of birth
        self.last_sent: Sent | None = None  # what the last `expect` popped

    # ------------------------------------------------------------------ driving

    def connect(self, peer: Addr | None = None) -> Connection:
        conn = self.ep.connect(peer or self.peer, self.now)
        self.conns[conn] = None
        self._step()
        return conn

    def inject(self, flags: Flags, seq: int, ack: int = 0, window: int = 65535,
               payload: bytes = b"", options: wire.Options | None = None, *,
               peer: Addr | None = None, src_port: int | None = None,
               dst_port: int | None = None, flush: bool = True) -> None:
        """The peer sends one exact segment; the endpoint takes it at `now`.

        With `flush=False` the endpoint is not asked for output afterwards, as when an
        adapter feeds it a whole batch of datagrams before collecting what to send.
        """
        peer = peer or self.peer
        seg = wire.Segment(src_port if src_port is not None else peer[1],
                           dst_port if dst_port is not None else self.ep.port,
                           seq & MASK, ack & MASK, flags_of(flags), window, payload,
                           options if options is not None else wire.Options())
        self.inject_raw(wire.build(seg), peer, flush=flush)

    def inject_raw(self, data: bytes, peer: Addr | None = None, *, flush: bool = True) -> None:
        self.ep.receive_datagram(data, peer or self.peer, self.now)
        if flush:
            self._step()
        else:
            for conn in self.ep.connections.values():
                self.conns.setdefault(conn, None)

    def app(self) -> None:
        """Let the endpoint react to application calls made on a connection."""
        self._step()

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    def advance_to(self, t: float) -> None:
        """Move the clock to `t`, firing each timer at its own deadline on the way."""
        assert t >= self.now, (t, self.now)
        for _ in range(100_000):
            deadline = self.ep.get_timer()
            if deadline is None or deadline > t:
                break
            self.now = max(self.now, deadline)
            self.ep.handle_timer(self.now)
            self._step()
        else:
            raise AssertionError(f"timers keep firing at {self.now}: a deadline that never moves")
        self.now = t
        self._step()

    def deliver_to(self, other: Script, count: int | None = None) -> int:
        """Hand what this endpoint sent (all, or the first `count`) to `other` as-is."""
        n = 0
        while self.sent and (count is None or n < count):
            item = self.sent.popleft()
            assert item.addr == other.addr, (item, other.addr)
            other.now = max(other.now, self.now)
            other.inject_raw(item.raw, self.addr)
            n += 1
        return n

    # ------------------------------------------------------------------ asserting

    def expect(self, flags: Flags | object, seq: object = ANY, ack: object = ANY,
               window: object = ANY, payload: object = ANY, *, length: object = ANY,
               options: object = ANY, mss: object = ANY, wscale: object = ANY,
               at: object = ANY, peer: Addr | None = None) -> wire.Segment:
        """Pop the oldest datagram sent and check every field given (ports always)."""
        self._step()
        assert self.sent, f"expected {flags!r} seq={seq} ack={ack}, nothing sent"
        item = self.last_sent = self.sent.popleft()
        seg = item.seg
        want_peer = peer or self.peer
        where = f"{item!r}"
        assert item.addr == want_peer, f"sent to {item.addr}, expected {want_peer}: {where}"
        assert seg.src_port == self.ep.port, where
        assert seg.dst_port == want_peer[1], where
        if flags is not ANY:
            assert flag_str(seg.flags) == flag_str(flags_of(flags)), (
                f"flags {flag_str(seg.flags)}, expected {flag_str(flags_of(flags))}: {where}")
        if seq is not ANY:
            assert isinstance(seq, int)
            assert seg.seq == seq & MASK, f"seq {seg.seq}, expected {seq & MASK}: {where}"
        if ack is not ANY:
            assert isinstance(ack, int)
            assert seg.ack == ack & MASK, f"ack {seg.ack}, expected {ack & MASK}: {where}"
        if window is not ANY:
            assert seg.window == window, f"window {seg.window}, expected {window}: {where}"
        if payload is not ANY:
            assert bytes(seg.payload) == payload, f"payload differs: {where}"
        if length is not ANY:
            assert len(seg.payload) == length, f"length {len(seg.payload)}: {where}"
        if options is not ANY:
            assert seg.options == options, f"options {seg.options}, expected {options}: {where}"
        if mss is not ANY:
            assert seg.options.mss == mss, f"MSS option {seg.options.mss}: {where}"
        if wscale is not ANY:
            assert seg.options.wscale == wscale, f"wscale {seg.options.wscale}: {where}"
        if at is not ANY:
            assert isinstance(at, int | float)
            assert item.time == at, f"sent at {item.time}, expected at {at}: {where}"
        return seg

    def expect_nothing(self) -> None:
        self._step()
        assert not self.sent, f"expected silence, got {list(self.sent)}"

    # ------------------------------------------------------------------ looking

    @property
    def conn(self) -> Connection:
        """The newest connection with the default peer (it may be CLOSED and forgotten)."""
        for conn in reversed(list(self.conns)):
            if conn.peer == self.peer:
                return conn
        raise AssertionError(f"no connection with {self.peer}")

    def conn_for(self, peer: Addr) -> Connection:
        for conn in reversed(list(self.conns)):
            if conn.peer == peer:
                return conn
        raise AssertionError(f"no connection with {peer}")

    def events_of(self, conn: Connection | None = None,
                  kind: type | None = None) -> list[Event]:
        conn = conn or self.conn
        return [ev for c, ev in self.events
                if c is conn and (kind is None or isinstance(ev, kind))]

    def states(self, conn: Connection | None = None) -> list[State]:
        """The states `conn` went through, from the one before its first change."""
        changes = [ev for ev in self.events_of(conn, StateChanged)
                   if isinstance(ev, StateChanged)]
        if not changes:
            return [(conn or self.conn).state]
        for before, after in itertools.pairwise(changes):
            assert before.new == after.old, changes
        return [changes[0].old, *(ev.new for ev in changes)]

    def terminated(self, conn: Connection | None = None) -> list[Exception | None]:
        return [ev.error for ev in self.events_of(conn, Terminated)
                if isinstance(ev, Terminated)]

    # ------------------------------------------------------------------ internals

    def _step(self) -> None:
        for conn in self.ep.connections.values():
            self.conns.setdefault(conn, None)
        for data, addr in self.ep.datagrams_to_send(self.now):
            self.sent.append(Sent(self.now, addr, bytes(data)))
        # What an event loop does next: run the timers already due. (The core defers
        # some ACKs to "the next timer service, now", so that an application answering
        # at once sends one segment instead of two.)
        deadline = self.ep.get_timer()
        if deadline is not None and deadline <= self.now:
            self.ep.handle_timer(self.now)
            for data, addr in self.ep.datagrams_to_send(self.now):
                self.sent.append(Sent(self.now, addr, bytes(data)))
        for conn in self.ep.accept_queue:
            self.conns.setdefault(conn, None)
        for conn in self.conns:
            while (ev := conn.next_event()) is not None:
                self.events.append((conn, ev))


def relay(src: Script, dst: Script, flags: Flags, seq: object = ANY, ack: object = ANY,
          **fields: object) -> wire.Segment:
    """`src.expect(...)` one datagram, then hand exactly those bytes to `dst`."""
    seg = src.expect(flags, seq, ack, peer=dst.addr, **fields)  # type: ignore[arg-type]
    assert src.last_sent is not None
    dst.now = max(dst.now, src.now)
    dst.inject_raw(src.last_sent.raw, src.addr)
    return seg
