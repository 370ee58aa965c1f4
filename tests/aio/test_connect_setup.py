"""What setting up one client connection costs the adapter, counted rather than timed
(issue #13: connect+close per second): the socket's options, the loop's shared state,
the ISN, the calls between `open_connection` and the handshake, the order of the SYN
and the loop's registration, the port's attributes and the shutdown hook's bookkeeping.

Each test fails on the code before the change it guards: a `getattr` of the socket
module per buffer (CPython names no FORCE option, so each missed and built an
AttributeError), a WeakKeyDictionary lookup per port, an ISN made by the interpreted
`HandshakeSecrets.isn`, the general path's coroutines for an address written out, a
SYN sent after add_reader, instance attributes for what every port starts with, and a
WeakKeyDictionary lookup per tracked port.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from typing import Any

import pytest

import utcp
from tests.aio.util import HOST, TIMEOUT, answer_once, port_of, serving
from utcp import crypto, isn, wire
from utcp.aio import api, shutdown
from utcp.aio import port as port_module
from utcp.aio.port import UdpPort
from utcp.config import Config
from utcp.endpoint import Endpoint

CONFIG = utcp.Config(mss=1400, pmtu_probing=False)


# ---------------------------------------------------------------------- socket buffers

class _Sock:
    """Records setsockopt calls; refuses the options in `refused`."""

    def __init__(self, refused: frozenset[int] = frozenset()) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refused = refused

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.calls.append((level, name, value))
        if name in self.refused:
            raise PermissionError(1, "refused")


def test_the_buffer_options_are_looked_up_once() -> None:
    """The options tried, FORCE first where the socket module has it, read at import."""
    expected = tuple(
        tuple(name for name in (getattr(socket, force, None), opt) if name is not None)
        for opt, force in ((socket.SO_RCVBUF, "SO_RCVBUFFORCE"),
                           (socket.SO_SNDBUF, "SO_SNDBUFFORCE")))
    assert expected == port_module._BUFFER_OPTIONS


def test_each_buffer_is_set_by_the_first_option_that_takes() -> None:
    sock = _Sock()
    port_module.set_socket_buffers(sock, 1 << 20)  # type: ignore[arg-type]
    assert sock.calls == [(socket.SOL_SOCKET, names[0], 1 << 20)
                          for names in port_module._BUFFER_OPTIONS]


def test_a_refused_option_falls_back_to_the_next() -> None:
    firsts = frozenset(names[0] for names in port_module._BUFFER_OPTIONS)
    sock = _Sock(refused=firsts)
    port_module.set_socket_buffers(sock, 1 << 20)  # type: ignore[arg-type]
    tried = [name for _, name, _ in sock.calls]
    assert tried == [name for names in port_module._BUFFER_OPTIONS for name in names]


# ---------------------------------------------------------------------- the loop's shared state

def test_a_loops_shared_state_is_found_again_and_freed_with_the_loop() -> None:
    """One `_LoopShared` per loop, kept on the loop: it refers back to the loop (its
    ClientTimers' handle and ports), so as a WeakKeyDictionary's value it kept its key,
    and every closed loop, alive."""
    loop = asyncio.new_event_loop()
    other = asyncio.new_event_loop()
    try:
        shared = port_module._shared(loop)
        assert port_module._shared(loop) is shared
        assert port_module._shared(other) is not shared
        assert port_module._shared(loop) is shared
        # what keeps a loop alive if nothing frees them together: an armed handle
        shared.client_timers._arm(loop, loop.time() + 60)
    finally:
        other.close()
        loop.close()
    gone = weakref.ref(loop)
    del loop, other, shared
    gc.collect()
    assert gone() is None


def test_asyncio_run_frees_its_loop_and_closes_lingering_sockets() -> None:
    """A program that runs asyncio.run again and again, its client connections left to
    TIME_WAIT each time: the loop's shutdown closes their sockets (they stayed open in
    the lingering table until the port was collected, which the table prevented) and
    the closed loop is freed."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    sockets: list[socket.socket] = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            for _ in range(3):
                reader, writer = await utcp.open_connection(
                    HOST, port_of(server), config=CONFIG)
                writer.write(b"q")
                assert await reader.readexactly(1) == b"a"
                writer.close()
                await writer.wait_closed()  # TIME_WAIT: the client's socket lingers
                sockets.append(writer.get_extra_info("socket"))

    for _ in range(3):
        asyncio.run(main())
    assert all(sock.fileno() == -1 for sock in sockets), [s.fileno() for s in sockets]
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


# ---------------------------------------------------------------------- the ISN

def test_the_endpoint_makes_the_isn_that_the_secrets_make() -> None:
    """One F (RFC 6528), called natively by the endpoint with the secret's key: the ISN
    a client connection starts with is `HandshakeSecrets.isn`'s."""
    secrets = crypto.HandshakeSecrets(b"k" * 32)
    peer = ("192.0.2.1", 443)
    ep = Endpoint(Config(), 40000, secrets=secrets)
    conn = ep.connect(peer, 10.0)
    assert conn.iss == secrets.isn(peer, 40000, 10.0)
    assert conn.iss == isn.keyed_isn(secrets.isn_key, peer, 40000, 10.0)


def test_the_isn_key_is_copied_never_updated() -> None:
    secrets = crypto.HandshakeSecrets(b"k" * 32)
    before = secrets.isn_key.copy().digest()
    first = isn.keyed_isn(secrets.isn_key, ("192.0.2.1", 443), 40000, 10.0)
    assert isn.keyed_isn(secrets.isn_key, ("192.0.2.1", 443), 40000, 10.0) == first
    assert secrets.isn_key.copy().digest() == before


# ---------------------------------------------------------------------- open_connection

def test_the_secrets_isn_takes_any_address_form() -> None:
    """`HandshakeSecrets.isn` takes an address as the socket module gives it (IPv6's
    4-tuple, a list) in both builds: the compiled F takes a (host, port) pair."""
    secrets = crypto.HandshakeSecrets(b"k" * 32)
    pair = secrets.isn(("::1", 5000), 6000, 1.0)
    assert secrets.isn(("::1", 5000, 0, 0), 6000, 1.0) == pair  # type: ignore[arg-type]
    assert secrets.isn(["::1", 5000], 6000, 1.0) == pair  # type: ignore[arg-type]


async def test_a_port_that_cannot_register_leaves_no_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The SYN goes before the port registers with the loop: should the registration
    fail, the connect raises and the connection is aborted, not left sending SYNs
    that nothing reads."""
    made: list[UdpPort] = []

    class Refusing(UdpPort):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def start_reading(self) -> None:
            raise OSError("registration refused")

    monkeypatch.setattr(api, "UdpPort", Refusing)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((HOST, 0))
        with pytest.raises(OSError, match="registration refused"):
            await utcp.open_connection(HOST, peer.getsockname()[1], config=CONFIG)
    (port,) = made
    async with asyncio.timeout(TIMEOUT):
        while not port.closed:  # the abort's RST flushed, then the idle port closes
            await asyncio.sleep(0.001)
    assert all(conn.state is utcp.State.CLOSED
               for conn in port.endpoint.connections.values())


async def test_an_address_written_out_skips_the_general_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect to an address written out, with no race, awaits its one attempt: the
    lookup, the attempts' list and the loop over them are for names and races."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the general path ran")

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(answer_once, HOST, 0, config=CONFIG)
        async with serving(server):
            monkeypatch.setattr(api, "_client_addresses", refuse)
            monkeypatch.setattr(api, "_first_connected", refuse)
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
            writer.write(b"q")
            assert await reader.readexactly(1) == b"a"
            writer.close()
            await writer.wait_closed()


async def test_a_refusal_on_the_short_path_reads_as_before() -> None:
    """The one attempt's refusal comes out as the general path gave it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        closed_port = probe.getsockname()[1]
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionRefusedError) as refused:
            await utcp.open_connection(HOST, closed_port, config=CONFIG)
    assert refused.value.errno is not None
    assert f"('{HOST}', {closed_port})" in str(refused.value)


async def test_the_syn_leaves_before_the_port_registers_with_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's port sends its SYN, then registers with the loop (asyncio's
    add_reader, the GSO and GRO probes), while the SYN travels: the SYN+ACK waits in
    the socket's queue, read once the loop polls."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((HOST, 0))
        peer.setblocking(False)
        queued: list[bytes | None] = []

        def spying(real: Any) -> Any:
            def spy(*args: Any) -> Any:
                try:
                    queued.append(peer.recv(2048))
                except BlockingIOError:
                    queued.append(None)
                return real(*args)
            return spy

        monkeypatch.setattr(loop, "add_reader", spying(loop.add_reader))
        connecting = asyncio.ensure_future(
            utcp.open_connection(HOST, peer.getsockname()[1], config=CONFIG))
        async with asyncio.timeout(TIMEOUT):
            while not queued:
                await asyncio.sleep(0.001)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
    syn = queued[0]
    assert syn is not None and syn[13] & wire.SYN and not syn[13] & wire.ACK


# ---------------------------------------------------------------------- the port's attributes

async def test_a_new_port_sets_few_instance_attributes() -> None:
    """What every port starts with is a class attribute: the constructor's instance
    attributes stay well within CPython 3.11's 30 keys an instance dictionary may share
    with its class's (beyond, each instance gets a dictionary of its own), leaving room
    for those a client's port sets once its connection runs."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port = UdpPort(loop, sock, Endpoint(CONFIG, sock.getsockname()[1]), reading=False)
        try:
            if (port_module.__file__ or "").endswith(".py"):
                assert len(vars(port)) <= 24
            else:  # compiled, a native class: its attributes are C fields
                assert not hasattr(port, "__dict__")
        finally:
            port.close()


# ---------------------------------------------------------------------- the shutdown hook

def test_a_loops_ports_are_tracked_without_the_lookup_and_forgotten_with_it() -> None:
    """A loop's ports join a set kept on the loop (found by an attribute lookup, not the
    WeakKeyDictionary's Python `get`), which goes with the loop; the hook still resets
    every port's connections at shutdown (tests/aio/test_dropin_shutdown.py runs it)."""
    class Port:
        closed = False

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop
            self.endpoint = Endpoint(CONFIG, 1)
            self.held = shutdown.Held(self)

        def reset_connections(self, *, closing_too: bool) -> None:
            pass

    async def main() -> list[Port]:
        loop = asyncio.get_running_loop()
        made = [Port(loop) for _ in range(3)]
        for port in made:
            shutdown.track(port)
        assert {held.port for held in getattr(loop, shutdown._PORTS_ATTR)} == set(made)
        assert set(shutdown._ports_of(loop)) == set(made)
        assert shutdown._loop_ports.get(loop) is None
        loops.append(weakref.ref(loop))
        return made

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    made = asyncio.run(main())
    del made
    gc.collect()
    assert [ref() for ref in loops] == [None]
