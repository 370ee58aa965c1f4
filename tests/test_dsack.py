"""D-SACK (RFC 2883) and undoing a needless loss response (RFC 4015's, on DSACK as Linux
does): the receiver reports a segment it got twice; when every retransmission of a
loss episode comes back so, the sender returns to the window it had before."""

from __future__ import annotations

import random

from tests import peek
from tests.netsim import Address, LinkProfile, Network
from tests.test_scripted import OUR_ISN, PEER_ISN, data, server
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

SACK_PEER = wire.Options(mss=1000, wscale=0, sack_permitted=True)
MOD = 1 << 32


def _blocks(*ranges: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple((a % MOD, b % MOD) for a, b in ranges)


# --------------------------------------------------------------------------- receiver

def test_a_duplicate_below_rcv_nxt_is_reported_first_and_once__ESTABLISHED() -> None:
    s, conn = server(peer_opts=SACK_PEER)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))
    s.inject(".", PEER_ISN + 1001, OUR_ISN + 1, payload=data(1000, 1000))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2001)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))  # again
    seg = s.expect(".", OUR_ISN + 1, PEER_ISN + 2001)              # at once
    assert seg.options.sack == _blocks((PEER_ISN + 1, PEER_ISN + 1001))
    s.inject(".", PEER_ISN + 2001, OUR_ISN + 1, payload=data(1000, 2000))
    s.inject(".", PEER_ISN + 3001, OUR_ISN + 1, payload=data(1000, 3000))
    seg = s.expect(".", OUR_ISN + 1, PEER_ISN + 4001)
    assert seg.options.sack == ()                                  # reported once
    assert conn.read() == data(4000)


def test_a_duplicate_of_held_data_is_reported_before_its_block__ESTABLISHED() -> None:
    s, _ = server(peer_opts=SACK_PEER)
    s.inject(".", PEER_ISN + 1001, OUR_ISN + 1, payload=data(1000, 1000))  # past a hole
    seg = s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert seg.options.sack == _blocks((PEER_ISN + 1001, PEER_ISN + 2001))
    s.inject(".", PEER_ISN + 1001, OUR_ISN + 1, payload=data(1000, 1000))  # again
    seg = s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert seg.options.sack == _blocks((PEER_ISN + 1001, PEER_ISN + 2001),
                                       (PEER_ISN + 1001, PEER_ISN + 2001))


def test_no_d_sack_without_sack__ESTABLISHED() -> None:
    s, _ = server()                                                # the peer has no SACK
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))
    s.advance(1.0)
    assert s.sent and all(not item.seg.options.sack for item in s.sent)


# --------------------------------------------------------------------------- sender

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
CFG = Config(msl=1.0, rto_min=0.2, rto_initial=0.5, mss=1000, pmtu_probing=False)


def _pair(profile: LinkProfile | None = None) -> tuple[Network, Connection, Connection]:
    net = Network(3, profile or LinkProfile(delay=0.01))
    server_ep = Endpoint(CFG, SERVER[1], listening=True, rng=random.Random(1))
    client_ep = Endpoint(CFG, CLIENT[1], rng=random.Random(2))
    net.add(SERVER, server_ep)
    net.add(CLIENT, client_ep)
    conn = client_ep.connect(SERVER, net.now)
    net.run(until=5.0, stop=lambda: conn.state is State.ESTABLISHED
            and bool(server_ep.accept_queue))
    peer = server_ep.accept()
    assert peer is not None
    net.run(until=net.now + 0.011)
    return net, conn, peer


def _deliver(net: Network, conn: Connection, peer: Connection, size: int) -> bytes:
    payload = random.Random(size).randbytes(size)
    got = bytearray()
    conn.send(payload)

    def stop() -> bool:
        got.extend(peer.read())
        return len(got) == len(payload) and conn.snd_una == conn.snd_max

    net.run(until=net.now + 10, stop=stop)
    assert bytes(got) == payload
    return payload


def test_a_timeout_caused_by_lost_acks_is_undone() -> None:
    """Every ACK of a flight is lost (and a tail loss probe's): the data had arrived and
    the timeout was needless. Its retransmission reaches the receiver twice over,
    which says so in a D-SACK, and the sender takes back the cut to one segment."""
    net, conn, peer = _pair()
    _deliver(net, conn, peer, 100_000)            # a window grown by slow start
    before = conn.stats()
    cwnd = before.cwnd
    assert cwnd > 20 * CFG.mss and before.ssthresh is None
    blackout = net.now + 0.1
    net.filter = lambda d, src, dst, now: not (src == SERVER and now < blackout)
    _deliver(net, conn, peer, 20_000)
    stats = conn.stats()
    assert stats.timeouts == 1
    # nothing more
    assert stats.segments_retransmitted == 1 + peek.counter(conn, "tail_loss_probes")
    assert peek.counter(conn, "dsacks_received") >= 1
    assert peek.counter(conn, "spurious_recoveries") == 1
    assert stats.cwnd >= cwnd and stats.ssthresh is None  # as before the timeout


def test_a_fast_retransmit_caused_by_reordering_is_undone_and_the_window_widens() -> None:
    """A segment overtaken by five others is taken for lost (three SACKed after it and no
    reordering seen yet) and resent; the D-SACK for the resend says it was late, not
    lost: the window comes back, and the next such delay is waited for."""
    profile = LinkProfile(delay=0.01, bandwidth=1_000_000)  # 1 ms per 1000-byte segment
    net, conn, peer = _pair(profile)
    late = {20: 0.006, 60: 0.006}                # data segment -> extra delay (> 5 ms)
    sent = [0]

    def tap(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if src == CLIENT and wire.parse(data).payload:
            sent[0] += 1
            extra = late.get(sent[0])
            net.set_link(CLIENT, SERVER, profile if extra is None else LinkProfile(
                delay=0.01, bandwidth=1_000_000, reorder=1.0, reorder_delay=extra))
        return True

    net.filter = tap
    windows: list[tuple[int, int | None]] = []
    payload = bytes(100_000)
    conn.send(payload)
    got = bytearray()

    def stop() -> bool:
        got.extend(peer.read())
        stats = conn.stats()
        if stats.fast_retransmits and not windows:
            windows.append((stats.cwnd, stats.ssthresh))
        return len(got) == len(payload)

    net.run(until=net.now + 10, stop=stop)
    assert bytes(got) == payload
    assert net.stats.reordered == 2
    stats = conn.stats()
    assert stats.fast_retransmits == 1           # the first delay only
    assert stats.segments_retransmitted == 1
    assert peek.counter(conn, "spurious_recoveries") == 1
    assert peek.rack(conn).reordering_seen and peek.rack(conn).reo_wnd_mult == 2
    assert stats.ssthresh is None                # undone: as if no loss had been seen


def test_a_d_sack_for_a_needless_probe_does_not_widen_the_reordering_window() -> None:
    """The ACKs of a flight are lost until its tail loss probe has gone: the probe resent
    the last segment, which had arrived, and the receiver says so. That is no sign of
    reordering (Linux's FLAG_DSACK_TLP): RACK's window stays as it was."""
    net, conn, peer = _pair()
    _deliver(net, conn, peer, 20_000)
    srtt = conn.stats().srtt
    assert srtt is not None
    blackout = net.now + 2.5 * srtt             # past the probe (two round trips)
    net.filter = lambda d, src, dst, now: not (src == SERVER and now < blackout)
    _deliver(net, conn, peer, 20_000)
    assert peek.counter(conn, "tail_loss_probes") == 1 and conn.stats().timeouts == 0
    assert peek.counter(conn, "dsacks_received") == 1 and peek.rack(conn).reo_wnd_mult == 1
