"""One UDP socket on the event loop, driving one sans-IO `Endpoint`.

asyncio's own datagram transport reads one datagram per loop iteration into a fresh
256 KiB buffer; here every readable wake-up drains the socket into one preallocated
buffer, feeds the endpoint, and then flushes its output once (docs/architecture.md). Writes from
the application are coalesced into one flush per loop iteration (`call_soon`), and the
endpoint's earliest deadline is one `call_at` handle, re-armed only when it changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import heapq
import socket
import struct
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from utcp import log, pcap
from utcp.aio import batch, shutdown
from utcp.aio.shutdown import FIN_UNACKED
from utcp.buffers import mypyc_attr
from utcp.endpoint import Addr, Endpoint, peer_key
from utcp.state import SYNCHRONIZED, State

if TYPE_CHECKING:
    from utcp.config import Config
    from utcp.connection import Connection

RECV_BATCH = 512            # datagrams read per wake-up at most, so timers still run
# After a wake-up that found one datagram (its second read found the socket empty), the
# next ones read one datagram and stop: a request-response exchange then pays one read
# per wake-up, as asyncio's TCP transport does, not a second one that raises EAGAIN. The
# loop polls level-triggered, so anything left is read at its next iteration; a wake-up
# that finds more than one datagram, or this many in a row, goes back to draining.
LONE_READS = 8
# A client port files this many later deadlines between two timer wake-ups, then keeps
# its early one (`ClientTimers.keeps`): a connect, request and close moves its deadline
# later about three times, an exchange of data with nearly every segment.
REFILE_BEFORE_KEEPING: Final = 4
SOCKET_BUFFER = 4 << 20     # SO_RCVBUF / SO_SNDBUF asked for: a window of 1400-byte segments
MAX_DATAGRAM = 65535
_GRO_CMSG_SPACE = batch.GRO_CMSG_SPACE


# Each buffer's options in the order tried: the FORCE variant first where the socket module
# has it. Looked up once: every client socket is set up here, and a `getattr` that misses
# (CPython's socket module names neither FORCE constant) formats an AttributeError's
# message each time, most of what the setup of the two buffers cost.
_BUFFER_OPTIONS: tuple[tuple[int, ...], ...] = tuple(
    tuple(name for name in (getattr(socket, force, None), opt) if name is not None)
    for opt, force in ((socket.SO_RCVBUF, "SO_RCVBUFFORCE"),
                       (socket.SO_SNDBUF, "SO_SNDBUFFORCE")))


def set_socket_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for large kernel buffers; root may exceed rmem_max with the FORCE variants."""
    level = socket.SOL_SOCKET
    for names in _BUFFER_OPTIONS:
        for name in names:
            try:
                sock.setsockopt(level, name, size)
                break
            except OSError:
                continue


IP_MTU_DISCOVER, IP_MTU, IP_PMTUDISC_PROBE = 10, 14, 3           # Linux <linux/in.h>
IPV6_MTU_DISCOVER, IPV6_MTU, IPV6_PMTUDISC_PROBE = 23, 24, 3     # Linux <linux/in6.h>
# Room left in a datagram for the TCP header and its options (and secure mode's counter).
HEADER_ROOM = 20 + 40
MAX_UDP_PAYLOAD = 65507


def set_dont_fragment(sock: socket.socket, family: int | None = None) -> None:
    """Never let the kernel fragment: a segment too big for the path must be lost (or
    refused with EMSGSIZE locally), which is what path MTU probing learns from.
    `family`: the socket's, when the caller has it (`socket.family` is a Python property
    that makes an enum member each time)."""
    try:
        if (sock.family if family is None else family) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
    except OSError:
        pass


IP_RECVERR, IPV6_RECVERR = 11, 25                               # Linux <linux/in.h>, in6.h
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3                    # <linux/errqueue.h>
_EXTENDED_ERR = struct.Struct("=IBBBBII")   # struct sock_extended_err, then the offender
_RECVERR_KINDS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
ERRQUEUE_READS = 64     # error-queue entries read per call at most
ERRQUEUE_QUOTE = 64     # bytes of the quoted datagram kept: our header's ports and seq
# What a queued ICMP error also leaves in sk_err, for the next socket call to report once.
_ICMP_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.EHOSTDOWN, errno.EPROTO, errno.EMSGSIZE,
                          getattr(errno, "ENONET", 64)})


def enable_recverr(sock: socket.socket, family: int | None = None) -> bool:
    """Ask Linux to queue ICMP errors on this socket with the address they concern.

    Without it an unconnected (server) socket never hears that a peer's port is gone,
    and a connected one hears only "refused" with nothing to check it against. With it
    each error comes with the datagram it answers, so one peer's ICMP ends only that
    peer's connection, and only if it quotes a sequence number we sent (RFC 5927).
    `family` as in `set_dont_fragment`.
    """
    try:
        if (sock.family if family is None else family) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            with contextlib.suppress(OSError):  # IPv4-mapped peers of a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError:
        return False
    return True


def route_mss(family: int, host: str) -> int | None:
    """The largest segment payload the local route to `host` carries, or None.

    Asks the kernel through a throwaway connected socket (no packet is sent): on
    loopback that is about 64 KiB, on Ethernet 1500 less the headers.
    """
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return connected_route_mss(probe)
    except OSError:
        return None


def connected_route_mss(sock: socket.socket) -> int:
    """`route_mss` for a socket connected to its peer already: raises OSError."""
    if sock.family == socket.AF_INET6:
        mtu = sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        ip_header = 40
    else:
        mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
        ip_header = 20
    return min(mtu - ip_header - 8, MAX_UDP_PAYLOAD) - HEADER_ROOM


# Client sockets kept only for connections the application has left (FIN_WAIT_2,
# TIME_WAIT), per loop, oldest first. Unlike the kernel's TIME_WAIT entries each holds a
# file descriptor, so, as Linux does past tcp_max_tw_buckets, the oldest are closed
# early when there are too many: a program that connects and closes in a loop must not
# run out of descriptors for 2 x MSL.
_lingering: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                      collections.OrderedDict[UdpPort, None]] = (
    weakref.WeakKeyDictionary())


# (the limit, when it was read): a connect and close in a loop asked the kernel at each
# close; a limit the program raises later is seen within a second
_lingering_limit: list[float] = [0, float("-inf")]
LINGERING_LIMIT_TTL = 1.0


def max_lingering_sockets() -> int:
    limit, read_at = _lingering_limit
    now = time.monotonic()
    if now - read_at < LINGERING_LIMIT_TTL:
        return int(limit)
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        found = 256
    else:
        found = 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 4))
    _lingering_limit[:] = [found, now]
    return found


def _linger(port: UdpPort) -> None:
    if port.lingers:
        return  # `process` asks on every call once the connection is left
    table = _lingering.get(port.loop)
    if table is None:  # not setdefault: its default would be built at every call
        table = _lingering[port.loop] = collections.OrderedDict()
    if port in table:
        return
    table[port] = None
    port.lingers = True
    limit = max_lingering_sockets()
    while len(table) > limit:
        oldest, _ = table.popitem(last=False)
        if log.enabled():
            log.emit("linger_overflow", port=oldest.local_addr[1], limit=limit)
        oldest.close()
        for conn in list(oldest.endpoint.connections.values()):
            conn.abort()  # CLOSED now; with the socket gone its RST is never sent


class TimedPort(Protocol):
    """What `ClientTimers` needs of a port (a `UdpPort`, or a test's stand-in)."""

    loop: asyncio.AbstractEventLoop
    timer_slot: list[TimedPort | None]
    filed_at: float | None
    refiled: int

    def on_due(self, now: float) -> None: ...


class ClientTimers:
    """The deadlines of one loop's client ports, behind one `call_at` handle.

    A client port carries one connection, so a connect and close in a loop gave the
    loop's heap a TimerHandle or more per connection (the SYN's RTO, then the data's,
    then TIME_WAIT's 2MSL), each pushed and popped at the cost of a Python `__lt__` per
    level of a heap that lingering sockets kept hundreds deep. A client port files each
    new deadline here instead (`file`): a tuple pushed on a heap compared in C. The one
    it replaces stays, stale, until it surfaces or the heap is compacted; the loop's
    handle moves only for an earlier deadline, and when it fires every port whose
    deadline is due runs (`UdpPort.on_due`). A server's port, one for many
    connections, keeps a handle of its own (`UdpPort._arm_timer`).

    Nothing here holds the loop, or a port once it is closed (`UdpPort.timer_slot`)."""

    COMPACT_MIN: ClassVar[int] = 256

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self.heap: list[tuple[float, int, list[TimedPort | None]]] = []
        self._filed = 0
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None
        self._compact_at = self.COMPACT_MIN

    def file(self, port: TimedPort, deadline: float) -> None:
        """`port`'s deadline is now `deadline` (its `filed_at`); later than now."""
        self._filed += 1
        heapq.heappush(self.heap, (deadline, self._filed, port.timer_slot))
        if len(self.heap) > self._compact_at:
            self._compact()
        if self._at is None or deadline < self._at:
            self._arm(port.loop, deadline)

    def keeps(self, port: TimedPort, deadline: float) -> bool:
        """Whether `port`'s entry stands for its new `deadline` (no filing needed).

        A later deadline is filed (a heap push now, a stale entry to pop later) while
        the port's deadlines rarely move, as in a short connection's life. Once they
        move on with every segment (the retransmission and delayed-ACK deadlines of a
        running exchange), the early entry is kept, as a server port keeps its handle:
        it fires, finds nothing due, and files the deadline of that moment
        (`UdpPort.on_due`, which resets `refiled`)."""
        filed = port.filed_at
        if filed is None or filed > deadline:
            return False
        if filed < deadline:
            port.refiled += 1
            return port.refiled > REFILE_BEFORE_KEEPING
        return True

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        loop = self._loop()
        if loop is None:
            return
        due_by = self._at
        self._disarm()
        now = loop.time()
        # call_at may fire a hair early: what the handle was armed for is due, and
        # never at a time before its deadline
        if due_by is None or now > due_by:
            due_by = now
        try:
            while (heap := self.heap) and heap[0][0] <= due_by:
                deadline, _, slot = heapq.heappop(heap)
                port = slot[0]
                if port is not None and port.filed_at == deadline:
                    port.filed_at = None
                    port.on_due(now if now > deadline else deadline)
        finally:
            heap = self.heap
            while heap:  # the next live deadline, if any, arms the handle
                deadline, _, slot = heap[0]
                port = slot[0]
                if port is not None and port.filed_at == deadline:
                    if self._at is None or deadline < self._at:
                        self._arm(loop, deadline)
                    break
                heapq.heappop(heap)

    def _disarm(self) -> None:
        # Not two assignments in `_fire`: mypy would take `_at` for None all through
        # `_fire`, across the port callbacks that file a new deadline, and the compiled
        # module checks that type at run time.
        self._handle = self._at = None

    def _compact(self) -> None:
        """Stale entries outnumber the live ones: keep the live ones only."""
        live = [entry for entry in self.heap
                if (port := entry[2][0]) is not None and port.filed_at == entry[0]]
        heapq.heapify(live)
        self.heap = live
        self._compact_at = max(self.COMPACT_MIN, 2 * len(live))


class _LoopShared:
    """What one event loop's ports share (`_shared`).

    One receive buffer: a datagram is parsed and fed to the core before the next is
    read, and the core copies whatever it keeps (in-order bytes into the receive buffer,
    out-of-order pieces as bytes). A buffer per client socket cost 64 KiB per connection
    and a page-faulting allocation per connect. And the client ports' `ClientTimers`."""

    __slots__ = ("buf", "client_timers", "view")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buf = bytearray(MAX_DATAGRAM)
        self.view = memoryview(self.buf)
        self.client_timers = ClientTimers(loop)


# Each loop's, as an attribute of the loop where it takes one (asyncio's and uvloop's do):
# the state refers back to its loop (the ClientTimers' armed handle, their ports), so as a
# value of a WeakKeyDictionary it kept its own key alive, and with it every closed loop
# that had client ports. On the loop, the two are one cycle the collector frees, and
# finding it again is an attribute lookup, not a WeakKeyDictionary's Python `get` (every
# client connection asks). The dictionary is for a loop that refuses attributes.
_SHARED_ATTR = "_utcp_port_shared"
_loop_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopShared] = (
    weakref.WeakKeyDictionary())


def _shared(loop: asyncio.AbstractEventLoop) -> _LoopShared:
    found: _LoopShared | None = getattr(loop, _SHARED_ATTR, None)
    if found is None:
        found = _loop_shared.get(loop)
        if found is None:
            found = _LoopShared(loop)
            try:
                setattr(loop, _SHARED_ATTR, found)
            except AttributeError:
                _loop_shared[loop] = found
    return found


def _would_block(exc: OSError) -> bool:
    """EAGAIN, EINTR, or ENOBUFS (a full device queue): keep the datagrams, try later."""
    return isinstance(exc, BlockingIOError | InterruptedError) or exc.errno == errno.ENOBUFS


def _reset_connections(sock: socket.socket, endpoint: Endpoint) -> None:
    """RST the connections the peer still believes open, straight from the socket.

    When a process dies holding TCP sockets its kernel answers for it; here the process
    is the stack, and a peer that hears nothing waits forever for data or a FIN that will
    never come (issue #11). So whatever closes the socket with connections left - the
    garbage collector, interpreter exit, an overflowing TIME_WAIT table - first abandons
    them as `_abandon` says. Nothing can wait for ACKs here (no loop may be running);
    the sends do not block: a datagram a full socket buffer refuses is lost, as at any
    crash.
    """
    if not endpoint.connections or sock.fileno() < 0:
        return
    try:
        for conn in list(endpoint.connections.values()):
            _abandon(conn, closing_too=True)
        datagrams = endpoint.datagrams_to_send(time.monotonic())
    except Exception:  # at interpreter exit, never let one endpoint stop the others
        return
    for data, addr in datagrams:
        try:
            sock.sendto(data, addr)
        except OSError:
            continue


def _abandon(conn: Connection, *, closing_too: bool) -> None:
    """What the kernel would do with `conn` when its process goes, as far as we can.

    One the application never closed is reset (an abortive close: the peer learns at
    once). One whose FIN the peer has acknowledged (FIN_WAIT_2) is left alone: the
    peer has every byte and our EOF, and a RST could still cost it data it has not yet
    read (asyncio's StreamReader raises the reset before buffered data); should it
    write, its datagrams draw ICMP port unreachable, which resets its side. A FIN not
    yet acknowledged (`closing_too`) is reset too, since nothing will resend it.
    """
    if conn.state is State.FIN_WAIT_2 or (not closing_too and conn.state in FIN_UNACKED):
        return
    conn.abort()


def _release(sock: socket.socket, writer: pcap.PcapWriter | None, port: int,
             endpoint: Endpoint) -> None:
    _reset_connections(sock, endpoint)
    sock.close()
    if writer is not None:
        pcap.release(writer, port)


def _route_mss_of(sock: socket.socket, family: int, connected: bool,
                  config: Config) -> Callable[[Addr], int]:
    """The endpoint's `route_mss`: the route's MSS to a peer, cached per host, or the
    configured MSS if the kernel cannot say. It holds the socket, not the port, which
    holds the endpoint."""
    cache: dict[str, int | None] = {}

    def route_mss_to(peer: Addr) -> int:
        host = peer[0]
        if host not in cache:
            if len(cache) > 4096:
                cache.clear()
            found: int | None = None
            if connected:
                with contextlib.suppress(OSError):  # its own route: no throwaway socket
                    found = connected_route_mss(sock)
            else:
                found = route_mss(family, host)
            cache[host] = found
        found = cache[host]
        return found if found is not None else config.mss
    return route_mss_to


class ConnectionListener(Protocol):
    """What the port needs of whoever speaks for one connection to the application.

    The transport is the one implementation; the port knows only this, so that
    transport.py imports port.py and never the reverse (no import circle, issue #13).
    """

    def process_events(self) -> None:
        """The core touched the connection: drain its `next_event()` queue and deliver."""

    def ended_by_port(self, exc: Exception) -> None:
        """The port ended the connection under the application (its socket closed, or
        the loop shutting down reset it): an abnormal end, reported as `exc`."""


# Subclassed by tests only. Those that hold a port weakly hold its `shutdown.Held`.
@mypyc_attr(allow_interpreted_subclasses=True)
class UdpPort:
    """The I/O half of an endpoint: one UDP socket, read and flushed for the core."""

    # What every port starts with, as class attributes: past 30 instance attributes the
    # pure build's instances (one per client) each get a dict of their own.
    close_when_idle: bool = False   # close the socket once no connection is left
    lingers: bool = False           # counted among the lingering sockets (_linger)
    closed: bool = False
    filed_at: float | None = None   # a client's deadline filed with its ClientTimers
    refiled: int = 0                # later deadlines filed since its last timer wake-up
    gso_sends: int = 0
    _writer_on: bool = False
    _flush_handle: asyncio.Handle | None = None
    _processing: bool = False
    _timer: asyncio.Handle | None = None
    _timer_at: float | None = None
    _soon: asyncio.Handle | None = None   # for a deadline due already
    _gso: bool = False              # probed by `start_reading`, as is _gro
    _gro: bool = False

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, endpoint: Endpoint,
                 *, connected: bool = False, icmp_refuses: bool = True,
                 on_accept: Callable[[Connection], None] | None = None,
                 sockname: Any = None, family: int | None = None,
                 reading: bool = True) -> None:
        self.loop = loop
        self.sock = sock
        self.endpoint = endpoint
        self.connected = connected      # a client socket connect()ed to its one peer
        # Port-unreachable ends a plain connect at once; a peer-to-peer connect from a
        # fixed port (local_addr) rides it out, since the peer may simply not be up yet.
        self.icmp_refuses = icmp_refuses
        self.on_accept = on_accept
        self.transports: dict[Connection, ConnectionListener] = {}
        self._fd = sock.fileno()
        self._buf, self._view = (shared := _shared(loop)).buf, shared.view
        self._bufs = [self._buf]        # recvmsg_into's argument, built once
        # asyncio's loop.time() is a Python method returning time.monotonic(): calling
        # the clock itself saves a frame per wake-up and per write. Another loop (uvloop
        # keeps its own clock) is asked.
        self._clock: Callable[[], float] = (
            time.monotonic if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
            else loop.time)
        self._lone_reads = LONE_READS if connected else 0  # a client's: one SYN+ACK
        self._sendq: collections.deque[tuple[bytes, Addr]] = collections.deque()
        # a client's deadlines (`filed_at`): its loop's ClientTimers, via the slot
        self._client_timers = shared.client_timers if connected else None
        self.timer_slot: list[TimedPort | None] = [self]
        self.send_errors: collections.Counter[str] = collections.Counter()
        # the socket's (`sockname`, when the caller has just asked); kept once closed
        self.local_addr = sockname if sockname is not None else sock.getsockname()
        # read once, or given: a Python property on sockets, an enum member each time
        self.family = family = sock.family if family is None else family
        self._recverr = enable_recverr(sock, family)
        self._pcap = (pcap.acquire(endpoint.config.pcap, self.local_addr[1])
                      if endpoint.config.pcap else None)
        # A loop closed under a lingering connection: the socket (and its RSTs, see
        # _reset_connections) goes with this port, which the finalizer must not hold
        # (nor the endpoint: its `route_mss` holds the socket).
        self.held = shutdown.Held(self)
        self._finalizer = weakref.finalize(self.held, _release, sock, self._pcap,
                                           self.local_addr[1], endpoint)
        sock.setblocking(False)
        set_dont_fragment(sock, family)
        endpoint.route_mss = _route_mss_of(sock, family, connected, endpoint.config)
        if reading:
            self.start_reading()

    def start_reading(self) -> None:
        """Register with the loop: a client's port (`reading=False`) sends its SYN first
        (`api._open`), so this overlaps the SYN's round trip; the SYN+ACK waits in the
        socket (the loop polls level-triggered), one datagram even before UDP_GRO."""
        if self.closed:
            return
        sock = self.sock
        self._gso = batch.probe_gso(sock)
        self._gro = batch.enable_gro(sock)
        self.loop.add_reader(self._fd, self._on_readable)
        shutdown.track(self)

    def reset_connections(self, *, closing_too: bool) -> None:
        """The loop is shutting down: RST its connections (see _abandon); the last call
        closes a lingering client port too (the lingering table kept it, and the loop)."""
        if self.closed:
            return
        if self.endpoint.connections:
            for conn in list(self.endpoint.connections.values()):
                _abandon(conn, closing_too=closing_too)
            self._send(self.endpoint.datagrams_to_send(self.loop.time()))
        # After the RSTs are out, each transport whose connection is now CLOSED schedules
        # connection_lost; so does one whose connection left the table earlier, holding
        # a reset it has not reported (bytes unread, reading paused; or the peer's EOF),
        # which would hold the socket open.
        for conn, listener in list(self.transports.items()):
            if conn.state is State.CLOSED:
                listener.ended_by_port(ConnectionAbortedError("the event loop is shutting down"))
        if closing_too:
            self._close_if_idle()

    # ------------------------------------------------------------------ input

    def _on_readable(self) -> None:
        now = self._clock()
        if self._gro:
            if not self._read_gro(now):
                self._woken_for_nothing()
            self.process(now)
            return
        sock, view, ep, buf = self.sock, self._view, self.endpoint, self._buf
        recv = sock.recvfrom_into
        receive = ep.receive_datagram
        lone = self._lone_reads
        limit = 1 if lone else RECV_BATCH
        read = 0
        error: OSError | None = None
        heard: set[Addr] | None = None
        while read < limit:
            try:
                n, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                if read == 0:
                    self._woken_for_nothing()
                break
            except OSError as exc:
                if error is not None:
                    break  # twice in one wake-up: the socket's own failure
                error, limit, heard = exc, RECV_BATCH, set()  # see _on_socket_error
                read += 1
                continue
            read += 1
            if heard is not None:
                heard.add(peer_key(addr))
            if self._pcap is not None:
                self._pcap.write_received(view[:n], addr, self.local_addr, time.time())
            try:
                receive(view[:n], addr, now)
            except Exception as exc:  # see _bad_datagram
                self._bad_datagram(exc, addr)
        self._lone_reads = lone - 1 if lone else (LONE_READS if read == 1 else 0)
        if error is not None:
            self._on_socket_error(error, heard)
        self.process(now)

    def _read_gro(self, now: float) -> int:
        """Like the plain loop, but one recvmsg may carry many datagrams of one size.
        Returns how many recvmsg calls succeeded or failed (0: nothing to read).

        Per datagram only the core's own call: a lone datagram (no UDP_GRO control
        message, the whole of a ping-pong) skips the segment-size parse and the slicing
        generator, and the buffer list recvmsg_into wants is built once per port."""
        view, bufs = self._view, self._bufs
        recv = self.sock.recvmsg_into
        receive = self.endpoint.receive_datagram
        receive_glued = self.endpoint.receive_glued
        received = calls = 0
        lone = self._lone_reads
        limit = 1 if lone else RECV_BATCH
        error: OSError | None = None
        heard: set[Addr] | None = None  # the peers that spoke after it
        while received < limit:
            try:
                n, anc, _flags, addr = recv(bufs, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                calls += 1
                if error is not None:
                    break  # twice in one wake-up: the socket's own failure
                error, limit, heard = exc, RECV_BATCH, set()  # see _on_socket_error
                continue
            calls += 1
            if heard is not None:
                heard.add(peer_key(addr))
            if self._pcap is None:
                step = batch.gro_segment_size(anc) if anc else 0
                if step <= 0 or step >= n:  # one datagram (maybe empty: a counted drop)
                    try:
                        receive(view[:n], addr, now)
                    except Exception as exc:  # see _bad_datagram
                        self._bad_datagram(exc, addr)
                    received += 1
                    continue
                # glued at `step`, the last maybe shorter (`view[:n]`: the buffer's
                # stale bytes beyond must not be read); runs of in-order data go
                # through the core as one segment each (Endpoint.receive_glued)
                try:
                    receive_glued(view[:n], step, addr, now)
                except Exception as exc:  # see _bad_datagram
                    self._bad_datagram(exc, addr)
                received += (n + step - 1) // step
                continue
            received += self._receive_captured(n, anc, addr, now)
        if lone:
            self._lone_reads = lone - 1 if received == 1 else 0
        elif received == 1 and calls == 1:
            self._lone_reads = LONE_READS
        if error is not None:
            self._on_socket_error(error, heard)
        return calls

    def _receive_captured(self, n: int, anc: list[tuple[int, int, bytes]], addr: Any,
                          now: float) -> int:
        """`_read_gro`'s path with a capture on: each datagram written, then received."""
        received = 0
        for begin, end in batch.gro_pieces(n, batch.gro_segment_size(anc)):
            piece = self._view[begin:end]
            if self._pcap is not None:
                self._pcap.write_received(piece, addr, self.local_addr, time.time())
            try:
                self.endpoint.receive_datagram(piece, addr, now)
            except Exception as exc:  # see _bad_datagram
                self._bad_datagram(exc, addr)
            received += 1
        return received

    def _bad_datagram(self, exc: Exception, addr: object) -> None:
        """A datagram the core failed on: counted and dropped, never raised.

        The parser turns every malformed datagram into a counted drop already; this is
        the second line. An exception here would abandon the rest of the batch and this
        wake-up's flush and timer, and any sender could repeat it at will, so it must not
        reach the loop's exception handler (issue #12: one empty datagram, one traceback).
        """
        self.endpoint.counters[f"dropped: {type(exc).__name__} in the core"] += 1
        if log.enabled():
            log.emit("drop", reason="exception", error=repr(exc), peer=str(addr))

    def _on_socket_error(self, exc: OSError, heard: set[Addr] | None = None) -> None:
        """ICMP errors reach a UDP socket as recv/send errors (Linux): on a connected
        socket always, on any socket with IP_RECVERR, which also queues their details.

        A read loop that meets one reads on before it calls this: the error fails the
        next recv ahead of the datagrams still waiting in the socket, which may have
        come before it (a dying peer's last bytes and FIN), and a kernel's receive
        queue gives its data before the reset. `heard` holds the peers of those
        datagrams. The error says nothing of when the ICMP came, and one of theirs may
        be the answer a peer not up yet (a peer-to-peer connect) now gives: a peer that
        spoke is not taken for dead, but is sent an ACK at once (`_ask_again`): dead,
        it brings another ICMP, with nothing queued behind it this time."""
        self.send_errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
        self._poll_again()
        if self._recverr:
            _read_error_queue(self, heard)
        elif isinstance(exc, ConnectionRefusedError) and self.connected:
            # No error queue (not Linux): the kernel matched the connected socket's pair
            # of addresses, which is all there is to check.
            for conn in list(self.endpoint.connections.values()):
                if heard and conn.peer in heard:
                    _ask_again(conn)
                elif self.icmp_refuses or conn.state != State.SYN_SENT:
                    conn.icmp_unreachable()
        elif log.enabled():
            log.emit("socket_error", error=str(exc))

    def _poll_again(self) -> None:
        # libuv (uvloop) stops polling a socket that reported POLLERR, which a pending
        # ICMP error is: register the reader again so the connection keeps hearing.
        if not self.closed:
            self.loop.remove_reader(self._fd)
            self.loop.add_reader(self._fd, self._on_readable)

    def _woken_for_nothing(self) -> None:
        """Readable, yet nothing to read: POLLERR for an error queued without sk_err
        (a local EMSGSIZE, say). Unread it would wake the loop again at once (asyncio)
        or silence the socket for good (libuv)."""
        if self._recverr and _read_error_queue(self):
            self._poll_again()

    # ------------------------------------------------------------------ processing

    def process(self, now: float | None = None) -> None:
        """Flush output, dispatch events to transports, accept, re-arm the timer."""
        if self.closed:
            return
        if now is None:
            now = self._clock()
        ep = self.endpoint
        send = self._send
        transports = self.transports
        self._processing = True
        try:
            # Callbacks may write: a few rounds, then call_soon takes over. A round whose
            # output is empty skips the `_send` call; callbacks that touched no
            # connection (most: a read, a wake-up) leave nothing for another round.
            for _ in range(4):
                datagrams = ep.datagrams_to_send(now)
                if datagrams:
                    send(datagrams)
                touched = ep.touched()
                if not touched:
                    break
                for conn in touched:
                    listener = transports.get(conn)
                    if listener is not None:
                        listener.process_events()
                if self.on_accept is not None:
                    while (accepted := ep.accept()) is not None:
                        self.on_accept(accepted)
                if not ep.has_output():
                    break
            else:
                self.schedule_flush()
        finally:
            self._processing = False
        self._arm_timer()
        if self.close_when_idle and not transports:
            if not ep.connections:
                self.close()
            elif self.connected:
                _linger(self)

    def send_now(self) -> None:
        """A write into an idle connection: send it in this call, as asyncio's own
        transports do, rather than one loop iteration later (latency of ping-pong
        exchanges). Inside `process` the write is picked up by its next round instead."""
        if self._processing or self.closed:
            self.schedule_flush()
            return
        datagrams = self.endpoint.datagrams_to_send(self._clock())
        if datagrams:
            self._send(datagrams)
        self._arm_timer()  # sending raises no events: the next process() sees any others

    def schedule_flush(self) -> None:
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self.process()

    def _arm_timer(self) -> None:
        deadline = self.endpoint.get_timer()
        client_timers = self._client_timers
        if deadline is None:
            # Nothing to wait for: an armed handle fires once for nothing, which costs
            # less than a cancel now and, for a server between sequential connections,
            # a call_at for the next SYN+ACK. A client's entry just goes stale.
            if client_timers is not None:
                self.filed_at = None
            return
        if client_timers is not None:
            if client_timers.keeps(self, deadline):
                return
            if deadline <= self._clock():
                if self._soon is None:  # as below
                    self._soon = self.loop.call_soon(self._on_soon)
                return
            self.filed_at = deadline
            client_timers.file(self, deadline)
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            # The armed handle fires no later than needed. The retransmission deadline
            # moves forward with nearly every segment sent; keeping the early handle (it
            # finds nothing due and re-arms) saves a cancel and a call_at per segment.
            return
        if deadline <= self._clock():
            # Due already: the core defers an ACK to "the next timer service at this
            # instant" (the handshake's last ACK, the first window update) so that a
            # write or close the application makes on waking rides on it. call_soon
            # runs after the callbacks queued already (that wake-up) on either loop,
            # without a TimerHandle in the loop's heap (a Python __lt__ per push and
            # pop). The handle armed for a later deadline stays (see above).
            if self._soon is None:
                self._soon = self.loop.call_soon(self._on_soon)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_soon(self) -> None:
        self._soon = None
        self.on_due(self._clock())

    def on_due(self, now: float) -> None:
        """A deadline came: a client port's (`ClientTimers`), a server's (`_on_timer`),
        or one due already (`_on_soon`)."""
        self.refiled = 0
        deadline = (endpoint := self.endpoint).get_timer()
        if (deadline is not None and deadline > now and not endpoint.has_output()
                and not self.closed):
            self._arm_timer()  # an early entry or handle, kept: nothing due, no flush
            return
        endpoint.handle_timer(now)
        self.process(now)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._timer_at
        self._timer_at = None
        # call_at may fire a hair early: never hand the core a time before its deadline
        now = self._clock()
        if deadline is not None and now < deadline:
            now = deadline
        self.on_due(now)

    # ------------------------------------------------------------------ output

    def _send(self, datagrams: list[tuple[bytes, Addr]]) -> None:
        if not datagrams:
            return
        if self._pcap is None and not self._sendq and (len(datagrams) == 1 or not self._gso):
            # The common case, one socket call per datagram with nothing queued or
            # captured: no per-datagram `_send_one` frame; an error takes the general path.
            sock_send = self._sock_send
            i = 0
            try:
                for data, addr in datagrams:
                    sock_send(data, addr, 0)
                    i += 1
            except OSError as exc:
                self._send_failed(datagrams, i, exc)
            return
        if self._pcap is not None:
            self._capture(datagrams)
        if self._sendq:
            self._sendq.extend(datagrams)
            return
        self._send_each(datagrams)

    def _send_each(self, datagrams: list[tuple[bytes, Addr]]) -> None:
        if self._gso and len(datagrams) > 1:
            self._send_gso(datagrams)
            return
        for i, (data, addr) in enumerate(datagrams):
            try:
                self._send_one(data, addr)
            except OSError as exc:
                if _would_block(exc):
                    self._queue(datagrams[i:])
                    return
                self._on_socket_error(exc)

    def _send_failed(self, datagrams: list[tuple[bytes, Addr]], i: int, exc: OSError) -> None:
        """`_send`'s fast loop failed on `datagrams[i]`: what `_send_one` and the general
        loop do with that error, then the rest by the general path."""
        if self._recverr and exc.errno in _ICMP_ERRNOS:
            # an earlier datagram's ICMP error, reported by this send, which sent nothing
            self._on_socket_error(exc)
            self._send_each(datagrams[i:])
        elif _would_block(exc):
            self._queue(datagrams[i:])
        else:
            self._on_socket_error(exc)
            if i + 1 < len(datagrams):
                self._send_each(datagrams[i + 1:])

    def _send_one(self, data: bytes | list[bytes], addr: Addr, segment: int = 0) -> None:
        """Every datagram (or GSO batch of datagrams of `segment` bytes each, as the list
        of them: the kernel gathers them, no copy into one buffer) leaves the port here,
        by one socket call.

        With IP_RECVERR an ICMP error about some earlier datagram, to any peer, is also
        reported once by the next socket call, and a send that reports it has sent
        nothing: read the queue, then send this datagram (or batch) after all.
        """
        try:
            self._sock_send(data, addr, segment)
        except OSError as exc:
            if not self._recverr or exc.errno not in _ICMP_ERRNOS:
                raise
            self._on_socket_error(exc)
            self._sock_send(data, addr, segment)

    def _sock_send(self, data: bytes | list[bytes], addr: Addr, segment: int) -> None:
        if segment:
            buffers = data if isinstance(data, list) else [data]
            if self.connected:
                self.sock.sendmsg(buffers, batch.gso_control(segment))
            else:
                self.sock.sendmsg(buffers, batch.gso_control(segment), 0, addr)
            return
        assert not isinstance(data, list)
        if self.connected:
            self.sock.send(data)
        else:
            self.sock.sendto(data, addr)

    def _send_gso(self, datagrams: list[tuple[bytes, Addr]]) -> None:
        """Runs of equal-sized datagrams to one peer go out in one sendmsg each."""
        for begin, end, size in batch.gso_batches(datagrams):
            data, addr = datagrams[begin]
            try:
                if size == 0:
                    self._send_one(data, addr)
                else:
                    self._send_one([d for d, _ in datagrams[begin:end]], addr, size)
                    self.gso_sends += 1
            except OSError as exc:
                if _would_block(exc):
                    self._queue(datagrams[begin:])
                    return
                if size and batch.gso_unsupported(exc):
                    # this path cannot segment after all: plain sends from now on
                    self._gso = False
                    self._send_plain(datagrams[begin:])
                    return
                self._on_socket_error(exc)

    def _send_plain(self, datagrams: list[tuple[bytes, Addr]]) -> None:
        sendq_was = self._sendq
        if sendq_was:
            sendq_was.extend(datagrams)
            return
        self._send_each(datagrams)  # captured already, by `_send`

    def _capture(self, datagrams: list[tuple[bytes, Addr]]) -> None:
        # Captured when handed to the kernel's queue or ours: a datagram the socket later
        # fails to send is retransmitted by the core, as a dropped packet would be.
        assert self._pcap is not None
        ts = time.time()
        for data, addr in datagrams:
            self._pcap.write(data, self.local_addr, addr, ts)
        self._pcap.flush()

    def _queue(self, rest: list[tuple[bytes, Addr]]) -> None:
        """EAGAIN/ENOBUFS: keep the datagrams in order and wait until the socket drains."""
        self._sendq.extend(rest)
        if not self._writer_on:
            self._writer_on = True
            self.loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        q = self._sendq
        while q:
            data, addr = q[0]
            try:
                self._send_one(data, addr)
            except OSError as exc:
                if _would_block(exc):
                    return
                self._on_socket_error(exc)
            q.popleft()
        self._writer_on = False
        self.loop.remove_writer(self._fd)

    # ------------------------------------------------------------------ life cycle

    def detach(self, conn: Connection) -> None:
        """The application is done with `conn`; the core may still need the socket."""
        self.transports.pop(conn, None)
        if self.close_when_idle and not self.transports:
            if not self.endpoint.connections:
                self.loop.call_soon(self._close_if_idle)
            elif self.connected:
                # a client's connection left to TIME_WAIT (or its FIN): counted among the
                # lingering sockets now, as `process` would at its end
                _linger(self)

    def _close_if_idle(self) -> None:
        if self.close_when_idle and not self.endpoint.connections and not self.transports:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        lingering = _lingering.get(self.loop)
        if lingering is not None:
            lingering.pop(self, None)
        for handle in (self._timer, self._soon, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = self._flush_handle = None
        self.timer_slot[0] = None  # ClientTimers' entries no longer hold it
        try:
            self.loop.remove_reader(self._fd)
            if self._writer_on:
                self.loop.remove_writer(self._fd)
        except RuntimeError:
            pass  # the loop is already closed
        self._pcap = None
        self._finalizer()  # RSTs first (see _reset_connections), then the socket closes
        self.held.port = None  # the cycle goes: a closed port is freed when let go
        if not self.loop.is_closed():  # else no connection_lost can be scheduled
            for listener in list(self.transports.values()):
                listener.ended_by_port(
                    ConnectionAbortedError("the connection's UDP socket was closed"))


def _read_error_queue(port: UdpPort, heard: set[Addr] | None = None) -> int:
    """Act on the ICMP errors Linux queued (IP_RECVERR); returns how many were read.

    The address recvmsg gives is the one the failed datagram was sent to, so on a
    server's shared socket the error finds its one connection; the datagram it
    quotes (as much as the ICMP carried) holds our header's sequence number.
    """
    read = 0
    recvmsg = port.sock.recvmsg
    for _ in range(ERRQUEUE_READS):
        try:
            quoted, ancdata, _flags, addr = recvmsg(ERRQUEUE_QUOTE, 512, MSG_ERRQUEUE)
        except OSError:  # EAGAIN: the queue is empty
            break
        read += 1
        for level, kind, raw in ancdata:
            if (level, kind) not in _RECVERR_KINDS or len(raw) < _EXTENDED_ERR.size:
                continue
            ee_errno, origin = _EXTENDED_ERR.unpack_from(raw)[:2]
            if ee_errno == errno.ECONNREFUSED and origin in (SO_EE_ORIGIN_ICMP,
                                                             SO_EE_ORIGIN_ICMP6):
                _port_unreachable(port, addr, quoted, heard)
    return read


def _port_unreachable(port: UdpPort, addr: tuple[object, ...], quoted: bytes,
                      heard: set[Addr] | None = None) -> None:
    counters = port.endpoint.counters
    conn = port.endpoint.connections.get(peer_key(addr)) if addr else None
    if conn is None:
        counters["ICMP port unreachable for no connection"] += 1
        return
    if heard and conn.peer in heard:
        counters["ICMP port unreachable ignored: the peer spoke since"] += 1
        _ask_again(conn)
        return
    if len(quoted) < 8:
        counters["ICMP port unreachable quoting too little to check"] += 1
        return
    if conn.state == State.SYN_SENT and not port.icmp_refuses:
        return  # a peer-to-peer connect rides it out: the peer may not be up yet
    if conn.icmp_unreachable(int.from_bytes(quoted[4:8], "big")):
        counters["ICMP port unreachable: connection ended"] += 1
        port.schedule_flush()
    else:
        counters["ICMP port unreachable ignored"] += 1


def _ask_again(conn: Connection) -> None:
    """An ACK now, to a peer whose ICMP came with its datagrams queued behind it (see
    `UdpPort._on_socket_error`): alive, it costs a datagram; dead, it draws the ICMP
    that counts, even when the connection had nothing else to send."""
    if conn.state in SYNCHRONIZED and conn.state is not State.TIME_WAIT:
        conn.sender.ack_now = True
        conn.touch()
