"""What a connect, one exchange and a close cost the adapter, counted rather than timed
(issue #13: connect+close per second): the datagrams, the address lookup, the calls
into the endpoint, the loop's timer handles, and the FIN leaving inside `close()`.

Each test fails on the code before the change it guards: getaddrinfo for an address
written out, a second `datagrams_to_send` round after callbacks that touched nothing,
a FIN sent one loop iteration after `close()`, a bare window update ahead of the answer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import utcp
from tests.aio.util import (
    HOST,
    TIMEOUT,
    answer_once,
    echo_server,
    needs_patchable,
    port_of,
    serving,
    spy_call_at,
    transport_of,
)
from tests.test_ack_coalescing import SERVER, Pair, pure_acks, segments
from utcp import State, wire
from utcp import endpoint as endpoint_module
from utcp.aio import api
from utcp.aio import port as port_module
from utcp.aio.transport import UtcpTransport
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint

CONFIG = utcp.Config(mss=1400, pmtu_probing=False)


# ---------------------------------------------------------------------- the address

@pytest.mark.parametrize(("host", "family"), [
    ("127.0.0.1", 0), ("127.0.0.1", socket.AF_INET), ("::1", 0), ("::0001", 0),
    ("::1", socket.AF_INET6), ("::ffff:127.0.0.1", 0), ("2001:db8::1", 0),
])
def test_an_address_written_out_is_what_getaddrinfo_answers(host: str, family: int) -> None:
    made = api._numeric_address(host, 4242, family, 0, 0)
    assert made is not None
    assert [made] == socket.getaddrinfo(host, 4242, family, socket.SOCK_DGRAM, 0,
                                        socket.AI_NUMERICHOST)


@pytest.mark.parametrize(("host", "family", "flags"), [
    ("localhost", 0, 0),                 # a name
    ("127.1", 0, 0),                     # inet_aton's shorthand: getaddrinfo's to expand
    ("fe80::1%lo", 0, 0),                # a scope: getaddrinfo's to number
    ("127.0.0.1", socket.AF_INET6, 0),   # a family that does not match: its error
    ("::1", socket.AF_INET, 0),
    ("127.0.0.1", 0, socket.AI_CANONNAME),  # any flag: getaddrinfo's answer
])
def test_anything_else_is_left_to_getaddrinfo(host: str, family: int, flags: int) -> None:
    assert api._numeric_address(host, 4242, family, 0, flags) is None


async def test_a_connect_to_an_address_written_out_makes_no_lookup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As asyncio's create_connection: an address written out is its own answer (a
    numeric getaddrinfo costs no system call, but about three times the work)."""
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            lookups: list[object] = []
            real = socket.getaddrinfo

            def counting(*args: Any, **kwargs: Any) -> Any:
                lookups.append(args[0])
                return real(*args, **kwargs)

            monkeypatch.setattr(socket, "getaddrinfo", counting)
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
            writer.write(b"q")
            assert await reader.readexactly(1) == b"a"
            writer.close()
            await writer.wait_closed()
    assert lookups == []


# ---------------------------------------------------------------------- the rounds

class _CountingEndpoint:
    """An Endpoint seen through a proxy that counts `datagrams_to_send` calls made inside
    `UdpPort.process` (a compiled Endpoint's methods cannot be patched)."""

    def __init__(self, inner: Endpoint, tally: dict[str, int]) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_tally", tally)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        if self._tally["inside"]:
            self._tally["rounds"] += 1
        out: list[tuple[bytes, Any]] = self._inner.datagrams_to_send(now)
        return out


async def test_a_round_whose_callbacks_touch_nothing_is_the_last(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`UdpPort.process` services the endpoint once more only when the callbacks it ran
    touched a connection (`Endpoint.has_output`). A client's callbacks during a
    connect, one exchange and a close touch none (its read opens no window worth an
    update), so each processing is one round: it was two for every one that found a
    connection touched."""
    needs_patchable(port_module, "the Endpoint's methods (a wrapper cannot stand in for it)")
    tally = {"inside": 0, "rounds": 0, "processes": 0}

    def endpoint(config: Config, port: int, **kwds: Any) -> Any:
        return _CountingEndpoint(Endpoint(config, port, **kwds), tally)

    real_process = port_module.UdpPort.process

    def process(self: port_module.UdpPort, now: float | None = None) -> None:
        if isinstance(self.endpoint, _CountingEndpoint) and not self.closed:
            tally["processes"] += 1
            tally["inside"] += 1
            try:
                real_process(self, now)
            finally:
                tally["inside"] -= 1
        else:
            real_process(self, now)

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            monkeypatch.setattr(api, "Endpoint", endpoint)
            monkeypatch.setattr(port_module.UdpPort, "process", process)
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
            writer.write(b"q")
            assert await reader.readexactly(1) == b"a"
            writer.close()
            await writer.wait_closed()
            monkeypatch.undo()
    assert tally["processes"] >= 4  # the SYN, its answer, the answer, the FIN's ACK
    assert tally["rounds"] == tally["processes"]


def test_has_output_says_whether_there_is_anything_to_service() -> None:
    pair = Pair()
    assert not pair.client.has_output()
    conn = pair.client.connect(SERVER, pair.now)
    assert pair.client.has_output()  # a connection touched: its SYN to send
    pair.to_server()
    assert not pair.client.has_output()
    assert not pair.server.has_output()  # flushed right after its input
    # a datagram for no connection: the endpoint's own RST waits in its output
    pair.server.receive_datagram(wire.build_fast(7, SERVER[1], 1, 1, wire.ACK, 100),
                                 ("127.0.0.1", 7), pair.now)
    assert pair.server.has_output()
    (rst,) = segments(pair.server.datagrams_to_send(pair.now))
    assert rst.flags & wire.RST
    assert not pair.server.has_output()
    assert conn.state is State.SYN_SENT


# ---------------------------------------------------------------------- the close

async def test_close_sends_the_fin_before_it_returns() -> None:
    """As a write into an idle connection does, outside the port's processing: the FIN
    is on its way when `close()` returns, not one loop iteration later."""
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
            writer.write(b"q")
            assert await reader.readexactly(1) == b"a"
            sent = writer.get_extra_info("stats").segments_sent
            writer.close()
            stats = writer.get_extra_info("stats")
            assert stats.segments_sent == sent + 1  # no await in between
            assert writer.get_extra_info("state") is State.FIN_WAIT_1
            await writer.wait_closed()


# ---------------------------------------------------------------------- the window update

def _first_read() -> tuple[Pair, Connection]:
    """The server's first read of a new connection; the port's next round, before the
    application's task runs, has nothing to send."""
    pair = Pair()
    _, server = pair.first_read()
    assert pair.server.datagrams_to_send(pair.now) == []
    return pair, server


def test_the_first_read_leaves_its_window_update_to_the_answer() -> None:
    """The server's SYN+ACK could offer only 64 KiB (no scaling in a SYN); its first read
    opens the full window. The peer may still send dozens of segments, so the update
    waits for the next timer service at this instant instead of leaving as a bare ACK
    in the port's next round, ahead of the answer the application is about to write."""
    pair, server = _first_read()
    assert server.get_timer() == pair.now  # but due at once
    server.send(b"pong")
    (answer,) = pair.to_client()
    assert answer.payload == b"pong"
    assert answer.window << server.rcv_wscale > 64 * 1024  # the update rode on it


def test_a_silent_application_still_sends_the_update_at_once() -> None:
    pair, server = _first_read()
    pair.server.handle_timer(pair.now)  # the loop's next step, the clock unmoved
    (update,) = pure_acks(segments(pair.server.datagrams_to_send(pair.now)))
    assert update.window << server.rcv_wscale > 64 * 1024


# (an update the peer is short of leaves in the same round: tests/test_ack_coalescing.py)


# ---------------------------------------------------------------------- the timer

async def test_sequential_connections_reuse_the_servers_timer_handle() -> None:
    """A server's port between sequential connections: each one's deadlines (its
    SYN+ACK's retransmission, the ACKs due at once, the answer's and the FIN's RTO) are
    never earlier than the handle armed already, and a due one runs by call_soon beside
    it. So the loop gets no new TimerHandle per connection: it got three (a call_at
    after each due ACK, one for the next SYN+ACK after a cancel when the last closed).
    The RTO floor is long here so that no handle fires while the test runs."""
    config = utcp.Config(mss=1400, pmtu_probing=False, rto_min=20.0, rto_initial=30.0)
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=config)
        async with serving(server):
            (port,) = server._ports  # type: ignore[attr-defined]
            handles: list[object] = []
            for _ in range(10):
                reader, writer = await utcp.open_connection(HOST, port_of(server),
                                                            config=config)
                writer.write(b"q")
                assert await reader.readexactly(1) == b"a"
                writer.close()
                await writer.wait_closed()
                handles.append(port._timer)
            assert port._timer is not None
    distinct = {id(h) for h in handles}
    assert len(distinct) <= 2, f"{len(distinct)} TimerHandles for 10 connections"



# ---------------------------------------------------------------------- round 2: counted

# timers that never fire while a test runs (the delayed ACK's included)
SLOW_TIMERS = utcp.Config(mss=1400, pmtu_probing=False, rto_min=20.0, rto_initial=30.0,
                          ack_delay=10.0)


async def _connect_close(server: Any, count: int, config: utcp.Config = CONFIG
                         ) -> list[asyncio.StreamWriter]:
    """`count` sequential connects, each one exchange and a close, as the benchmark."""
    writers = []
    for _ in range(count):
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=config)
        writer.write(b"q")
        assert await reader.readexactly(1) == b"a"
        writer.close()
        await writer.wait_closed()
        writers.append(writer)
    return writers


async def test_connects_draw_no_randomness_and_read_no_limit_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Client endpoints share one ISN secret (RFC 6528's one per host): each drew 32
    bytes from getrandom for its one ISN. The cap on lingering sockets re-reads
    RLIMIT_NOFILE at most once in LINGERING_LIMIT_TTL: it was a prlimit64 per close."""
    import os
    import resource

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            await _connect_close(server, 1)  # the process's secret exists from here
            draws: list[int] = []
            limits: list[int] = []
            real_urandom, real_getrlimit = os.urandom, resource.getrlimit

            def urandom(n: int) -> bytes:
                draws.append(n)
                return real_urandom(n)

            def getrlimit(which: int) -> tuple[int, int]:
                limits.append(which)
                return real_getrlimit(which)

            monkeypatch.setattr(os, "urandom", urandom)
            monkeypatch.setattr(resource, "getrlimit", getrlimit)
            monkeypatch.setattr(port_module, "LINGERING_LIMIT_TTL", 3600.0)
            await _connect_close(server, 5)
            monkeypatch.undo()
    assert draws == []
    assert len(limits) <= 1


async def test_a_client_socket_reads_its_syn_ack_without_a_read_that_finds_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's socket starts with single reads (LONE_READS): its first wake-up
    is the one SYN+ACK, and draining it cost a second read that raised EAGAIN."""
    empty: list[socket.socket] = []

    def counting(name: str) -> Any:
        real = getattr(socket.socket, name)

        def read(self: socket.socket, *args: Any) -> Any:
            try:
                return real(self, *args)
            except BlockingIOError:
                empty.append(self)
                raise
        return read

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            for name in ("recvmsg_into", "recvfrom_into"):
                monkeypatch.setattr(socket.socket, name, counting(name))
            writers = await _connect_close(server, 5)
            monkeypatch.undo()
    clients = {id(w.get_extra_info("socket")) for w in writers}
    assert [s for s in empty if id(s) in clients] == []


async def test_connection_lost_comes_with_the_segment_that_ends_the_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer's ACK of our FIN is taken in a loop callback; connection_lost is made as
    that callback's `process_events` returns, not by a call_soon one loop iteration
    later (the task awaiting wait_closed() ran one iteration later for it)."""
    loop = asyncio.get_running_loop()
    deferred: list[object] = []
    real_call_soon = loop.call_soon

    def call_soon(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__func__", None) is UtcpTransport._call_connection_lost:
            deferred.append(callback)
        return real_call_soon(callback, *args, **kwargs)
    try:
        monkeypatch.setattr(loop, "call_soon", call_soon)
    except AttributeError:
        pytest.skip("this loop's methods cannot be replaced on the instance (uvloop)")
    lost: list[object] = []
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
            protocol = writer.transport.get_protocol()
            real_lost = protocol.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                lost.append(exc)
                real_lost(exc)
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            writer.write(b"q")
            assert await reader.readexactly(1) == b"a"
            writer.close()
            assert lost == []  # never within close() itself
            await writer.wait_closed()
            monkeypatch.undo()
    assert lost == [None]
    assert [d for d in deferred if d.__self__ is writer.transport] == []  # type: ignore[attr-defined]


async def test_client_connections_make_no_timer_handle_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client port files its deadlines with its loop's ClientTimers, behind one call_at
    handle: sequential connects (a SYN's RTO, the data's, 2MSL each) made two or
    three TimerHandles each in the loop's heap. The timers are long so that nothing
    fires while the test runs: the first connection's SYN, data and delayed ACK arm
    the handle in turn, and every later deadline is later."""
    def a_client_ports(_when: float, callback: Any) -> bool:
        owner = getattr(callback, "__self__", None)
        return isinstance(owner, port_module.ClientTimers) or (
            isinstance(owner, port_module.UdpPort) and owner.connected)
    handles = spy_call_at(monkeypatch, a_client_ports)
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=SLOW_TIMERS)
        async with serving(server):
            writers = await _connect_close(server, 10, SLOW_TIMERS)
            monkeypatch.undo()
    assert all(w.get_extra_info("state") is State.TIME_WAIT for w in writers)
    assert len(handles) <= 3, f"{len(handles)} TimerHandles for 10 client connections"


class _FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.armed: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        self.armed.append((when, callback))
        return asyncio.TimerHandle(when, callback, (), asyncio.new_event_loop())


class _FakePort:
    def __init__(self, loop: _FakeLoop) -> None:
        self.loop = loop
        self.timer_slot: list[Any] = [self]
        self.filed_at: float | None = None
        self.due: list[float] = []

    def file(self, timers: port_module.ClientTimers, deadline: float) -> None:
        self.filed_at = deadline
        timers.file(self, deadline)  # type: ignore[arg-type]

    def on_due(self, now: float) -> None:
        self.due.append(now)


def test_client_timers_run_the_live_deadlines_behind_one_handle() -> None:
    loop = _FakeLoop()
    timers = port_module.ClientTimers(loop)  # type: ignore[arg-type]
    a, b, c = _FakePort(loop), _FakePort(loop), _FakePort(loop)
    a.file(timers, 1.0)
    b.file(timers, 2.0)
    c.file(timers, 3.0)
    assert [when for when, _ in loop.armed] == [1.0]  # later ones need no new handle
    a.file(timers, 5.0)      # moved later: its 1.0 goes stale
    b.timer_slot[0] = None   # b's port closed
    loop.now = 1.0
    loop.armed[-1][1]()      # the handle fires: nothing live was due
    assert (a.due, b.due, c.due) == ([], [], [])
    assert loop.armed[-1][0] == 3.0  # re-armed for the next live deadline, c's
    loop.now = 3.0004        # a hair late: run at the time it fired
    loop.armed[-1][1]()
    assert c.due == [3.0004] and c.filed_at is None
    assert loop.armed[-1][0] == 5.0
    loop.now = 4.9999        # a hair early: run as at its deadline, never before
    loop.armed[-1][1]()
    assert a.due == [5.0]
    assert timers.heap == []


def test_client_timers_drop_stale_entries_once_they_outnumber_the_live() -> None:
    loop = _FakeLoop()
    timers = port_module.ClientTimers(loop)  # type: ignore[arg-type]
    port = _FakePort(loop)
    for i in range(10 * port_module.ClientTimers.COMPACT_MIN):
        port.file(timers, 100.0 + i)  # an RTO that moves on with every segment
    assert len(timers.heap) <= port_module.ClientTimers.COMPACT_MIN + 1
    assert min(timers.heap)[0] <= port.filed_at


async def test_a_busy_client_port_keeps_its_early_deadline() -> None:
    """A running exchange moves the client's deadline later with nearly every segment
    (the retransmission timer, the delayed ACK): after a few filings its early entry is
    kept, fires, finds nothing due and files the deadline of that moment, so the loop's
    heap is not pushed twice per exchange. The exchange itself is unaffected."""
    exchanges = 300
    # an early entry that fires every 200 ms at most (the delayed ACK's): the bound
    # below holds unless an exchange on loopback takes a good part of that
    config = utcp.Config(mss=1400, pmtu_probing=False, ack_delay=0.2)
    async with echo_server(config=config) as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=config)
        port = transport_of(writer)._port
        timers = port._client_timers
        assert timers is not None
        before = timers._filed
        async with asyncio.timeout(TIMEOUT):
            for i in range(exchanges):
                message = i.to_bytes(4, "big") * 16
                writer.write(message)
                assert await reader.readexactly(len(message)) == message
        filed = timers._filed - before
        writer.close()
        await writer.wait_closed()
    # two filings per exchange when every later deadline was filed; now at most five
    # after each timer wake-up, which comes once per delayed-ACK interval at most
    assert filed < exchanges, filed


async def test_a_timer_wake_up_with_nothing_due_only_files_the_next_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept early entry (or a server's early handle) fires before the deadline of the
    moment: the port files that deadline and runs no timer service; a wake-up at or past
    it runs the service as before."""
    needs_patchable(endpoint_module, "Endpoint.handle_timer")
    async with echo_server(config=CONFIG) as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        port = transport_of(writer)._port
        serviced: list[float] = []
        monkeypatch.setattr(Endpoint, "handle_timer",
                            lambda self, now: serviced.append(now))
        deadline = port.endpoint.get_timer()
        assert deadline is not None  # keepalive, at least
        early = deadline - 1.0
        port.filed_at = None  # as ClientTimers._fire leaves it before on_due
        port.on_due(early)
        assert serviced == [] and port.filed_at == deadline
        port.filed_at = None
        port.on_due(deadline)
        assert serviced == [deadline]
        monkeypatch.undo()
        writer.close()
        await writer.wait_closed()
