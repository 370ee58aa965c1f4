"""A segment without data carries a sequence number the peer accepts (Sender.ack_seq).

A FIN (or data) sent into a window that then shut leaves snd_max past the right edge of
the peer's window. A pure ACK or a RST carrying snd_max there is out of the peer's
window: the peer drops it, ACK field and all. The case that hurt: a client half-closes
while the server's application reads nothing (its window shut); the server's keepalive
probes were answered with such ACKs, never counted, and the server ended a live
connection 55 s later ("keepalive probes unanswered"). Linux sends these segments at
the window's edge (tcp_acceptable_seq); so does utcp now.
"""

from __future__ import annotations

import random

from utcp import seq as sq
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

SERVER = ("127.0.0.1", 5000)
CLIENT = ("127.0.0.1", 6000)


class Net:
    """Two endpoints, every datagram delivered, a clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.server = Endpoint(Config(recv_buffer=1024, pmtu_probing=False), SERVER[1],
                               listening=True, rng=random.Random(1))
        self.client = Endpoint(Config(pmtu_probing=False), CLIENT[1], rng=random.Random(2))
        self.from_client: list[wire.Segment] = []

    def run(self, seconds: float, step: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            for ep in (self.client, self.server):
                deadline = ep.get_timer()
                if deadline is not None and deadline <= self.now:
                    ep.handle_timer(self.now)
            for data, _ in self.client.datagrams_to_send(self.now):
                self.from_client.append(wire.parse(data))
                self.server.receive_datagram(data, CLIENT, self.now)
            for data, _ in self.server.datagrams_to_send(self.now):
                self.client.receive_datagram(data, SERVER, self.now)


def shut_window_then_half_close() -> tuple[Net, Connection, Connection]:
    net = Net()
    conn = net.client.connect(SERVER, net.now)
    net.run(0.05, 0.01)
    peer = net.server.accept()
    assert peer is not None and conn.state is State.ESTABLISHED
    conn.send(b"x" * 1024)  # the server's whole buffer: its application reads nothing
    net.run(0.2, 0.01)
    assert conn.snd_wnd == 0 and conn.snd_una == conn.snd_max
    conn.close()  # the FIN goes into the shut window, which cannot take it
    net.run(0.5, 0.01)
    assert conn.state is State.FIN_WAIT_1 and conn.snd_max == conn.snd_una + 1
    return net, conn, peer


def test_pure_acks_past_a_shut_window_carry_its_edge() -> None:
    net, conn, peer = shut_window_then_half_close()
    assert conn.sender.ack_seq() == conn.snd_una  # the edge, not snd_max (the FIN's end)
    net.from_client.clear()
    net.run(120.0, 1.0)  # the server's keepalive probes, and the client's answers
    answers = [s for s in net.from_client if s.flags == wire.ACK and not s.payload]
    assert answers
    assert all(s.seq == sq.wrap(peer.rcv_nxt) for s in answers)


def test_the_server_keeps_a_live_peer_whose_fin_its_window_cannot_take() -> None:
    net, conn, peer = shut_window_then_half_close()
    # The FIN's retransmissions (whose ACK field the server takes, RFC 9293 §3.10.7.4)
    # restart its keepalive too, until their backed-off interval (rto_max, 60 s) grows
    # past keepalive's 25 s + 6 x 5 s: run well beyond that, short of the client giving
    # up on the FIN (max_retransmissions)
    keepalive_death = (peer.config.keepalive_interval or 0) + (
        peer.config.keepalive_probes * peer.config.keepalive_probe_interval)
    assert keepalive_death < conn.config.rto_max
    net.run(300.0, 1.0)
    assert peer.state is State.ESTABLISHED, peer.error
    assert peer.rcv.size == 1024  # what it holds is still there for its application
    assert conn.state is State.FIN_WAIT_1
    # once the application reads, the window opens and the FIN gets in (resent by the
    # retransmission timer, backed off to at most rto_max)
    assert peer.read(-1) == b"x" * 1024
    net.run(conn.config.rto_max + 5.0, 0.5)
    assert peer.state is State.CLOSE_WAIT and conn.state is State.FIN_WAIT_2


def test_a_reset_past_a_shut_window_is_taken() -> None:
    """abort() in that state: the RST must land, or the server keeps a dead connection."""
    net, conn, peer = shut_window_then_half_close()
    conn.abort()
    net.run(0.1, 0.01)
    assert peer.state is State.CLOSED
    assert isinstance(peer.error, ConnectionResetError)
