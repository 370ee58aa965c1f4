"""ACKs that wait for the application's answer: fewer datagrams per exchange.

The core defers two ACKs to "the next timer service, at this same instant": the last
ACK of the handshake (a client usually writes its request at once) and the ACK of a
FIN in a passive close (a server usually closes when it reads EOF). A driver that
services its due timers after running the application sends one segment instead of
two; one whose application stays silent still sends the ACK without delay.
"""

from __future__ import annotations

import random

from tests.script import Script
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State
from utcp.timers import Timer

SERVER = ("127.0.0.1", 5000)
CLIENT = ("127.0.0.1", 6000)
CFG = Config()


def segments(out: list[tuple[bytes, object]]) -> list[wire.Segment]:
    return [wire.parse(d) for d, _ in out]


def pure_acks(segs: list[wire.Segment]) -> list[wire.Segment]:
    return [s for s in segs if s.flags == wire.ACK and not s.payload]


class Pair:
    """A client and a server endpoint wired by hand, the clock standing still, driven as
    `UdpPort` drives them: right after an input the receiver's output is flushed (before
    the application runs); due timers are serviced on the loop's next step."""

    def __init__(self) -> None:
        self.now = 0.0
        self.server = Endpoint(CFG, SERVER[1], listening=True, rng=random.Random(1))
        self.client = Endpoint(CFG, CLIENT[1], rng=random.Random(2))
        self.wire_log: list[tuple[str, wire.Segment]] = []
        # what each endpoint sent right after its last input, before its application ran
        self.flushed: dict[Endpoint, list[tuple[bytes, object]]] = {
            self.server: [], self.client: []}

    def accept(self) -> Connection | None:
        return self.server.accept()

    def to_server(self, *, timers: bool = True) -> list[wire.Segment]:
        return self._move(self.client, self.server, CLIENT, "c>s", timers)

    def to_client(self, *, timers: bool = True) -> list[wire.Segment]:
        return self._move(self.server, self.client, SERVER, "s>c", timers)

    def _move(self, src: Endpoint, dst: Endpoint, src_addr: tuple[str, int], tag: str,
              timers: bool) -> list[wire.Segment]:
        out = self.flushed[src] + src.datagrams_to_send(self.now)
        self.flushed[src] = []
        if timers:  # an event loop's next step: the timers already due
            deadline = src.get_timer()
            if deadline is not None and deadline <= self.now:
                src.handle_timer(self.now)
                out += src.datagrams_to_send(self.now)
        for data, _ in out:
            dst.receive_datagram(data, src_addr, self.now)
        self.flushed[dst] = dst.datagrams_to_send(self.now)
        segs = segments(out)
        self.wire_log += [(tag, s) for s in segs]
        return segs

    def first_read(self) -> tuple[Connection, Connection]:
        """Connect, send "ping", the server accepts and reads it: (client, server)."""
        client = self.handshake_up_to_synack()
        client.send(b"ping")
        self.to_server()
        server = self.accept()
        assert server is not None and server.read() == b"ping"
        return client, server

    def handshake_up_to_synack(self) -> Connection:
        conn = self.client.connect(SERVER, self.now)
        (syn,) = self.to_server()
        assert syn.flags == wire.SYN
        (synack,) = self.to_client(timers=False)
        assert synack.flags == wire.SYN | wire.ACK
        assert conn.state == State.ESTABLISHED
        return conn

    def established(self) -> tuple[Connection, Connection]:
        conn = self.handshake_up_to_synack()
        self.to_server()
        accepted = self.accept()
        assert accepted is not None and accepted.state == State.ESTABLISHED
        return conn, accepted


def test_first_request_carries_the_handshake_ack() -> None:
    pair = Pair()
    conn = pair.handshake_up_to_synack()
    assert pair.flushed[pair.client] == []  # no bare ACK right after the SYN+ACK
    conn.send(b"GET / HTTP/1.0\r\n\r\n")  # the application writes before the loop turns
    (request,) = pair.to_server()
    assert request.flags & wire.ACK and request.payload == b"GET / HTTP/1.0\r\n\r\n"
    server_conn = pair.accept()
    assert server_conn is not None and server_conn.state == State.ESTABLISHED
    assert server_conn.read() == b"GET / HTTP/1.0\r\n\r\n"
    assert conn.get_timer() != 0.0  # nothing left owed at "now"


def test_silent_client_still_acks_the_synack_at_once() -> None:
    pair = Pair()
    conn = pair.handshake_up_to_synack()
    assert conn.get_timer() == pair.now  # due now, not after the delayed-ACK timer
    (ack,) = pair.to_server()  # the driver services the due timer
    assert ack.flags == wire.ACK and not ack.payload
    assert pair.accept() is not None


def test_passive_close_acks_the_peer_fin_at_once_even_if_it_closes_soon() -> None:
    """The peer's close() returns when its FIN is acknowledged: the ACK does not wait
    for the application's own close to carry it (that wait was the application's next
    turn, about 40 us of every close on loopback)."""
    pair = Pair()
    client, server = pair.established()
    client.close()
    (fin,) = pair.to_server()
    assert fin.flags & wire.FIN
    assert server.state == State.CLOSE_WAIT and server.eof_received
    # flushed right after the FIN came in, before any timer service
    assert [s.flags for s in segments(pair.flushed[pair.server])] == [wire.ACK]
    server.close()  # the application closes as soon as it reads EOF
    ack, fin_ack = pair.to_client()
    assert ack.flags == wire.ACK and fin_ack.flags == wire.FIN | wire.ACK
    assert client.state == State.TIME_WAIT
    (last,) = pair.to_server()
    assert last.flags == wire.ACK
    assert server.state == State.CLOSED


def test_passive_close_acks_fin_at_once_when_the_application_stays_open() -> None:
    pair = Pair()
    client, server = pair.established()
    client.close()
    pair.to_server()
    (ack,) = pair.to_client(timers=False)  # no close from the application: the ACK alone
    assert ack.flags == wire.ACK and not ack.payload
    assert client.state == State.FIN_WAIT_2
    server.send(b"still talking")  # half-close: the other direction goes on
    (data,) = pair.to_client()
    assert data.payload == b"still talking"
    assert client.read() == b"still talking"


def test_active_closer_acks_the_last_fin_at_once() -> None:
    pair = Pair()
    client, server = pair.established()
    client.close()
    pair.to_server()
    pair.to_client()  # ACK of the client's FIN
    server.close()
    pair.to_client()  # the server's FIN
    assert client.state == State.TIME_WAIT
    segs = pair.to_server(timers=False)  # no timer service needed for this one
    assert [s.flags for s in segs] == [wire.ACK]


def test_whole_exchange_takes_eight_datagrams() -> None:
    """connect, a request, its answer, close from both sides: 4 + 4 datagrams here (was
    9: a separate handshake ACK; 7 while the ACK of the client's FIN waited for the
    server's FIN, which made the client's close wait for the server application). The
    window update the server owes after its first read (its SYN+ACK could offer only
    64 KiB) rides on its answer, written before its next flush."""
    pair = Pair()
    client, server = pair.first_read()
    server.send(b"pong")
    pair.to_client()
    assert client.read() == b"pong"
    client.close()
    pair.to_server()
    assert server.eof_received
    server.close()
    pair.to_client()
    pair.to_server()
    pair.to_client()  # nothing more
    assert client.state == State.TIME_WAIT and server.state == State.CLOSED
    # TIME_WAIT keeps only its 2MSL timer: the server's FIN, heard after the transition
    # into it, used to restart keepalive there (a wake-up 25 s later for nothing)
    assert list(client.timers.pending()) == [Timer.TIME_WAIT]
    sent = [(tag, s.flags, len(s.payload)) for tag, s in pair.wire_log]
    A, S, F, P = wire.ACK, wire.SYN, wire.FIN, wire.PSH
    assert sent == [("c>s", S, 0), ("s>c", S | A, 0), ("c>s", P | A, 4), ("s>c", P | A, 4),
                    ("c>s", F | A, 0), ("s>c", A, 0), ("s>c", F | A, 0), ("c>s", A, 0)]


def test_read_that_reopens_a_nearly_closed_window_updates_at_once() -> None:
    """The peer is almost out of window: the update cannot wait for its next segments."""
    cfg = Config(recv_buffer=16 * 1400, send_buffer=1 << 20, mss=1400, pmtu_probing=False)
    server = Endpoint(cfg, SERVER[1], listening=True, rng=random.Random(1))
    client = Endpoint(cfg, CLIENT[1], rng=random.Random(2))
    now = 0.0
    conn = client.connect(SERVER, now)

    def move(src: Endpoint, dst: Endpoint, addr: tuple[str, int]) -> list[wire.Segment]:
        out = src.datagrams_to_send(now)
        deadline = src.get_timer()
        if deadline is not None and deadline <= now:
            src.handle_timer(now)
            out += src.datagrams_to_send(now)
        for d, _ in out:
            dst.receive_datagram(d, addr, now)
        return segments(out)

    for _ in range(3):
        move(client, server, CLIENT)
        move(server, client, SERVER)
    peer = server.accept()
    assert peer is not None
    conn.send(b"y" * (64 * 1400))
    for _ in range(20):  # fill the server's buffer: the application does not read
        move(client, server, CLIENT)
        move(server, client, SERVER)
    assert peer.readable >= 14 * 1400  # the window is (nearly) closed
    assert peer.rcv_adv - peer.rcv_nxt < 4 * peer.snd_mss  # under four segments left
    peer.read()
    # in the port's next round, no timer serviced: this update cannot wait even for that
    update = pure_acks(segments(server.datagrams_to_send(now)))
    assert len(update) == 1 and update[0].window > 0


def test_a_segment_past_a_hole_draws_one_duplicate_ack_not_two() -> None:
    """Each segment past a hole is answered at once with a duplicate ACK (RFC 5681 §4.2),
    and that is all it is owed: the delay timer, armed after that ACK went out, sent the
    same ACK again 40 ms later, one duplicate ACK more than segments arrived (with two
    genuine ones, a third that makes a sender resend a segment that was only late)."""
    cfg = Config(mss=1000, timestamps=False, sack=False, pacing=False, pmtu_probing=False)
    s = Script(cfg, port=80, listening=True, isns=(5000,), peer=CLIENT)
    s.inject("S", 9000, 0, window=65535, options=wire.Options(mss=1000))
    s.expect("S.", 5000, 9001)
    s.inject(".", 9001, 5001)
    assert s.ep.accept() is not None
    s.inject(".", 10001, 5001, payload=bytes(1000))  # past a hole at 9001..10001
    s.expect(".", 5001, 9001)  # the duplicate ACK, at once
    s.advance(1.0)
    s.expect_nothing()
