"""A segment without data carries a sequence number the peer accepts (Sender.ack_seq).

Data sent into a window the peer then shrank leaves snd_max past the right edge of the
peer's window. A pure ACK or a RST carrying snd_max there is out of the peer's window:
the peer drops it, ACK field and all; our answers to its keepalive probes would never
count, and it would end a live connection. Linux sends these segments at the window's
edge (tcp_acceptable_seq); so does utcp.

The case that first showed it, a FIN sent into a window that had shut, cannot happen
any more: the FIN waits for the window as data does (tests/test_fin_window.py). What it
asked of a server whose window is shut still holds, and is kept below.
"""

from __future__ import annotations

import random

from tests.script import Script
from tests.test_persist import CFG, OUR_ISN, PEER_ISN, shrunk_under_flight
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
    conn.close()  # the FIN waits for the window
    net.run(0.5, 0.01)
    assert conn.state is State.FIN_WAIT_1 and conn.snd_max == conn.snd_una
    return net, conn, peer


def shrunk_window() -> tuple[Script, Connection]:
    """2,000 bytes sent into the 2,000 the peer offered; it takes the first 1,000 and
    shrinks its window to nothing (RFC 9293 discourages it, and allows it): snd_max is
    1,000 past the right edge."""
    s, conn = shrunk_under_flight(CFG, sack=False)
    s.expect_nothing()
    assert conn.snd_max == conn.snd_una + 1000
    return s, conn


def test_pure_acks_past_a_shrunk_window_carry_its_edge() -> None:
    s, conn = shrunk_window()
    assert conn.sender.ack_seq() == OUR_ISN + 1001  # the edge, not snd_max
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1001, window=0, payload=b"hi")
    s.advance(0.5)
    s.expect(".", OUR_ISN + 1001, PEER_ISN + 3)


def test_a_reset_past_a_shrunk_window_is_at_its_edge() -> None:
    """abort() in that state: the RST must land, or the peer keeps a dead connection."""
    s, conn = shrunk_window()
    conn.abort()
    s.expect("R.", OUR_ISN + 1001)


def test_the_server_keeps_a_live_peer_whose_fin_its_window_cannot_take() -> None:
    net, conn, peer = shut_window_then_half_close()
    # The client's zero-window probes (whose ACK field the server takes, RFC 9293
    # §3.10.7.4) restart its keepalive too, until their backed-off interval (rto_max,
    # 60 s) grows past keepalive's 25 s + 6 x 5 s: run well beyond that
    keepalive_death = (peer.config.keepalive_interval or 0) + (
        peer.config.keepalive_probes * peer.config.keepalive_probe_interval)
    assert keepalive_death < conn.config.rto_max
    net.run(300.0, 1.0)
    assert peer.state is State.ESTABLISHED, peer.error
    assert peer.rcv.size == 1024  # what it holds is still there for its application
    assert conn.state is State.FIN_WAIT_1
    # once the application reads, its window update lets the FIN go at once
    assert peer.read(-1) == b"x" * 1024
    net.run(0.05, 0.01)
    assert peer.state is State.CLOSE_WAIT and conn.state is State.FIN_WAIT_2
