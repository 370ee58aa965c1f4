"""What one connection costs the sans-IO core, counted, not timed (issue #13: connect+close).

`python -m benchmarks.instructions --connect` gives the instructions per connection
(both ends; pure and compiled); these tests keep its structural wins from creeping
back: the events a connection queues are shared objects made once, the ISN is one MAC
of packed bytes, a client's endpoint builds no `collections.Counter` it never counts
in, and the pure build's Python calls per connection stay under a ceiling.
"""

from __future__ import annotations

import collections
import gc
from typing import Any

import pytest

from tests.test_perf_exchange import python_calls
from utcp import crypto, wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.crypto import HandshakeSecrets
from utcp.endpoint import Endpoint
from utcp.events import (
    EOF_RECEIVED,
    HANDSHAKE_COMPLETED,
    SEND_CLOSED,
    STATE_CHANGES,
    TERMINATED,
    EofReceived,
    HandshakeCompleted,
    SendClosed,
    StateChanged,
    Terminated,
)
from utcp.state import TRANSITIONS, State

CONFIG = Config(mss=1400, pmtu_probing=False)  # benchmarks' profile "1400"
SERVER = ("127.0.0.1", 5000)


class Run:
    """Sequential connections as the asyncio adapter makes them (benchmarks.instructions
    --connect): a client endpoint each, one listening server, a 1-byte request and
    answer, the client closes first and sits out its TIME_WAIT."""

    def __init__(self) -> None:
        self.server = Endpoint(CONFIG, SERVER[1], listening=True, backlog=1024,
                               secrets=HandshakeSecrets(b"s" * 32))
        self.secrets = HandshakeSecrets(b"c" * 32)
        self.now = 0.0
        self.made = 0

    def hop(self, client: Endpoint, addr: tuple[str, int]) -> None:
        self.now += 50e-6
        for ep in (client, self.server):
            deadline = ep.get_timer()
            if deadline is not None and deadline <= self.now:
                ep.handle_timer(self.now)
        for datagram, _ in client.datagrams_to_send(self.now):
            self.server.receive_datagram(datagram, addr, self.now)
        for datagram, _ in self.server.datagrams_to_send(self.now):
            client.receive_datagram(datagram, SERVER, self.now)

    def connection(self) -> tuple[Endpoint, Connection, Connection]:
        """One whole connection: (the client's endpoint, its connection, the server's)."""
        self.made += 1
        addr = ("127.0.0.1", 10000 + self.made)
        client = Endpoint(CONFIG, addr[1], secrets=self.secrets)
        conn = client.connect(SERVER, self.now)
        self.hop(client, addr)
        conn.send(b"C")
        self.hop(client, addr)
        peer = self.server.accept()
        assert peer is not None and peer.read() == b"C"
        peer.send(b"c")
        self.hop(client, addr)
        assert conn.read() == b"c"
        conn.close()
        self.hop(client, addr)
        peer.close()
        self.hop(client, addr)
        self.hop(client, addr)
        assert conn.state is State.TIME_WAIT and peer.state is State.CLOSED
        deadline = client.get_timer()
        assert deadline is not None
        self.now = deadline
        self.hop(client, addr)
        assert _state(conn) is State.CLOSED and client.get_timer() is None
        return client, conn, peer


def _state(conn: Connection) -> State:
    return conn.state  # read afresh: mypy keeps an earlier assert's narrowing otherwise


def _drain(conn: Connection) -> list[Any]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def test_the_events_of_a_whole_connection_are_the_shared_instances() -> None:
    """Every event both ends queue, from the SYN to CLOSED, is one made at import: a
    frozen dataclass built per transition cost about 4,000 instructions compiled (its
    __init__ is the dataclasses module's Python), eleven per connection."""
    run = Run()
    _, conn, peer = run.connection()
    client_events, server_events = _drain(conn), _drain(peer)
    assert [type(e).__name__ for e in client_events] == [
        "StateChanged", "StateChanged", "HandshakeCompleted", "StateChanged", "SendClosed",
        "StateChanged", "EofReceived", "StateChanged", "StateChanged", "Terminated"]
    assert [(e.old, e.new) for e in client_events if isinstance(e, StateChanged)] == [
        (State.CLOSED, State.SYN_SENT), (State.SYN_SENT, State.ESTABLISHED),
        (State.ESTABLISHED, State.FIN_WAIT_1), (State.FIN_WAIT_1, State.FIN_WAIT_2),
        (State.FIN_WAIT_2, State.TIME_WAIT), (State.TIME_WAIT, State.CLOSED)]
    assert [type(e).__name__ for e in server_events] == [
        "StateChanged", "StateChanged", "HandshakeCompleted", "EofReceived", "StateChanged",
        "StateChanged", "SendClosed", "StateChanged", "Terminated"]
    for event in client_events + server_events:
        if isinstance(event, StateChanged):
            assert event is STATE_CHANGES[event.old][event.new]
        else:
            assert event in (HANDSHAKE_COMPLETED, EOF_RECEIVED, SEND_CLOSED, TERMINATED)
            assert any(event is shared for shared in (
                HANDSHAKE_COMPLETED, EOF_RECEIVED, SEND_CLOSED, TERMINATED))
    # a second connection queues the very same objects
    _, again, _ = run.connection()
    assert all(a is b for a, b in zip(_drain(again), client_events, strict=True))


def test_shared_events_read_as_new_ones_did() -> None:
    """Compared, hashed and printed by value as before: nobody can tell them apart."""
    for (old, _), new in TRANSITIONS.items():
        assert STATE_CHANGES[old][new] == StateChanged(old, new)
        assert hash(STATE_CHANGES[old][new]) == hash(StateChanged(old, new))
    assert HandshakeCompleted() == HANDSHAKE_COMPLETED and EofReceived() == EOF_RECEIVED
    assert SendClosed() == SEND_CLOSED and Terminated(None) == TERMINATED
    assert repr(STATE_CHANGES[State.CLOSED][State.SYN_SENT]) == \
        "StateChanged(old=State.CLOSED, new=State.SYN_SENT)"


def test_a_failed_connection_still_gets_its_own_terminated() -> None:
    ep = Endpoint(CONFIG, 1, secrets=HandshakeSecrets(b"c" * 32))
    conn = ep.connect(("127.0.0.1", 2), 0.0)
    assert conn.icmp_unreachable()
    ended = [e for e in _drain(conn) if isinstance(e, Terminated)]
    assert len(ended) == 1 and ended[0] is not TERMINATED
    assert isinstance(ended[0].error, ConnectionRefusedError)


def test_the_isn_is_one_mac_of_packed_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each client connection makes one ISN (RFC 6528): its input is packed, not the
    text `_prf` formats for cookies (most of the call's cost)."""
    def refuse(*args: object) -> int:
        raise AssertionError("the ISN went through _prf's text")

    monkeypatch.setattr(HandshakeSecrets, "_prf", refuse)
    secrets = HandshakeSecrets(b"k" * 32)
    peer = ("192.0.2.1", 443)
    isn = secrets.isn(peer, 40000, 10.0)
    assert 0 <= isn < 1 << 32
    # keyed (RFC 6528's F), by every part of the 4-tuple, plus the 4 µs clock M
    assert isn == HandshakeSecrets(b"k" * 32).isn(peer, 40000, 10.0)
    assert isn != HandshakeSecrets(b"j" * 32).isn(peer, 40000, 10.0)
    assert isn != secrets.isn(("192.0.2.2", 443), 40000, 10.0)
    assert isn != secrets.isn(("192.0.2.1", 444), 40000, 10.0)
    assert isn != secrets.isn(peer, 40001, 10.0)
    assert secrets.isn(peer, 40000, 11.0) == (isn + 250_000) & 0xFFFFFFFF


def test_the_isn_input_is_never_a_cookie_input() -> None:
    """F's input starts with a NUL byte; every `_prf` text starts with its tag."""
    fields = crypto._ISN_PORTS.pack(443, 40000)
    assert fields[:1] == b"\0" and len(fields) == 5
    assert crypto._ISN_PORTS.pack(443, 40000) != crypto._ISN_PORTS.pack(40000, 443)


def test_a_client_endpoint_builds_no_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's endpoint (one per connection in the adapter) counts nothing on a
    clean connection: its Counter, whose __init__ is Python code, waits for a count."""
    made = []

    class Counting(collections.Counter[str]):
        def __init__(self) -> None:
            made.append(self)
            super().__init__()

    run = Run()
    run.connection()  # the server's counters made (it counts each SYN accepted)
    monkeypatch.setattr(collections, "Counter", Counting)
    client, _, _ = run.connection()
    assert made == []
    client.counters["a count"] += 1  # made when asked for, then kept
    assert len(made) == 1 and client.counters["a count"] == 1


def test_options_encode_as_before() -> None:
    """Options.encode appends constant kinds and packs what varies now: the bytes are
    those the tuple-built encoder gave (RFC 9293, RFC 7323, Linux's order, NOPs)."""
    opts = wire.Options(mss=1400, wscale=7, sack_permitted=True, timestamps=(1, 2))
    assert opts.encode() == bytes.fromhex("0204057804020101080a0000000100000002010303070101")
    assert wire.Options(mss=536).encode() == bytes.fromhex("02040218")
    assert wire.Options(wscale=14).encode() == bytes.fromhex("0103030e")
    assert wire.Options(sack_permitted=True).encode() == bytes.fromhex("04020101")
    assert wire.Options(timestamps=(5, 6), sack=((1, 2),)).encode() == bytes.fromhex(
        "0101080a0000000500000006" "0101050a0000000100000002")
    with pytest.raises(ValueError):
        wire.Options(wscale=256).encode()


@pytest.mark.skipif(not wire.__file__.endswith(".py"), reason="counts interpreted calls")
def test_python_calls_per_connection() -> None:
    """The pure build's Python calls for one connection's whole life, both ends and the
    driver: 651 before the shared events, the packed ISN, the lazy Counter, the direct
    NewReno and the transition table read in place (what remains is mostly the
    datagrams' paths); about 30 more since the ACK of the client's FIN goes alone."""
    run = Run()
    for _ in range(3):
        run.connection()
    per_connection = python_calls(run.connection, 20)
    assert per_connection < 650, per_connection


def test_a_finished_connection_is_freed_without_the_cycle_collector() -> None:
    """Both ends of a whole connection, and the client's endpoint, are freed by reference
    counting once let go: a connection's parts (sender, receiver, loss recovery) and the
    endpoint's hook pointed back at it, so each finished connection left a dozen objects
    for the cycle collector, walked in every young collection they survived."""
    run = Run()
    run.connection()  # the first connection's one-time work (imports, caches)
    gc.collect()
    gc.disable()
    try:
        client, conn, peer = run.connection()
        _drain(conn), _drain(peer)
        assert peer not in run.server.connections.values()
        del client, conn, peer
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_data_left_unread_is_still_read_once_the_connection_is_closed() -> None:
    """The server gets the request and the FIN, closes without reading and is CLOSED
    (forgotten, its parts let go of it) before its application reads: the bytes are
    still there, and reading them asks nothing of the parts (no window to reopen)."""
    run = Run()
    addr = ("127.0.0.1", 9999)
    client = Endpoint(CONFIG, addr[1], secrets=run.secrets)
    conn = client.connect(SERVER, run.now)
    run.hop(client, addr)
    conn.send(b"request")
    conn.close()
    run.hop(client, addr)
    peer = run.server.accept()
    assert peer is not None and peer.eof_received
    peer.close()
    for _ in range(3):
        run.hop(client, addr)
    assert _state(peer) is State.CLOSED and peer not in run.server.connections.values()
    assert peer.read(3) == b"req" and peer.read_pieces(1 << 16) == b"uest"
    assert peer.read() == b"" and peer.stats().bytes_received == len(b"request")
