"""RFC 7323 timestamps (on by default): negotiation, echo, PAWS, and RTT samples that
end a timeout's backoff, which Karn's rule alone cannot."""

from __future__ import annotations

import random

import pytest

from tests import peek
from tests.netsim import Address, LinkProfile, Network
from tests.test_transfer import CFG as TRANSFER_CFG
from tests.test_transfer import CLIENT as CLIENT_OF_TRANSFER
from tests.test_transfer import LOSSY, Closing, MiB, check, transfer
from tests.test_transfer import SERVER as SERVER_OF_TRANSFER
from utcp import crypto, wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
TS = Config(msl=1.0, rto_min=0.2, rto_initial=0.5, mss=1000, pmtu_probing=False,
            timestamps=True)


def _pair(client_cfg: Config, server_cfg: Config, profile: LinkProfile | None = None,
          seed: int = 1) -> tuple[Network, Endpoint, Connection, Connection]:
    net = Network(seed, profile or LinkProfile(delay=0.01))
    server = Endpoint(server_cfg, SERVER[1], listening=True, rng=random.Random(1))
    client = Endpoint(client_cfg, CLIENT[1], rng=random.Random(2))
    net.add(SERVER, server)
    net.add(CLIENT, client)
    segments: list[tuple[Address, wire.Segment]] = []
    net.filter = lambda d, s, t, now: segments.append((s, wire.parse(d))) or True
    conn = client.connect(SERVER, net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED
            and bool(server.accept_queue))
    peer = server.accept()
    assert peer is not None
    _pair.segments = segments  # type: ignore[attr-defined]
    return net, server, conn, peer


def _stamps(segments: list[tuple[Address, wire.Segment]], src: Address) -> bool:
    """Whether `src` put timestamps on its segments after its SYN: all or none must
    (RFC 7323 §3.2: on every segment but a RST, which may go without)."""
    after_syn = [seg for s, seg in segments
                 if s == src and not seg.flags & (wire.SYN | wire.RST)]
    assert after_syn, segments
    stamped = {seg.options.timestamps is not None for seg in after_syn}
    assert len(stamped) == 1, after_syn
    return stamped.pop()


def _exchange(net: Network, conn: Connection, peer: Connection) -> None:
    """A few bytes each way, so that both ends send segments after the handshake."""
    conn.send(b"ping")
    peer.send(b"pong")
    net.run(until=net.now + 0.1)
    assert peer.read() == b"ping" and conn.read() == b"pong"


def test_both_must_offer_them() -> None:
    net, _, conn, peer = _pair(TS, TS)
    _exchange(net, conn, peer)
    assert _stamps(_pair.segments, CLIENT) and _stamps(_pair.segments, SERVER)  # type: ignore[attr-defined]
    syn = next(seg for src, seg in _pair.segments if seg.flags == wire.SYN)  # type: ignore[attr-defined]
    synack = next(seg for src, seg in _pair.segments  # type: ignore[attr-defined]
                  if seg.flags == wire.SYN | wire.ACK)
    assert syn.options.timestamps is not None and syn.options.timestamps[1] == 0
    assert synack.options.timestamps is not None
    assert synack.options.timestamps[1] == syn.options.timestamps[0]  # echoed
    net, _, conn, peer = _pair(TS, TS.replace(timestamps=False))
    synack = next(seg for src, seg in _pair.segments  # type: ignore[attr-defined]
                  if seg.flags == wire.SYN | wire.ACK)
    assert synack.options.timestamps is None
    _exchange(net, conn, peer)
    assert not _stamps(_pair.segments, CLIENT)  # type: ignore[attr-defined]
    assert not _stamps(_pair.segments, SERVER)  # type: ignore[attr-defined]


def test_on_by_default() -> None:
    default = Config(msl=1.0, mss=1000, pmtu_probing=False)
    net, _, conn, peer = _pair(default, default)
    assert default.timestamps
    _exchange(net, conn, peer)
    assert _stamps(_pair.segments, CLIENT) and _stamps(_pair.segments, SERVER)  # type: ignore[attr-defined]
    syn = next(seg for src, seg in _pair.segments if seg.flags == wire.SYN)  # type: ignore[attr-defined]
    assert syn.options.timestamps is not None


def test_every_segment_echoes_the_latest_and_payload_makes_room() -> None:
    net, _, conn, peer = _pair(TS, TS)
    _pair.segments.clear()  # type: ignore[attr-defined]
    conn.send(bytes(5000))
    net.run(until=net.now + 0.2)
    data = [seg for src, seg in _pair.segments if src == CLIENT and seg.payload]  # type: ignore[attr-defined]
    acks = [seg for src, seg in _pair.segments if src == SERVER]  # type: ignore[attr-defined]
    assert data and acks
    assert all(seg.options.timestamps is not None for seg in data + acks)
    assert max(len(seg.payload) for seg in data) == 1000 - 12   # RFC 9293 §3.7.1
    sent_tsvals = {seg.options.timestamps[0] for seg in data}  # type: ignore[index]
    assert all(seg.options.timestamps[1] in sent_tsvals for seg in acks)  # type: ignore[index]
    assert peer.read() == bytes(5000)


def test_paws_drops_an_old_duplicate_and_acks_it() -> None:
    net, server, conn, peer = _pair(TS, TS)
    conn.send(b"a" * 500)
    net.run(until=net.now + 0.05)
    conn.send(b"b" * 500)
    net.run(until=net.now + 0.05)
    assert peer.read() == b"a" * 500 + b"b" * 500
    old = next(seg for src, seg in _pair.segments  # type: ignore[attr-defined]
               if src == CLIENT and bytes(seg.payload) == b"a" * 500)
    # the same bytes again, at the sequence number now next expected: acceptable by
    # sequence alone, but its timestamp is older than TS.Recent
    forged = wire.build_fast(old.src_port, old.dst_port, (peer.rcv_nxt) & 0xFFFFFFFF,
                             old.ack, old.flags, old.window,
                             bytes((1, 1, 8, 10)) + old.options.timestamps[0].to_bytes(4, "big")  # type: ignore[index]
                             + old.options.timestamps[1].to_bytes(4, "big"),  # type: ignore[index]
                             b"x" * 100)
    before = peek.counter(peer, "paws_drops")
    server.receive_datagram(forged, CLIENT, net.now)
    assert peek.counter(peer, "paws_drops") == before + 1
    assert peer.readable == 0                        # nothing delivered
    out = server.datagrams_to_send(net.now)
    assert out and wire.parse(out[0][0]).flags & wire.ACK  # answered with an ACK


def test_an_echoed_timestamp_ends_the_backoff_after_a_timeout() -> None:
    no_sack = TS.replace(sack=False)  # no tail loss probe: the timer alone, twice
    net, _, conn, _ = _pair(no_sack, no_sack)
    dropped = [0]

    def lose_first_two(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload and dropped[0] < 2:
            dropped[0] += 1
            return False
        return True

    net.filter = lose_first_two
    conn.send(bytes(800))                             # one segment: lost, then its
    net.run(until=net.now + 5, stop=lambda: conn.stats().timeouts == 2)  # its resend too
    assert peek.rto_backoff(conn) == 2
    net.run(until=net.now + 5, stop=lambda: conn.snd_una == conn.snd_max)
    # Karn's rule gives no sample from a retransmitted segment; the echo does
    assert peek.rto_backoff(conn) == 0 and conn.stats().rto < 0.5


@pytest.mark.parametrize("seed", range(3))
def test_transfers_with_timestamps_under_loss(seed: int) -> None:
    config = TRANSFER_CFG.replace(timestamps=True)
    run = transfer(seed, LOSSY, c2s=MiB, s2c=MiB, closing=list(Closing)[seed], config=config,
                   trace=True)
    check(run, list(Closing)[seed])
    assert run.net.trace is not None
    segments = [(rec.src, wire.parse(rec.data)) for rec in run.net.trace
                if rec.fate != "delivered"]
    assert _stamps(segments, CLIENT_OF_TRANSFER) and _stamps(segments, SERVER_OF_TRANSFER)


def test_secure_mode_with_timestamps_survives_a_lost_syn() -> None:
    """A retransmitted SYN repeats the first one's timestamp: the Noise handshake
    authenticated the header it was first sent with."""
    private, public = crypto.generate_keypair()
    server_cfg = TS.replace(secret_key=private)
    client_cfg = TS.replace(server_key=public)
    net = Network(3, LinkProfile(delay=0.01))
    server = Endpoint(server_cfg, SERVER[1], listening=True, rng=random.Random(1))
    client = Endpoint(client_cfg, CLIENT[1], rng=random.Random(2))
    net.add(SERVER, server)
    net.add(CLIENT, client)
    net.drop_next(lambda d, s, t, now: s == CLIENT)  # the first SYN
    segments: list[tuple[Address, wire.Segment]] = []

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        segments.append((src, wire.parse(data)))
        return True

    net.filter = tap
    conn = client.connect(SERVER, net.now)
    net.run(until=10.0, stop=lambda: conn.state is State.ESTABLISHED)
    assert conn.state is State.ESTABLISHED
    conn.send(b"ping")
    net.run(until=net.now + 0.1)
    assert _stamps(segments, CLIENT) and _stamps(segments, SERVER)
    assert conn.stats().segments_retransmitted == 1
