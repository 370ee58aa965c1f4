"""A sans-IO endpoint: every connection that shares one UDP socket.

Connections are found by the peer's UDP address, which is what a NAT leaves intact
(DESIGN §2: never by the header's source port). A listening endpoint keeps the SYN
queue (half-open connections) and the accept queue, both bounded by `backlog`
(DESIGN §4.6). Connections in TIME_WAIT stay in the table until 2 x MSL has passed,
so the same peer cannot start a new connection over a lingering old one (§4.4).

The caller drives it like a connection: `receive_datagram`, `handle_timer`, then
`datagrams_to_send` and `get_timer`; `touched()` names the connections whose events
the application side should look at.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random

from utcp import log, wire
from utcp import seq as sq
from utcp.config import Config
from utcp.connection import Connection
from utcp.state import State

Addr = tuple[str, int]


def peer_key(addr: tuple[object, ...]) -> Addr:
    """IPv6 addresses come as 4-tuples; flow info and scope do not name a peer."""
    return (str(addr[0]), int(addr[1]))  # type: ignore[call-overload]


class Endpoint:
    def __init__(self, config: Config, port: int, *, listening: bool = False,
                 backlog: int = 128, rng: random.Random | None = None) -> None:
        if backlog < 1:
            backlog = 1
        self.config = config
        self.port = port
        self.listening = listening
        self.backlog = backlog
        self.connections: dict[Addr, Connection] = {}
        self.accept_queue: collections.deque[Connection] = collections.deque()
        self.syn_queue: set[Connection] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self._rng = rng
        self._dirty: dict[Connection, None] = {}
        self._touched: dict[Connection, None] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._heap: list[tuple[float, int, Connection]] = []
        self._armed: dict[Connection, float] = {}
        self._tiebreak = itertools.count()

    # ------------------------------------------------------------------ opening

    def connect(self, addr: tuple[object, ...], now: float) -> Connection:
        """Active open towards `addr`; raises if a connection to it is still in the table."""
        key = peer_key(addr)
        old = self.connections.get(key)
        if old is not None and old.state == State.CLOSED:
            self._forget(old)  # closed since the last output: gone already
        elif old is not None:
            raise OSError(98, f"a connection to {key[0]}:{key[1]} exists"
                              f" (state {old.state.name})")
        conn = self._new_connection(key)
        conn.connect(now)
        return conn

    def accept(self) -> Connection | None:
        """The oldest completed connection not yet taken, or None."""
        while self.accept_queue:
            conn = self.accept_queue.popleft()
            if conn.state != State.CLOSED:
                return conn
        return None

    def _new_connection(self, key: Addr) -> Connection:
        iss = self._rng.getrandbits(32) if self._rng is not None else None
        conn = Connection(self.config, local_port=self.port, remote_port=key[1], iss=iss,
                          name=f"{key[0]}:{key[1]}")
        conn.peer = key
        conn._notify = self._touch
        self.connections[key] = conn
        return conn

    # ------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes | bytearray | memoryview,
                         addr: tuple[object, ...], now: float) -> None:
        try:
            seg = wire.parse(data)
        except wire.MalformedSegment as exc:
            self.counters[f"malformed: {exc.reason}"] += 1
            if log.enabled():
                log.emit("drop", reason=exc.reason, peer=str(addr[:2]))
            return
        key = peer_key(addr)
        conn = self.connections.get(key)
        if conn is not None and conn.state == State.CLOSED:
            self._forget(conn)  # closed since the last output: the peer may start anew
            conn = None
        if conn is not None:
            conn.receive(seg, now)
            return
        flags = seg.flags
        if flags & wire.RST:
            self.counters["RST for no connection"] += 1  # never answer RST with RST
            return
        if self.listening and flags & wire.SYN and not flags & wire.ACK:
            if len(self.syn_queue) >= self.backlog or len(self.accept_queue) >= self.backlog:
                self.counters["SYN dropped: queue full"] += 1
                return
            conn = self._new_connection(key)
            self.syn_queue.add(conn)
            conn.accept_syn(seg, now)
            self.counters["SYN accepted"] += 1
            return
        self._reset_for(seg, key)

    def _reset_for(self, seg: wire.Segment, key: Addr) -> None:
        """RFC 9293 §3.10.7.1: answer a segment for no connection with RST."""
        self.counters["RST sent for no connection"] += 1
        if seg.flags & wire.ACK:
            out = wire.build_fast(self.port, key[1], seg.ack, 0, wire.RST, 0)
        else:
            out = wire.build_fast(self.port, key[1], 0, sq.wrap(seg.seq + seg.seg_len),
                                  wire.RST | wire.ACK, 0)
        self._out.append((out, key))

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, conn = heap[0]
            if self._armed.get(conn) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: re-armed or closed since
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if self._armed.get(conn) != deadline:
                continue
            del self._armed[conn]
            conn.handle_timer(now)
            self._touch(conn)

    # ------------------------------------------------------------------ output

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out = self._out
        self._out = []
        while self._dirty:
            dirty = list(self._dirty)
            self._dirty.clear()
            for conn in dirty:
                self._service(conn, now, out)
        return out

    def touched(self) -> list[Connection]:
        """Connections serviced since the last call: their events may be waiting."""
        conns = list(self._touched)
        self._touched.clear()
        return conns

    def _service(self, conn: Connection, now: float, out: list[tuple[bytes, Addr]]) -> None:
        peer = conn.peer
        for datagram in conn.datagrams_to_send(now):
            out.append((datagram, peer))
        self._touched[conn] = None
        state = conn.state
        if state == State.CLOSED:
            self._forget(conn)
            return
        if conn in self.syn_queue and state not in (State.SYN_RCVD, State.LISTEN):
            self.syn_queue.discard(conn)
            self.accept_queue.append(conn)
        deadline = conn.get_timer()
        if deadline is None:
            self._armed.pop(conn, None)
        elif self._armed.get(conn) != deadline:
            self._armed[conn] = deadline
            heapq.heappush(self._heap, (deadline, next(self._tiebreak), conn))

    def _forget(self, conn: Connection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        self.syn_queue.discard(conn)
        self._armed.pop(conn, None)

    def _touch(self, conn: Connection) -> None:
        self._dirty[conn] = None
