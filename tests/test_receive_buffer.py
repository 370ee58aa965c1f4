"""The receive buffer keeps the pieces that arrived: reads glue or split them exactly."""

from __future__ import annotations

import random

from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint

SERVER = ("127.0.0.1", 5000)
CLIENT = ("127.0.0.1", 6000)


def connected(mss: int) -> tuple[Connection, Connection, Endpoint, Endpoint]:
    cfg = Config(mss=mss, pmtu_probing=False, timestamps=False)  # payload = mss
    server = Endpoint(cfg, SERVER[1], listening=True, rng=random.Random(1))
    client = Endpoint(cfg, CLIENT[1], rng=random.Random(2))
    conn = client.connect(SERVER, 0.0)
    peer = None
    for _ in range(5):
        pump(client, server, server_is_dst=True)
        pump(server, client, server_is_dst=False)
        peer = peer or server.accept()
    assert peer is not None
    return conn, peer, client, server


def pump(src: Endpoint, dst: Endpoint, *, server_is_dst: bool) -> None:
    deadline = src.get_timer()
    if deadline is not None and deadline <= 0.0:
        src.handle_timer(0.0)
    for data, _ in src.datagrams_to_send(0.0):
        dst.receive_datagram(data, CLIENT if server_is_dst else SERVER, 0.0)


def test_large_pieces_come_one_at_a_time_and_small_ones_glued() -> None:
    conn, peer, client, server = connected(mss=30000)
    payload = random.Random(3).randbytes(60000)
    conn.send(payload)
    pump(client, server, server_is_dst=True)
    assert peer.readable == 60000
    first = peer.read_pieces(1 << 20)
    assert len(first) == 30000  # one segment, handed over as it came
    second = peer.read_pieces(1 << 20)
    assert first + second == payload and peer.readable == 0


def test_small_pieces_are_glued_up_to_the_limit() -> None:
    conn, peer, client, server = connected(mss=1000)
    payload = random.Random(4).randbytes(8000)
    conn.send(payload)
    for _ in range(4):
        pump(client, server, server_is_dst=True)
        pump(server, client, server_is_dst=False)
    assert peer.readable == 8000
    assert peer.read_pieces(2500) == payload[:2500]  # splits the third piece
    assert peer.read_pieces(1 << 20) == payload[2500:]


def test_partial_reads_keep_every_byte_in_order() -> None:
    conn, peer, client, server = connected(mss=30000)
    payload = random.Random(5).randbytes(60000)
    conn.send(payload)
    pump(client, server, server_is_dst=True)
    got = [peer.read(100), peer.read_pieces(50), peer.read(29900), peer.read(7)]
    got.append(peer.read())
    assert [len(g) for g in got] == [100, 50, 29900, 7, 60000 - 30057]
    assert b"".join(got) == payload and peer.readable == 0
    assert all(type(g) is bytes for g in got)
