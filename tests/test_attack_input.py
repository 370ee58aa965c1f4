"""Blind attacks on the segment input path (issue 12, items 1 and 3), plaintext mode.

An off-path attacker knows both addresses and ports, nothing else: not the sequence
numbers, not the timestamps. Each test mounts the attack on the deterministic simulator
(`tests/netsim.py`) or with the hand-played peer of `tests/script.py`, and checks what
the RFCs say must happen:

- PAWS poisoning (RFC 7323 §5.3): a forged segment with a timestamp option must not
  move TS.Recent unless it is acceptable (R3 comes after the window check, R2; as Linux,
  after the ACK check too). Before the fix, 8 blind datagrams (4 TSvals a quarter of the
  space apart, each with 2 sequence numbers half the space apart) always found one that
  was taken, and every genuine segment after it failed PAWS until TimeoutError.
- Blind FIN/data (RFC 5961 §5): FIN and data must carry an acceptable ACK, and a FIN
  that gets in anyway must not wedge the close: real data past it overrides it, a later
  FIN replaces it, and data that crosses a FIN already taken resets the connection
  rather than leaving both ends waiting.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests import peek
from tests.netsim import Address, LinkProfile, Network
from tests.script import PEER, Script
from tests.test_attacks import CLIENT, SERVER, Transfer, make_transfer
from utcp import seq as sq
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

S = State
KiB = 1 << 10
TS_CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2, timestamps=True)


def _target(t: Transfer, direction: str) -> tuple[Connection, Endpoint, Address]:
    """The connection attacked, its endpoint, and the address its peer sends from."""
    assert t.client is not None and t.server is not None
    if direction == "to_server":
        return t.server, t.server_ep, CLIENT
    return t.client, t.client_ep, SERVER


def _echoes(net: Network, src: Address) -> list[int | None]:
    """The TSecr of each segment `src` sent but a RST (None without the option): its
    TS.Recent then (RFC 7323 §4.3), as an observer of the path sees it."""
    assert net.trace is not None
    segs = (wire.parse(r.data) for r in net.trace
            if r.src == src and r.fate not in ("delivered", "unroutable"))
    return [seg.options.timestamps[1] if seg.options.timestamps is not None else None
            for seg in segs if not seg.flags & wire.RST]


def _peer_of(src: Address) -> Address:
    """The address the attacked connection sends from, given the one its peer uses."""
    return SERVER if src == CLIENT else CLIENT


def paws_poison(rng: random.Random, conn: Connection) -> tuple[list[bytes], tuple[int, int]]:
    """The blind attack, 4 datagrams: 2 TSvals x 2 sequence numbers.

    Whatever TS.Recent is, one of 2 TSvals 2^31 apart lies ahead of it (and the other,
    sent second, then lies behind the first, so it cannot undo it); whatever rcv_nxt is,
    one of 2 sequence numbers 2^31 apart lies in the "old" half below it. The ACK value
    and TSecr are random guesses: the attacker cannot know them either.
    """
    first = rng.getrandbits(32)
    tsvals = (first, (first + (1 << 31)) & sq.MASK)
    base = rng.getrandbits(32)
    out = []
    for tsval in tsvals:
        for seq in (base, (base + (1 << 31)) & sq.MASK):
            options = wire.Options(timestamps=(tsval, rng.getrandbits(32)))
            out.append(wire.build(wire.Segment(
                conn.remote_port, conn.local_port, seq, rng.getrandbits(32), wire.ACK,
                rng.randrange(1 << 16), b"", options)))
    return out, tsvals


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
def test_blind_paws_poisoning_does_not_stall_a_transfer(direction: str) -> None:
    t = make_transfer(7, LinkProfile(delay=0.005), 512 * KiB, 512 * KiB,
                      server_cfg=TS_CFG, client_cfg=TS_CFG, trace=True)
    rng = random.Random(99)
    forged: list[int] = []
    echoed_before = [0]
    t.connect()

    def stop() -> bool:
        client, server = t.client, t.server
        assert client is not None
        if not forged and server is not None and min(
                server.stats().bytes_received, client.stats().bytes_received) > 64 * KiB:
            conn, ep, src = _target(t, direction)
            echoes = _echoes(t.net, _peer_of(src))
            ts_recent = echoes[-1]              # as it last echoed it
            assert ts_recent is not None        # timestamps are in use
            datagrams, tsvals = paws_poison(rng, conn)
            forged.extend(tsvals)
            # the attack is a real one: one TSval is far enough ahead of TS.Recent that
            # the peer's clock would not reach it within the test (taken, it would stall)
            assert any(sq.diff(v, ts_recent) > 10_000_000 for v in tsvals)
            echoed_before[0] = len(echoes)
            for datagram in datagrams:
                ep.receive_datagram(datagram, src, t.net.now)
        return t.poll()

    t.net.run(until=120.0, stop=stop)
    assert forged, "the transfer ended before the attack"
    t.check()  # byte-exact both ways, both CLOSED without error
    # TS.Recent never took a forged TSval: no segment sent after the attack echoes one
    target = _peer_of(CLIENT if direction == "to_server" else SERVER)
    echoed_after = _echoes(t.net, target)[echoed_before[0]:]
    assert echoed_after and not set(echoed_after) & set(forged)


def _established_ts() -> tuple[Script, Connection]:
    s = Script(TS_CFG, listening=True, isns=(1000,))
    s.inject("S", 5000, options=wire.Options(mss=1400, wscale=7, timestamps=(100, 0)))
    synack = s.expect("S.", seq=1000, ack=5001)
    assert synack.options.timestamps is not None
    s.inject(".", 5001, 1001, window=1000,
             options=wire.Options(timestamps=(101, synack.options.timestamps[0])))
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED
    return s, conn


def test_ts_recent_moves_only_for_an_acceptable_segment() -> None:
    """RFC 7323 §5.3: R1 (PAWS), R2 (window), then R3 (TS.Recent); RFC 5961 §5 first."""
    s, conn = _established_ts()
    ahead = wire.Options(timestamps=(101 + (1 << 30), 0))
    # old sequence number (R2 fails): dropped with an ACK, TS.Recent unchanged
    s.inject(".", 5001 - 1000, 1001, window=1000, options=ahead)
    ack = s.expect(".", seq=1001, ack=5001)  # it echoes TS.Recent, 101: unchanged
    assert ack.options.timestamps is not None and ack.options.timestamps[1] == 101
    # in the window, but an ACK of data never sent (RFC 5961 §5): challenge ACK, and
    # still TS.Recent unchanged
    s.inject("P.", 5001, 1001 + 100_000, window=1000, payload=b"evil", options=ahead)
    ack = s.expect(".", seq=1001, ack=5001)
    assert ack.options.timestamps is not None and ack.options.timestamps[1] == 101
    assert conn.readable == 0
    # the genuine next segment passes PAWS and is taken: its TSval is echoed from now on
    s.inject("P.", 5001, 1001, window=1000, payload=b"good",
             options=wire.Options(timestamps=(102, 0)))
    assert conn.read() == b"good" and peek.counter(conn, "paws_drops") == 0
    s.advance(1.0)                               # the delayed ACK
    ack = s.expect(".", seq=1001, ack=5005)
    assert ack.options.timestamps is not None and ack.options.timestamps[1] == 102


# --------------------------------------------------------------------------- blind FIN / data

PLAIN_CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2, timestamps=False)


def _established() -> tuple[Script, Connection]:
    """Server ISS 1000, peer ISS 5000; the peer offers 1000 << 7 = 128,000 bytes."""
    s = Script(PLAIN_CFG, listening=True, isns=(1000,))
    s.inject("S", 5000, options=wire.Options(mss=1400, wscale=7))
    s.expect("S.", seq=1000, ack=5001)
    s.inject(".", 5001, 1001, window=1000)
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED and conn.max_snd_wnd == 128_000
    return s, conn


@pytest.mark.parametrize("flags", ["F.", "FP.", "P."])
@pytest.mark.parametrize("ack", ["unsent", "too_old", "before_iss"])
def test_fin_or_data_with_an_unacceptable_ack_is_challenged_and_counted(
        flags: str, ack: str) -> None:
    """RFC 5961 §5.2: SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT, else challenge ACK and
    drop, for FIN and data as for a bare ACK. Nothing was sent but the SYN here, so no
    ACK below ISS + 1 can be genuine, however large the peer's window (MAX.SND.WND)."""
    s, conn = _established()
    value = {"unsent": 1001 + 1, "too_old": 1001 - 128_000 - 1, "before_iss": 1001 - 1}[ack]
    payload = b"forged" if "P" in flags else b""
    for seq in (5001, 5001 + 700):  # at rcv_nxt, and out of order in the window
        s.inject(flags, seq, value, payload=payload)
        s.expect(".", seq=1001, ack=5001)  # the challenge ACK
    s.expect_nothing()
    assert conn.state == S.ESTABLISHED and conn.readable == 0 and not conn.eof_received
    assert conn.stats().challenge_acks == 2 and conn.stats().dropped_segments == 2
    # the genuine peer is unaffected, and nothing of the second forgery was held out of
    # order: the genuine bytes up to where it was are all there is, with no end there
    s.inject("P.", 5001, 1001, payload=b"a" * 700)
    assert conn.read() == b"a" * 700 and not conn.eof_received
    s.inject("FP.", 5001 + 700, 1001, payload=b"hello")
    assert conn.read() == b"hello" and conn.eof_received and conn.state == S.CLOSE_WAIT


def _stream_ends_at(conn: Connection, seq: int, now: float,
                    options: wire.Options | None = None) -> bool:
    """Whether a FIN is held at `seq`: the genuine bytes from rcv_nxt up to it, tried on
    a copy of `conn`, end the stream there."""
    probe = peek.detached_copy(conn)
    probe.receive(wire.Segment(
        conn.remote_port, conn.local_port, sq.wrap(conn.rcv_nxt), sq.wrap(conn.snd_una),
        wire.ACK, conn.snd_wnd >> conn.snd_wscale, bytes(seq - conn.rcv_nxt),
        options or wire.Options()), now)
    return probe.eof_received and probe.rcv_nxt == seq + 1


def test_forged_fin_out_of_order_is_overridden_by_the_data_past_it() -> None:
    s, conn = _established()
    s.inject("F.", 5001 + 700, 1001)                 # forged: accepted, held past a hole
    assert _stream_ends_at(conn, 5001 + 700, s.now)
    s.inject("P.", 5001 + 1000, 1001, payload=b"b" * 1000)  # genuine, out of order too
    assert not _stream_ends_at(conn, 5001 + 700, s.now)
    assert peek.counter(conn, "fins_ignored") == 1
    s.inject("P.", 5001, 1001, payload=b"a" * 1000)  # fills the hole, past the forged FIN
    s.inject("FP.", 5001 + 2000, 1001, payload=b"c" * 10)  # the peer's own FIN is taken
    assert conn.read() == b"a" * 1000 + b"b" * 1000 + b"c" * 10
    assert conn.eof_received and conn.state == S.CLOSE_WAIT


def test_forged_fin_after_data_held_is_ignored() -> None:
    s, conn = _established()
    s.inject("P.", 5001 + 1000, 1001, payload=b"b" * 1000)  # genuine, out of order
    s.inject("F.", 5001 + 700, 1001)                 # forged: before data held, ignored
    assert not _stream_ends_at(conn, 5001 + 700, s.now)
    assert peek.counter(conn, "fins_ignored") == 1
    s.inject("FP.", 5001, 1001, payload=b"a" * 1000)  # a FIN at 6001 would cut the data
    assert conn.readable == 2000 and not conn.eof_received
    assert peek.counter(conn, "fins_ignored") == 2
    s.inject("FP.", 5001 + 2000, 1001, payload=b"c" * 10)
    assert conn.read() == b"a" * 1000 + b"b" * 1000 + b"c" * 10
    assert conn.eof_received and conn.state == S.CLOSE_WAIT


def test_a_later_fin_replaces_a_forged_one_beyond_it() -> None:
    """A forged FIN past the peer's: no data ever comes past it, but the peer's own FIN
    (retransmitted until acknowledged) replaces it, so the close still happens."""
    s, conn = _established()
    s.inject("F.", 5001 + 5000, 1001)                # forged, beyond the end of the stream
    s.inject("FP.", 5001, 1001, payload=b"a" * 100)  # the peer's data and FIN
    assert conn.read() == b"a" * 100 and conn.eof_received and conn.state == S.CLOSE_WAIT
    assert peek.counter(conn, "fins_ignored") == 1


def test_data_across_a_fin_taken_resets_instead_of_wedging() -> None:
    """A forged FIN at exactly rcv_nxt (2^32 guesses times the ACK's) is taken; the peer's
    data across it then proves it forged: both ends are reset at once, instead of the peer
    retransmitting bytes nobody takes until it times out."""
    s, conn = _established()
    s.inject("F.", 5001, 1001)                       # forged
    assert conn.eof_received and conn.state == S.CLOSE_WAIT
    s.expect(".", seq=1001, ack=5002)
    s.inject("P.", 5001 + 1400, 1001, payload=b"b" * 1400)  # wholly after it: ignored
    assert conn.state == S.CLOSE_WAIT
    s.expect_nothing()  # RFC 9293: in CLOSE_WAIT, text is ignored
    s.inject("P.", 5001, 1001, payload=b"a" * 1400)  # across it: reset
    s.expect("R.", seq=1001)
    assert conn.state == S.CLOSED and isinstance(conn.error, ConnectionResetError)


def test_data_right_after_a_fin_taken_resets() -> None:
    """Our ACK of the forged FIN told the peer its byte there arrived, so it resends from
    the next one, at rcv_nxt: that too proves the FIN forged (exactly rcv_nxt, as hard to
    guess as a RST). Before, those bytes were ignored until the peer gave up."""
    s, conn = _established()
    s.inject("F.", 5001, 1001)                       # forged
    s.expect(".", seq=1001, ack=5002)
    s.inject("P.", 5002, 1001, payload=b"a" * 1399)
    s.expect("R.", seq=1001)
    assert conn.state == S.CLOSED and isinstance(conn.error, ConnectionResetError)


def _time_wait() -> tuple[Script, Connection]:
    """The server closed first and took the peer's FIN (at 5001): TIME_WAIT, 2MSL = 2 s."""
    s, conn = _established()
    conn.close()
    s.app()
    s.expect("F.", seq=1001, ack=5001)
    s.inject("F.", 5001, 1002)
    s.expect(".", seq=1002, ack=5002)
    assert conn.state == S.TIME_WAIT and conn.get_timer() == s.now + 2.0  # 2MSL
    return s, conn


def test_blind_fins_do_not_hold_time_wait() -> None:
    """RFC 9293: the peer's FIN again restarts 2MSL. A FIN at any other place, or with an
    unacceptable ACK, is not the peer's: before, each one restarted it, so an attacker
    knowing only the addresses kept the connection in TIME_WAIT for as long as it liked."""
    s, conn = _time_wait()
    rng = random.Random(5)
    for _ in range(40):
        s.advance(0.1)
        seq = rng.getrandbits(32)
        if (seq - 5001) & sq.MASK == 0:
            continue
        s.inject("F.", seq, rng.choice([1002, rng.getrandbits(32)]))
        s.inject("F.", 5001, 1002 + 1 + rng.getrandbits(20))  # right place, ACK unsent
    assert conn.state == S.CLOSED  # 2 s after the last genuine segment, not later
    assert s.states(conn)[-2:] == [S.TIME_WAIT, S.CLOSED]


def test_the_peers_fin_again_restarts_time_wait() -> None:
    s, conn = _time_wait()
    s.advance(1.5)
    s.inject("F.", 5001, 1002)                     # our ACK of its FIN was lost
    s.expect(".", seq=1002, ack=5002)
    assert conn.state == S.TIME_WAIT and conn.get_timer() == s.now + 2.0
    s.advance(1.9)
    assert conn.state == S.TIME_WAIT
    s.advance(0.2)
    assert conn.state == S.CLOSED


def _lucky_fin(conn: Connection, offset: int, options: wire.Options) -> bytes:
    """The forged FIN of an attacker whose two guesses came right: in the window at
    `offset` past rcv_nxt, and an acceptable ACK (SND.UNA itself)."""
    return wire.build(wire.Segment(
        conn.remote_port, conn.local_port, sq.wrap(conn.rcv_nxt + offset),
        sq.wrap(conn.snd_una), wire.ACK | wire.FIN, 0xFFFF, b"", options))


def _passing_ts(net: Network, src: Address) -> wire.Options:
    """A timestamp option that passes PAWS (a third guess, right half the time), if the
    connection uses them: without one the segment is dropped (RFC 7323 §3.2). It is the
    TSval of the latest segment from the genuine peer at `src` to arrive: never older
    than TS.Recent (only arrivals set it), nor newer than those still on the way (which
    it would make fail PAWS, once taken)."""
    assert net.trace is not None
    for rec in reversed(net.trace):
        if rec.src == src and rec.fate == "delivered":
            ts = wire.parse(rec.data).options.timestamps
            return wire.Options(timestamps=(ts[0], 0)) if ts is not None else wire.Options()
    raise AssertionError(f"nothing from {src} arrived yet")


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
def test_a_forged_fin_in_the_window_is_overridden_and_the_transfer_closes(
        direction: str) -> None:
    """Before, the held forged FIN was never reached once real data ran past it, the
    peer's FIN was ignored, and the connection never closed."""
    t = make_transfer(3, LinkProfile(delay=0.005), 1 << 20, 1 << 20, trace=True)
    rng = random.Random(direction)
    injected: list[Connection] = []
    t.connect()

    def stop() -> bool:
        client, server = t.client, t.server
        assert client is not None
        if not injected and server is not None and min(
                server.stats().bytes_received, client.stats().bytes_received) > 128 * KiB:
            conn, ep, src = _target(t, direction)
            window = conn.rcv_adv - conn.rcv_nxt
            assert window > 64 * KiB
            offset, passing = rng.randrange(1, window // 2), _passing_ts(t.net, src)
            ep.receive_datagram(_lucky_fin(conn, offset, passing), src, t.net.now)
            # taken in: both guesses were right
            assert _stream_ends_at(conn, conn.rcv_nxt + offset, t.net.now, passing)
            injected.append(conn)
        return t.poll()

    t.net.run(until=60.0, stop=stop)
    assert injected
    t.check()  # byte-exact both ways, both CLOSED without error
    assert peek.counter(injected[0], "fins_ignored") == 1


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
def test_a_forged_fin_at_rcv_nxt_ends_in_a_reset_not_a_hang(direction: str) -> None:
    """A FIN forged at exactly rcv_nxt is taken (nothing tells it from the peer's); the
    peer's next bytes cross it. Both ends learn it within a round trip, from the RST:
    before, the target ignored those bytes and the peer retransmitted them until its
    retransmission limit, minutes later."""
    t = make_transfer(4, LinkProfile(delay=0.005), 1 << 20, 1 << 20, trace=True)
    attack: list[float] = []
    t.connect()

    def stop() -> bool:
        client, server = t.client, t.server
        assert client is not None
        if not attack and server is not None and min(
                server.stats().bytes_received, client.stats().bytes_received) > 128 * KiB:
            conn, ep, src = _target(t, direction)
            ep.receive_datagram(_lucky_fin(conn, 0, _passing_ts(t.net, src)), src, t.net.now)
            assert conn.eof_received
            attack.append(t.net.now)
        t.poll()
        return t.client.state == S.CLOSED and t.server is not None \
            and t.server.state == S.CLOSED

    t.net.run(until=60.0, stop=stop)
    assert attack and t.client is not None and t.server is not None
    assert t.client.state == t.server.state == S.CLOSED
    assert isinstance(t.client.error, ConnectionResetError)
    assert isinstance(t.server.error, ConnectionResetError)
    assert t.net.now - attack[0] < 1.0


# --------------------------------------------------------------------------- attacker's cost

class FinProbe:
    """Would `conn` take in a bare FIN at a 32-bit `seq` acknowledging a 32-bit `ack`?

    Asked of a copy, so `conn` is left as it was; the copy is renewed only when a FIN it
    took changed more than the FIN it holds (a refused one changes nothing that matters)."""

    def __init__(self, conn: Connection, now: float, passing: wire.Options) -> None:
        self.conn, self.now, self.passing = conn, now, passing
        self.probe = peek.detached_copy(conn)

    def __call__(self, seq: int, ack: int, tsval: int | None = None) -> bool:
        probe, conn = self.probe, self.conn
        dropped = peek.dropped_segments(probe)
        options = self.passing if tsval is None else wire.Options(timestamps=(tsval, 0))
        probe.receive(wire.Segment(conn.remote_port, conn.local_port, seq, ack,
                                   wire.ACK | wire.FIN, conn.snd_wnd >> conn.snd_wscale,
                                   b"", options), self.now)
        if peek.dropped_segments(probe) != dropped:
            return False
        if all(getattr(probe, name) == getattr(conn, name) for name in (
                "state", "snd_una", "rcv_nxt", "max_snd_wnd", "snd_wnd")):
            peek.forget_held_fin(probe)  # only held, out of order
        else:
            self.probe = peek.detached_copy(conn)
        return True


def _edge(taken: Callable[[int], bool], inside: int, outside: int) -> int:
    """The last offset from `inside` towards `outside` for which `taken` holds."""
    while abs(outside - inside) > 1:
        mid = (inside + outside) // 2
        if taken(mid):
            inside = mid
        else:
            outside = mid
    return inside


def blind_fin_cost(conn: Connection, now: float, rng: random.Random, samples: int,
                   passing: wire.Options) -> dict[str, float]:
    """What a random-guess attacker needs for one FIN to be taken, measured on `conn`:
    the acceptable sequence numbers and ACK values found by probing (not computed from
    its variables), checked against `samples` random guesses of each. `passing` is a
    timestamp option that passes PAWS, or none when the connection uses no timestamps."""
    taken = FinProbe(conn, now, passing)
    good_seq, good_ack = sq.wrap(conn.rcv_nxt + 1), sq.wrap(conn.snd_una)
    assert taken(good_seq, good_ack)
    half = 1 << 31
    seq_lo = _edge(lambda d: taken(sq.wrap(conn.rcv_nxt + 1 - d), good_ack), 0, half)
    seq_hi = _edge(lambda d: taken(sq.wrap(conn.rcv_nxt + 1 + d), good_ack), 0, half)
    ack_lo = _edge(lambda d: taken(good_seq, sq.wrap(conn.snd_una - d)), 0, half)
    ack_hi = _edge(lambda d: taken(good_seq, sq.wrap(conn.snd_una + d)), 0, half)
    seqs, acks = seq_lo + seq_hi + 1, ack_lo + ack_hi + 1
    # random guesses, each number alone, agree with the ranges found
    seq_hits = sum(taken(rng.getrandbits(32), good_ack) for _ in range(samples))
    ack_hits = sum(taken(good_seq, rng.getrandbits(32)) for _ in range(samples))
    # and with timestamps on, a TSval that passes PAWS: a third guess
    ts_hits = sum(taken(good_seq, good_ack, rng.getrandbits(32)) for _ in range(samples)) \
        if passing.timestamps is not None else samples
    return {"seqs": seqs, "acks": acks, "seq_hits": seq_hits, "ack_hits": ack_hits,
            "ts_hits": ts_hits,
            "datagrams": (1 << 32) / seqs * (1 << 32) / acks * samples / ts_hits}


def test_a_blind_fin_must_guess_both_the_sequence_number_and_the_ack() -> None:
    """An upload with 4 MiB windows both ways (the defaults), paused half way. RFC 5961
    §5.2 on FIN makes a blind FIN guess both numbers: about 2^32/window * 2^32/MAX.SND.WND
    datagrams. The uploader (which sends the data, and receives only ACKs) stays there,
    2^20 for 4 MiB windows; the receiver of the upload has sent nothing past its SYN and a
    short reply, and no ACK below its ISS + 1 can be genuine: 2^10 * 2^32 / 1001, 2^32
    (it was 2^20 too, before the clamp at ISS + 1). Timestamps double both: the forgery
    must carry a TSval that passes PAWS (RFC 7323 §3.2 drops one without the option)."""
    t = make_transfer(11, LinkProfile(delay=0.005), 8 << 20, 1000,
                      server_cfg=Config(msl=1.0), client_cfg=Config(msl=1.0), trace=True)
    t.connect()

    def half_way() -> bool:  # the applications: the server replies and both read
        if t.server is None and (conn := t.server_ep.accept()) is not None:
            t.server = conn
            conn.send(t.s2c)
        assert t.client is not None
        t.client.read()
        return t.server is not None and len(t.server.read()) + t.server.stats().bytes_received \
            > (2 << 20)

    t.net.run(until=60.0, stop=half_way)
    assert t.client is not None and t.server is not None
    assert t.server.state == t.client.state == S.ESTABLISHED
    rng = random.Random(1)
    samples = 1 << 15
    receiver = blind_fin_cost(t.server, t.net.now, rng, samples, _passing_ts(t.net, CLIENT))
    sender = blind_fin_cost(t.client, t.net.now, rng, samples, _passing_ts(t.net, SERVER))
    print(f"\nblind FIN, upload receiver: {receiver}\nblind FIN, uploader: {sender}")
    for cost in (receiver, sender):
        assert cost["seqs"] >= 1 << 21  # a window of megabytes: about 1 in 2^10
        expected = samples * cost["seqs"] / (1 << 32)  # about 2^5 hits
        assert expected / 3 < cost["seq_hits"] < expected * 3
    # the uploader: MAX.SND.WND (4 MiB) plus what is in flight, as RFC 5961 says
    assert sender["acks"] >= 2 << 20 and sender["ack_hits"] > 0
    assert sender["datagrams"] > 1 << 19
    # the receiver: 1000 bytes of reply, its FIN not sent: ISS + 1 .. SND.NXT
    assert receiver["acks"] <= 1001 and receiver["ack_hits"] == 0
    assert receiver["datagrams"] > 1 << 32
    # timestamps (on by default) double it: half the TSvals fail PAWS
    for cost in (receiver, sender):
        assert samples * 0.4 < cost["ts_hits"] < samples * 0.6


def test_a_segment_without_the_negotiated_timestamp_option_is_dropped() -> None:
    """RFC 7323 §3.2: once negotiated, every segment but a RST carries timestamps; one
    without them is dropped silently (before, a blind FIN or data segment could leave the
    option out and so never had to get past PAWS)."""
    s, conn = _established_ts()
    for flags, payload in (("P.", b"forged"), ("F.", b""), (".", b"")):
        s.inject(flags, 5001, 1001, window=1000, payload=payload)  # in order, exact ACK
    s.expect_nothing()
    assert conn.readable == 0 and not conn.eof_received
    assert conn.stats().dropped_segments == 3
    s.inject("R", 5001)  # a RST needs none (RFC 7323 §3.2): it resets
    assert conn.state == S.CLOSED and isinstance(conn.error, ConnectionResetError)
