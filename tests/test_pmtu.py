"""Path MTU probing (RFC 8899 as TCP uses it, utcp.pmtu) over the fake-clock simulator.

The link's `mtu` drops every datagram larger than it, like a router with DF set; the
endpoints' `route_mss` stands for what the kernel says the local route carries.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest

from tests.netsim import Address, LinkProfile, Network
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint, loopback
from utcp.pmtu import PmtuSearch
from utcp.state import State

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2, mss=1200)
HEADER = 20  # bytes of TCP header in a data segment (no options)
MASK = (1 << 32) - 1


def _transfer(mtu: int | None, route: int, size: int, *, config: Config = CFG,
              shrink_at: int | None = None, shrink_to: int | None = None,
              trace: bool = False, watch: Callable[[Connection], None] | None = None,
              addresses: tuple[Address, Address] = (SERVER, CLIENT),
              ) -> tuple[Connection, Connection, Network, bytes]:
    net = Network(7, LinkProfile(delay=0.005, mtu=mtu), trace=trace)
    server_addr, client_addr = addresses
    server = Endpoint(config, server_addr[1], listening=True, rng=random.Random(1))
    client = Endpoint(config, client_addr[1], rng=random.Random(2))
    server.route_mss = client.route_mss = lambda peer: route
    net.add(server_addr, server)
    net.add(client_addr, client)
    conn = client.connect(server_addr, net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED)
    payload = random.Random(3).randbytes(size)
    conn.send(payload)
    conn.close()
    received = bytearray()
    peer: list[Connection] = []
    shrunk = [False]

    def stop() -> bool:
        if watch is not None:
            watch(conn)
        if not peer and (accepted := server.accept()) is not None:
            peer.append(accepted)
        if peer:
            received.extend(peer[0].read())
            if peer[0].eof_received and peer[0].state is State.CLOSE_WAIT:
                peer[0].close()
        if shrink_at is not None and not shrunk[0] and len(received) >= shrink_at:
            shrunk[0] = True
            net.set_link(CLIENT, SERVER, LinkProfile(delay=0.005, mtu=shrink_to))
        return conn.state is State.CLOSED and bool(peer) and peer[0].state is State.CLOSED

    net.run(until=600.0, stop=stop)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    return conn, peer[0], net, bytes(received)


def test_probes_up_to_the_route_ceiling_when_the_path_carries_it() -> None:
    conn, _, _, _ = _transfer(mtu=None, route=60000, size=4 << 20)
    assert conn.stats().mss == 60000          # one probe, straight to the ceiling
    assert conn.pmtu is not None and conn.pmtu.probes_sent == 1
    assert conn.stats().segments_retransmitted == 0


def _connect_with_routes(server_addr: Address, client_addr: Address
                         ) -> tuple[Network, Endpoint, Connection]:
    """An established connection whose server's route says 9000 and client's 60000."""
    net = Network(1, LinkProfile(delay=0.005))
    server = Endpoint(CFG, server_addr[1], listening=True, rng=random.Random(1))
    client = Endpoint(CFG, client_addr[1], rng=random.Random(2))
    server.route_mss = lambda peer: 9000
    client.route_mss = lambda peer: 60000
    net.add(server_addr, server)
    net.add(client_addr, client)
    conn = client.connect(server_addr, net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED)
    return net, server, conn


def test_the_peer_mss_option_is_a_ceiling_too() -> None:
    # the client's SYN advertises 60000, the server's SYN+ACK 9000, so neither sends
    # above 9000
    _, _, conn = _connect_with_routes(SERVER, CLIENT)
    assert conn.pmtu is not None and conn.pmtu.ceiling == 9000


@pytest.mark.parametrize("timestamps", [False, True])
def test_search_settles_below_a_smaller_path_mtu_without_calling_it_congestion(
        timestamps: bool) -> None:
    path = 4000  # datagrams above this vanish, as behind a router with a small MTU
    conn, _, net, _ = _transfer(mtu=path, route=9000, size=32 << 20,  # jumbo route
                                config=CFG.replace(timestamps=timestamps))
    mss = conn.stats().mss
    assert CFG.mss < mss <= path - HEADER
    assert mss >= path - HEADER - 2 * 64      # the binary search got close
    assert net.stats.dropped_mtu >= 2         # probes above the path MTU were lost...
    assert conn.stats().ssthresh is None      # ...and no loss counted as congestion
    assert conn.pmtu is not None and not conn.pmtu.searching


@pytest.mark.parametrize("timestamps", [False, True])
def test_a_lost_probe_is_resent_once(timestamps: bool) -> None:
    """The repair of a lost probe resends exactly its bytes and leaves the window alone.
    The partial ACKs that follow (one per repaired piece) must not resend the next piece
    again as NewReno would: the duplicates reach a receiver that has them, each is
    answered with a duplicate ACK, and three in a row started a fast retransmit that cut
    the window (with timestamps on, whose 12 bytes happened to line them up)."""
    path = 4000
    # each repair (by where it starts: the lost probe's first byte, the first one not
    # acknowledged) -> (snd_una, cwnd) seen from its fast retransmit on
    repairs: dict[int, list[tuple[int, int]]] = {}
    started = [0]

    def watch(conn: Connection) -> None:
        stats = conn.stats()
        if stats.fast_retransmits > started[0]:
            started[0] = stats.fast_retransmits
            repairs[conn.snd_una & MASK] = []
        if repairs:
            repair = repairs[next(reversed(repairs))]
            repair.append((conn.snd_una & MASK, stats.cwnd))

    conn, _, net, _ = _transfer(mtu=path, route=9000, size=4 << 20, trace=True,
                                config=CFG.replace(timestamps=timestamps), watch=watch)
    assert net.trace is not None
    lost_probes = [wire.parse(r.data) for r in net.trace if r.fate == "dropped_mtu"]
    assert lost_probes and all(seg.payload for seg in lost_probes)
    stats = conn.stats()
    assert stats.bytes_retransmitted == sum(len(seg.payload) for seg in lost_probes)
    assert stats.ssthresh is None and stats.fast_retransmits == len(lost_probes)
    # each repair was of a lost probe; until all of its bytes were acknowledged the
    # window did not change (NewReno's inflation by the duplicate ACKs of a repair was
    # never deflated: it grew the window for good)
    assert sorted(repairs) == sorted(seg.seq for seg in lost_probes), repairs
    for seg in lost_probes:
        windows = {cwnd for una, cwnd in repairs[seg.seq]
                   if (una - seg.seq) & MASK < len(seg.payload)}
        assert len(windows) == 1, (seg, repairs[seg.seq])


def test_black_hole_falls_back_to_the_base_size() -> None:
    """The path shrinks mid-transfer (a route change): big segments now vanish; after two
    timeouts in a row the connection returns to the base size and finishes."""
    conn, _, net, _ = _transfer(mtu=None, route=20000, size=8 << 20, shrink_at=1 << 20,
                                shrink_to=1500)
    assert conn.stats().mss <= 1500 - HEADER
    assert net.stats.dropped_mtu > 0


def test_probing_off_pins_the_mss() -> None:
    conn, _, _, _ = _transfer(mtu=None, route=60000, size=1 << 20,
                              config=CFG.replace(pmtu_probing=False))
    assert conn.stats().mss == CFG.mss and conn.pmtu is None


def test_search_unit_steps() -> None:
    search = PmtuSearch(1200, 9000)
    assert search.next_size() == 9000
    search.sent(100, 9000)
    assert search.next_size() is None                       # one probe at a time
    assert search.retransmitting(50, 200)                   # covers the probe's start
    assert search.next_size() == 9000                       # tried twice at a size...
    search.sent(100, 9000)
    search.retransmitting(100, 1200)
    assert search.hi == 8999 and search.next_size() == 5100  # ...then the midpoint
    search.sent(500, 5100)
    assert search.acked(5000) is None and search.acked(5600) == 5100
    assert search.current == 5100


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"])
def test_a_loopback_path_starts_at_the_route_size_without_probing(host: str) -> None:
    """On loopback the route is the whole path: both ends start at its size, as Linux's
    TCP does there, instead of sending the first megabyte in small segments while a
    probe climbs (the peer's MSS option still caps it: 9000 here, the server's route)."""
    net, server, conn = _connect_with_routes((host, 1000), (host, 2000))
    sent_before = conn.stats().segments_sent
    conn.send(bytes(20000))
    accepted: list[Connection] = []

    def has_accepted() -> bool:
        if (found := server.accept()) is not None:
            accepted.append(found)
        return bool(accepted)

    net.run(until=10.0, stop=has_accepted)
    (peer,) = accepted
    received = bytearray()

    def all_read() -> bool:
        received.extend(peer.read())
        return len(received) == 20000

    net.run(until=10.0, stop=all_read)
    for end in (conn, peer):  # started at the ceiling, taken as confirmed: no probe
        assert end.pmtu is not None and end.pmtu.probes_sent == 0
        assert end.pmtu.current == 9000 and not end.pmtu.searching
        assert end.stats().mss == 9000
    # 20,000 bytes in three segments (9000, 9000, 2000), none small before them
    assert conn.stats().segments_sent - sent_before == 3


def test_a_loopback_path_that_carries_less_falls_back_and_finds_its_size() -> None:
    """A forwarder on 127.0.0.1 (a tunnel's, a container's port proxy) may carry less
    than the loopback route says: the full-size segments vanish, two timeouts in a row
    bring the base size back, and the search finds what the forwarder carries. Without
    the fallback every segment was resent at 64 KiB until the connection gave up."""
    path = 1500  # datagrams above this vanish
    sizes: list[int] = []
    conn, _, net, _ = _transfer(mtu=path, route=65447, size=1 << 20,
                                addresses=(("127.0.0.1", 1000), ("127.0.0.1", 2000)),
                                watch=lambda c: sizes.append(c.snd_mss))
    assert sizes[0] == 65447  # started at the route's size
    assert CFG.mss <= conn.stats().mss <= path - HEADER - 12  # (timestamps' 12 bytes)
    assert conn.stats().timeouts >= 2
    assert net.now < 20.0  # two timeouts, the search, the close: seconds, not a give-up


def test_only_a_loopback_peer_starts_at_the_ceiling() -> None:
    sizes: list[int] = []
    conn, _, _, _ = _transfer(mtu=None, route=60000, size=1 << 20,
                              watch=lambda c: sizes.append(c.snd_mss))
    # 10.0.0.x: started at Config.mss and probed up
    assert sizes[0] == CFG.mss and conn.pmtu is not None and conn.pmtu.probes_sent == 1
    for host in ("10.0.0.1", "::2", "128.0.0.1", "::ffff:10.0.0.1", "fe80::1"):
        assert not loopback(host), host
