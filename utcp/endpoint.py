"""A sans-IO endpoint: every connection that shares one UDP socket.

Connections are found by the peer's UDP address, which is what a NAT leaves intact
(docs/protocol.md §2: never by the header's source port). A listening endpoint keeps the SYN
queue (half-open connections) and the accept queue, both bounded by `backlog`
(docs/protocol.md §4.6). Connections in TIME_WAIT stay in the table until 2 x MSL has passed,
so the same peer cannot start a new connection over a lingering old one (§4.4).

The caller drives it like a connection: `receive_datagram`, `handle_timer`, then
`datagrams_to_send` and `get_timer`; `touched()` names the connections whose events
the application side should look at.
"""

from __future__ import annotations

import collections
import heapq
import random
from collections.abc import Callable
from typing import Final

from utcp import crypto, log, secure, wire
from utcp import seq as sq
from utcp.buffers import MemoryBudget, ReassemblyBudget
from utcp.config import Config
from utcp.connection import Connection, release, window_scale_for
from utcp.isn import keyed_isn
from utcp.state import State

Addr = tuple[str, int]

# Members read per datagram or per service, as module constants: through its class
# (`State.CLOSED`) the pure-Python build finds one by EnumType's slow attribute path
# (utcp/connection.py does the same); under mypyc both are C statics
_CLOSED: Final = State.CLOSED
_LISTEN: Final = State.LISTEN
_SYN_RCVD: Final = State.SYN_RCVD
_ESTABLISHED: Final = State.ESTABLISHED
_TIME_WAIT: Final = State.TIME_WAIT
_NEVER: Final = float("-inf")


def loopback(host: str) -> bool:
    """Whether `host` (a numeric address, as the socket reports peers) is a loopback
    address, where no link lies between the two ends to carry less than the route."""
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")


def peer_key(addr: tuple[object, ...]) -> Addr:
    """IPv6 addresses come as 4-tuples; flow info and scope do not name a peer."""
    return (str(addr[0]), int(addr[1]))  # type: ignore[call-overload]


class Endpoint:
    def __init__(self, config: Config, port: int, *, listening: bool = False,
                 backlog: int = 128, rng: random.Random | None = None,
                 secrets: crypto.HandshakeSecrets | None = None) -> None:
        if backlog < 1:
            backlog = 1
        self.config = config
        self.port = port
        self.listening = listening
        self.backlog = backlog
        self.connections: dict[Addr, Connection] = {}
        self.accept_queue: collections.deque[Connection] = collections.deque()
        self.syn_queue: set[Connection] = set()
        # `counters`, made at the first count: a client's endpoint (the asyncio adapter
        # makes one per connection) usually counts nothing, and a Counter's __init__ is
        # Python code (collections), a tenth of the endpoint's construction compiled
        self._counters: collections.Counter[str] | None = None
        self._rng = rng
        self._dirty: dict[Connection, None] = {}
        self._touched: dict[Connection, None] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._heap: list[tuple[float, int, Connection]] = []
        self._armed: dict[Connection, float] = {}
        self._filed = 0  # heap entries made: the tie-break between equal deadlines
        # Whether `_heap` holds every armed deadline: not while one connection at most has
        # a deadline (see `_file`), and it is rebuilt when a second one arms.
        self._heap_whole = True
        # `secrets`: one the caller shares between endpoints (the asyncio adapter's client
        # endpoints, one per connection: RFC 6528's one secret per host), else its own
        self._secrets = secrets if secrets is not None else crypto.HandshakeSecrets()
        self._isn_key = self._secrets.isn_key  # F's key, for the native call (utcp.isn)
        self._cookies_until = _NEVER  # a cookie sent before this may still come back
        self.reassembly = ReassemblyBudget(config.max_reassembly_bytes)
        self.memory = MemoryBudget(config.max_buffer_memory)
        # Connections that may be evicted to make room for a new one, longest idle first:
        # those in TIME_WAIT, and those established that never carried a byte either way
        # (what a flood of completed but idle handshakes leaves behind).
        self._evictable: collections.OrderedDict[Connection, None] = \
            collections.OrderedDict()
        # Set by the I/O layer: the largest segment payload the route to a peer carries.
        self.route_mss: Callable[[Addr], int] | None = None
        self._secure = (secure.SecureLayer(config, self.counters, listening=listening,
                                           send=self._send_raw)
                        if config.secure else None)
        # anti-amplification: bytes received from / sent to each unvalidated address
        self._unvalidated: dict[Connection, list[int]] = {}

    @property
    def counters(self) -> collections.Counter[str]:
        """What the endpoint dropped, refused or answered itself, by reason."""
        counters = self._counters
        if counters is None:
            counters = self._counters = collections.Counter()
        return counters

    # ------------------------------------------------------------------ opening

    def connect(self, addr: tuple[object, ...], now: float) -> Connection:
        """Active open towards `addr`; raises if a connection to it is still in the table."""
        key = peer_key(addr)
        old = self.connections.get(key)
        if old is not None and old.state is State.CLOSED:
            self._forget(old)  # closed since the last output: gone already
        elif old is not None:
            raise OSError(98, f"a connection to {key[0]}:{key[1]} exists"
                              f" (state {old.state.name})")
        if len(self.connections) >= self.config.max_connections and \
                not self._make_room(now):
            raise OSError(105, f"endpoint full: {len(self.connections)} connections"
                               " (Config.max_connections)")
        conn = self._new_connection(key, now)
        if self._secure is not None:
            self._secure.start_client(conn)
        conn.connect(now)
        return conn

    def accept(self) -> Connection | None:
        """The oldest completed connection not yet taken, or None."""
        while self.accept_queue:
            conn = self.accept_queue.popleft()
            if conn.state is not State.CLOSED:
                return conn
        return None

    def _new_connection(self, key: Addr, now: float, iss: int | None = None) -> Connection:
        if iss is None:
            iss = (self._rng.getrandbits(32) if self._rng is not None
                   else keyed_isn(self._isn_key, key, self.port, now))
        conn = Connection(self.config, local_port=self.port, remote_port=key[1], iss=iss,
                          name=f"{key[0]}:{key[1]}")
        conn.peer = key
        conn.notify = self._touch
        conn.rcv.budget = self.reassembly
        conn.memory_budget = self.memory
        if self.route_mss is not None and self.config.pmtu_probing:
            conn.max_mss = max(self.config.mss, self.route_mss(key))
            if loopback(key[0]):
                # the route is usually the whole path: start at its size, as Linux's
                # TCP does on loopback, rather than probe up to it while the first
                # megabyte goes in small segments (the peer's MSS option caps it, and
                # take_syn keeps the search's black-hole fallback: utcp.pmtu)
                conn.snd_mss = conn.max_mss
        self.connections[key] = conn
        return conn

    # ------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes | bytearray | memoryview,
                         addr: tuple[object, ...], now: float) -> None:
        # recvfrom gives (str, int) already; IPv6 adds flow info and scope id
        key: Addr = addr if len(addr) == 2 else (addr[0], addr[1])  # type: ignore[assignment]
        size = len(data)  # as received: secure mode replaces `data` by what it opened
        conn = self.connections.get(key)
        if conn is not None and conn.state is _CLOSED:
            self._forget(conn)  # closed since the last output: the peer may start anew
            conn = None
        handshake: tuple[bytes, crypto.Responder, bytes] | None = None
        if self._secure is not None and len(data) >= wire.HEADER_LEN:
            opened = self._open_secure(data, key, conn, now)
            if opened is None:
                return  # counted, and answered if it is to be
            data, conn, handshake = opened
        try:
            seg = wire.parse(data)
        except wire.MalformedSegment as exc:
            self.counters[f"malformed: {exc.reason}"] += 1
            if log.enabled():
                log.emit("drop", reason=exc.reason, peer=str(addr[:2]))
            return
        if self._secure is not None and conn is None and handshake is None:
            # neither a connection's segment nor a handshake that authenticates: what
            # follows (a RST, or nothing) is what plaintext TCP would do, but count it
            # (after parsing: a malformed one is counted once, as malformed)
            self._secure.drop("segment for no connection")
        if conn is not None:
            # both maps are empty while every connection is validated and busy: test
            # that before hashing (this runs for every datagram)
            if self._unvalidated:
                budget = self._unvalidated.get(conn)
                if budget is not None:
                    budget[0] += size
            if self._evictable and conn in self._evictable:
                self._evictable.move_to_end(conn)  # idle no more
            conn.receive(seg, now)  # its memory is recharged when it is serviced
            return
        self._no_connection(seg, key, now, size, handshake)

    def receive_glued(self, data: bytes | bytearray | memoryview, step: int,
                      addr: tuple[object, ...], now: float) -> None:
        """One UDP GRO read: datagrams of `step` bytes glued end to end (the last maybe
        shorter), all from `addr`. Equivalent to `receive_datagram` on each in turn, but
        where header prediction would take each of them (`Connection.takes_runs`), a run
        of in-order data that one segment can stand for (`wire.glued_run`: headers equal
        but for the sequence number) goes through the connection as that segment, as
        Linux's TCP GRO merges them: one parse, one pass, one copy of the payload, and
        one ACK where the per-datagram path might send one per two (Linux's GRO receiver
        does the same). Secure mode opens each datagram on its own."""
        n = len(data)
        view = data if isinstance(data, memoryview) else memoryview(data)
        if step <= 0 or step >= n:  # one datagram (a step of 0 would never move on)
            self.receive_datagram(view, addr, now)
            return
        key: Addr = addr if len(addr) == 2 else (addr[0], addr[1])  # type: ignore[assignment]
        conn = self.connections.get(key)
        begin = 0
        while begin < n:
            end = min(begin + step, n)
            if (conn is not None and conn.takes_runs() and self._secure is None
                    and (not self._unvalidated or conn not in self._unvalidated)):
                end = wire.glued_run(view, begin, step, n, conn.rcv_nxt & sq.MASK,
                                     conn.rcv_adv - conn.rcv_nxt)
            if end - begin <= step:
                self.receive_datagram(view[begin:end], addr, now)
            else:
                assert conn is not None
                if self._evictable and conn in self._evictable:
                    self._evictable.move_to_end(conn)
                rcv_nxt = conn.rcv_nxt
                conn.receive(wire.parse_run(view, begin, end, step), now)
                conn.took_run((end - begin + step - 1) // step, conn.rcv_nxt > rcv_nxt)
            begin = end

    def _open_secure(self, data: bytes | bytearray | memoryview, key: Addr,
                     conn: Connection | None, now: float,
                     ) -> tuple[bytes | bytearray | memoryview, Connection | None,
                                tuple[bytes, crypto.Responder, bytes] | None] | None:
        """Secure mode's view of a datagram: a connection's segment opened, a SYN's
        handshake verified, a known connection's segment from a new address (a NAT
        rebinding); None when it is consumed or dropped (counted)."""
        assert self._secure is not None
        handshake = None
        if conn is not None:
            opened = self._secure.open(conn, data)
            if opened is None:
                return None
            return opened, conn, None
        if data[13] & wire.SYN and not data[13] & (wire.ACK | wire.RST):
            if self.listening:
                room = self._syn_room()
                got = self._secure.read_syn(data, key, now, room, self.backlog,
                                            evict=room <= 0 and self._may_evict())
                if got is None:
                    return None
                hlen = (data[12] >> 4) * 4
                handshake = (got[0], got[1], bytes(data[hlen:]))
                data = got[0]
        elif not data[13] & wire.SYN:
            moved = self._secure.rebind(self.connections, data, key)
            if moved is not None:
                conn, reopened = moved
                if reopened is None:
                    return None  # a path validation segment, consumed
                data = reopened
        return data, conn, handshake

    def _no_connection(self, seg: wire.Segment, key: Addr, now: float, size: int,
                       handshake: tuple[bytes, crypto.Responder, bytes] | None) -> None:
        """A segment no connection takes: a SYN for the listener, a SYN cookie's ACK,
        or what plaintext TCP answers with a RST."""
        flags = seg.flags
        if flags & wire.RST:
            self.counters["RST for no connection"] += 1  # never answer RST with RST
            return
        if self.listening and flags & wire.SYN and not flags & wire.ACK:
            self._on_syn(seg, key, now, size, handshake)
            return
        if (self.listening and self._secure is None and flags & wire.ACK
                and not flags & wire.SYN and self._accept_cookie(seg, key, now)):
            return
        if self.listening and seg.payload and now < self._cookies_until:
            # Likely a segment of a cookie connection that overtook the one bearing the
            # cookie (seq = ISN + 1), or outlived its loss. A RST (seq = its ACK, the
            # client's rcv_nxt) would reset the client; its retransmission brings the cookie.
            self.counters["dropped: data for no connection while SYN cookies are out"] += 1
            return
        self._reset_for(seg, key)

    def _on_syn(self, seg: wire.Segment, key: Addr, now: float, size: int,
                handshake: tuple[bytes, crypto.Responder, bytes] | None) -> None:
        if len(self.accept_queue) >= self.backlog:
            self.counters["SYN dropped: accept queue full"] += 1  # as Linux: the app is slow
            return
        if len(self.syn_queue) >= self.backlog or len(self.connections) >= \
                self.config.max_connections:
            if self._secure is None:
                self._send_cookie(seg, key, now)  # RFC 4987: no state for this SYN
                return
            # read_syn let this SYN through a full table only with a retry cookie (its
            # address proven) and an authentic msg1: as a returning SYN cookie, it may
            # take an idle connection's place
            if not (handshake is not None and len(self.syn_queue) < self.backlog
                    and self._make_room(now)):
                self.counters["SYN dropped: queue full"] += 1
                return
        conn = self._new_connection(key, now)
        self.syn_queue.add(conn)
        self._unvalidated[conn] = [size, 0]
        if handshake is not None and self._secure is not None:
            self._secure.adopt(conn, handshake[1], handshake[0], handshake[2])
        conn.accept_syn(seg, now)
        self.counters["SYN accepted"] += 1

    def _send_cookie(self, seg: wire.Segment, key: Addr, now: float) -> None:
        opts = seg.options
        peer_mss = opts.mss if opts.mss else 536
        ts = self.config.timestamps and opts.timestamps is not None
        sack = ts and self.config.sack and opts.sack_permitted
        cookie, tsval = self._secrets.make_cookie(key, self.port, seg.seq, peer_mss,
                                                  opts.wscale, now, sack=sack, timestamps=ts)
        # Window scaling needs the peer's shift back, which only the timestamp's bits
        # have room for: without them neither side scales (RFC 7323 §2.2), as Linux.
        our_wscale = window_scale_for(self.config.recv_buffer) \
            if ts and opts.wscale is not None else None
        synack = wire.Segment(self.port, key[1], cookie, sq.wrap(seg.seq + 1),
                              wire.SYN | wire.ACK, min(self.config.recv_buffer, 0xFFFF),
                              options=wire.Options(
                                  mss=self.config.mss, wscale=our_wscale, sack_permitted=sack,
                                  timestamps=(tsval, opts.timestamps[0])
                                  if tsval is not None and opts.timestamps else None))
        self._out.append((wire.build(synack), key))
        self.counters["SYN cookies sent"] += 1
        # Only while cookies are out is an ACK for no connection checked as one (Linux's
        # tcp_synq_no_recent_overflow): otherwise a blind attacker could try the MAC at
        # leisure with ACKs alone, no SYN flood needed to open the door.
        self._cookies_until = now + crypto.COOKIE_LIFETIME

    def _accept_cookie(self, seg: wire.Segment, key: Addr, now: float) -> bool:
        """An ACK for no connection may return one of our cookies: then it is a connection."""
        if now >= self._cookies_until:
            return False  # none sent within a cookie's lifetime: nothing to check
        self.counters["SYN cookies checked"] += 1
        cookie = (seg.ack - 1) & sq.MASK
        ts = seg.options.timestamps if self.config.timestamps else None
        facts = self._secrets.check_cookie(key, self.port, (seg.seq - 1) & sq.MASK, cookie,
                                           now, None if ts is None else ts[1])
        if facts is None:
            return False
        if len(self.accept_queue) >= self.backlog:
            # Linux's listen overflow: the client is ESTABLISHED, so a RST would reset it;
            # dropped, its next segment brings the cookie again once there is room
            self.counters["SYN cookie dropped: accept queue full"] += 1
            return True
        if len(self.connections) >= self.config.max_connections and \
                not self._make_room(now):
            self.counters["SYN cookie dropped: endpoint full"] += 1
            return True  # nothing evictable: as a full accept queue, the client retries
        self.counters["SYN cookies accepted"] += 1
        conn = self._new_connection(key, now, iss=cookie)
        self.syn_queue.add(conn)  # moves to the accept queue when serviced
        conn.accept_cookie(seg, facts.mss, facts.wscale, now, sack=facts.sack,
                           timestamps=facts.timestamps)
        conn.recharge()
        return True

    def _make_room(self, now: float) -> bool:
        """Evict the longest-idle evictable connection; False if there is none.

        Only a client whose address is validated gets here (a cookie came back, or our
        own connect), so spoofed SYNs cannot evict anyone. An established connection is
        told with RST and its application sees ConnectionResetError; one in TIME_WAIT
        goes silently, as Linux recycles TIME_WAIT buckets when it must.
        """
        while self._evictable:
            conn, _ = self._evictable.popitem(last=False)
            if self.connections.get(conn.peer) is not conn or conn.state is State.CLOSED:
                continue
            if conn.state is State.TIME_WAIT:
                conn.fail(None, send_rst=False)
            else:
                conn.fail(ConnectionResetError("evicted: the endpoint is full"
                                                " (Config.max_connections)"), send_rst=True)
            # out now, then forgotten: secure mode seals the RST with the session that
            # forgetting drops (it was lost, and the peer waited for keepalive)
            self._service(conn, now, self._out)
            self.counters["evicted idle connections"] += 1
            return True
        return False

    def _may_evict(self) -> bool:
        """Whether only the connection table is full, with someone evictable in it."""
        return (len(self.accept_queue) < self.backlog and len(self.syn_queue) < self.backlog
                and bool(self._evictable))

    def _syn_room(self) -> int:
        """How many more half-open connections _on_syn would take now."""
        if len(self.accept_queue) >= self.backlog:
            return 0
        return min(self.backlog - len(self.syn_queue),
                   self.config.max_connections - len(self.connections))

    def _send_raw(self, data: bytes, addr: Addr) -> None:
        self._out.append((data, addr))

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
        armed = self._armed
        if len(armed) < 2:
            if self._heap:
                # Stale entries of connections gone since would keep them (and what they
                # hold) alive for as long as one deadline at most is armed: an idle
                # server after a burst of connections. `_file` rebuilds when needed.
                self._heap = []
                self._heap_whole = False
            for deadline in armed.values():  # one connection's: no heap (`_file`)
                return deadline
            return None
        heap = self._heap
        while heap:
            deadline, _, conn = heap[0]
            if armed.get(conn) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: re-armed or closed since
        return None

    def handle_timer(self, now: float) -> None:
        armed = self._armed
        if len(armed) < 2:
            for conn, deadline in armed.items():  # at most one: no heap (`_file`)
                if deadline <= now:
                    del armed[conn]
                    conn.handle_timer(now)
                    self._touch(conn)
                break
            return
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

    def has_output(self) -> bool:
        """Whether `datagrams_to_send` has anything to do: a connection touched since
        (its output, events or deadline may have changed) or a datagram of the endpoint's
        own (a RST, a SYN cookie). When False it would return nothing and leave
        `touched()` empty, so a driver may skip the call."""
        return bool(self._dirty) or bool(self._out)

    def touched(self) -> list[Connection]:
        """Connections serviced since the last call: their events may be waiting."""
        conns = list(self._touched)
        self._touched.clear()
        return conns

    def _service(self, conn: Connection, now: float, out: list[tuple[bytes, Addr]]) -> None:
        peer = conn.peer
        datagrams = conn.datagrams_to_send(now)
        if self._secure is not None and datagrams:
            sealed = (self._secure.seal(conn, d) for d in datagrams)
            datagrams = [d for d in sealed if d is not None]
        state = conn.state
        # empty for a client's endpoint, and for a server's once handshakes are done:
        # tested before hashing the connection
        budget = self._unvalidated.get(conn) if self._unvalidated else None
        if budget is not None:
            if state is not _SYN_RCVD and state is not _LISTEN:
                del self._unvalidated[conn]  # the handshake completed: address validated
            else:
                datagrams = self._within_budget(budget, datagrams)
        for datagram in datagrams:
            out.append((datagram, peer))
        self._touched[conn] = None
        # Once per connection per batch of datagrams, not per datagram: admission control
        # (Receiver.admit) counts the connection's own growth since exactly, and
        # other connections' growth within one batch is small.
        conn.recharge()
        if state is _CLOSED:
            self._forget(conn)
            return
        if state is _TIME_WAIT or (state is _ESTABLISHED and not conn.counters.bytes_sent
                                   and not conn.counters.bytes_received and not conn.queued):
            if conn not in self._evictable:
                self._evictable[conn] = None
        elif self._evictable and conn in self._evictable:
            del self._evictable[conn]
        if self.syn_queue and state is not _SYN_RCVD and state is not _LISTEN \
                and conn in self.syn_queue:
            self.syn_queue.discard(conn)
            self.accept_queue.append(conn)
        deadline = conn.get_timer()
        if deadline is None:
            self._armed.pop(conn, None)
        elif self._armed.get(conn) != deadline:
            self._armed[conn] = deadline
            self._file(conn, deadline)

    def _file(self, conn: Connection, deadline: float) -> None:
        """Push a connection's new deadline; the entry it replaces stays in the heap,
        stale, until it reaches the top. A deadline that moves later with every segment
        (the delayed ACK armed by one and sent by the next, the RTO) leaves stale entries
        behind the live ones faster than they surface: a ping-pong grew one connection's
        heap to thousands, and every push and pop paid for the depth. So when stale
        entries outnumber the live ones, the heap is rebuilt from the live ones.

        While one connection at most has a deadline (a client's endpoint, which the asyncio
        adapter makes per connection; a server between connections), `_armed` alone holds
        it: `get_timer` and `handle_timer` read it there, and no entry is pushed or popped
        (a sixth of what a ping-pong exchange cost the adapter's timer handling). The
        heap is rebuilt from `_armed` when a second connection arms."""
        armed = self._armed
        if len(armed) < 2:
            self._heap_whole = False
            return
        heap = self._heap
        if self._heap_whole:
            self._filed += 1
            heapq.heappush(heap, (deadline, self._filed, conn))
            if len(heap) <= 2 * len(armed) + 16:
                return
        live = [(at, i, c) for i, (c, at) in enumerate(armed.items(), self._filed)]
        self._filed += len(live)
        heapq.heapify(live)
        self._heap = live
        self._heap_whole = True

    def _within_budget(self, budget: list[int], datagrams: list[bytes]) -> list[bytes]:
        """Before the address is validated, send at most 3x what it sent us (as QUIC)."""
        allowed = []
        for datagram in datagrams:
            if budget[1] + len(datagram) > 3 * budget[0]:
                self.counters["amplification limit"] += 1
                continue
            budget[1] += len(datagram)
            allowed.append(datagram)
        return allowed

    def _forget(self, conn: Connection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
            release(conn)  # CLOSED, from every caller; forgotten once (it may be again)
        self.syn_queue.discard(conn)
        self._armed.pop(conn, None)
        self._unvalidated.pop(conn, None)
        self._evictable.pop(conn, None)
        if self._secure is not None:
            self._secure.forget(conn)

    def _touch(self, conn: Connection) -> None:
        self._dirty[conn] = None
