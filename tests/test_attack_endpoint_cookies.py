"""SYN cookies against a blind attacker (issue 12, item 2), on the fake clock.

The attack: ACKs for no connection, from an address that never sent a SYN, each one
guessing a cookie. Before the fix every such ACK was checked, whether or not a cookie
had been sent, and the MAC was 20 bits: about 2^20 datagrams opened a connection. Now

- an ACK is checked as a cookie only within a cookie's lifetime after one was sent
  (Linux's tcp_synq_no_recent_overflow), so with no SYN flood there is nothing to guess;
- the MAC takes the whole 32-bit ISN when the SYN offered timestamps (the options ride in
  the low bits of our TSval, as Linux), 29 bits without: at most 2 x 2^-29 = 2^-28 a
  datagram, the current and the previous cookie period each getting one try.

A test cannot brute-force 2^28 datagrams; `_oracle_cookie` stands for an attacker whose
guess was right (it asks the endpoint's own secret), which is what a successful brute
force amounts to, and shows where the check is now skipped.
"""

from __future__ import annotations

import random

from tests.script import ANY, MASK, PEER, Script
from utcp import crypto, wire
from utcp import seq as sq
from utcp.config import Config
from utcp.state import State

CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2)
STRANGER = ("10.66.6.6", 6666)


def _oracle_cookie(s: Script, peer: tuple[str, int], client_isn: int) -> int:
    """The cookie the endpoint would make for `peer` now: a right guess."""
    made = s.ep._secrets.make_cookie(peer, s.ep.port, client_isn, 1400, None, s.now)
    return made[0] if isinstance(made, tuple) else made


def _flooded(backlog: int = 1) -> Script:
    """A listener whose SYN queue is full, so further SYNs get cookies."""
    s = Script(CFG, listening=True, backlog=backlog, seed=9)
    for i in range(backlog):
        s.inject("S", 1000 + i, options=wire.Options(mss=1400), peer=("10.9.9.9", 5000 + i))
    s.sent.clear()
    return s


def test_ack_for_no_connection_is_not_checked_as_a_cookie_when_none_was_sent() -> None:
    """The attack on main: a right guess, no SYN ever sent, and no SYN flood either.
    It became an established connection that took the attacker's data."""
    s = Script(CFG, listening=True, seed=1)
    s.advance(10.0)
    cookie = _oracle_cookie(s, STRANGER, 4999)
    s.inject("P.", 5000, cookie + 1, payload=b"GET /admin", peer=STRANGER)
    assert STRANGER not in s.ep.connections
    assert s.ep.counters["SYN cookies accepted"] == 0
    assert s.ep.counters["SYN cookies checked"] == 0
    s.expect("R", seq=cookie + 1, peer=STRANGER)  # RFC 9293 §3.10.7.1, as for any ACK
    s.expect_nothing()


def test_cookie_checks_stop_a_cookie_lifetime_after_the_last_cookie() -> None:
    s = _flooded()
    s.inject("S", 5000, options=wire.Options(mss=1400))
    s.expect("S.", ack=5001)
    assert s.ep.counters["SYN cookies sent"] == 1
    s.advance(crypto.COOKIE_LIFETIME + 1.0)
    s.sent.clear()
    cookie = _oracle_cookie(s, STRANGER, 4999)  # valid at this instant
    s.inject(".", 5000, cookie + 1, peer=STRANGER)
    assert STRANGER not in s.ep.connections
    assert s.ep.counters["SYN cookies checked"] == 0
    s.expect("R", seq=cookie + 1, peer=STRANGER)
    # while cookies are out the same right guess would get in: the gate is the time
    for port in (1, 2):  # the first half-open entry timed out: refill, then a cookie
        s.inject("S", 7000, options=wire.Options(mss=1400), peer=("10.9.9.8", port))
    assert s.ep.counters["SYN cookies sent"] == 2
    cookie = _oracle_cookie(s, STRANGER, 4999)
    s.inject(".", 5000, cookie + 1, peer=STRANGER)
    assert s.ep.connections[STRANGER].state is State.ESTABLISHED


def test_random_spoofed_acks_during_a_syn_flood_open_nothing() -> None:
    """Random guesses while cookies are out, with and without timestamps, from many
    addresses: every one is checked and none passes (expected 20,000 x 2^-28)."""
    s = _flooded()
    s.inject("S", 5000, options=wire.Options(mss=1400), peer=("10.9.9.7", 7))
    rng = random.Random(12)
    n = 20_000
    for i in range(n):
        peer = (f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                rng.randrange(1024, 65536))
        ts = (rng.getrandbits(32), rng.getrandbits(32)) if i % 2 else None
        s.inject(".", rng.getrandbits(32), rng.getrandbits(32), peer=peer,
                 options=wire.Options(timestamps=ts), flush=False)
    s.app()
    assert s.ep.counters["SYN cookies checked"] == n
    assert s.ep.counters["SYN cookies accepted"] == 0
    assert len(s.ep.connections) == 1  # the flood's one half-open entry


def _sacks_a_segment_past_a_hole(s: Script, our_next: int, rcv_nxt: int, tsval: int) -> None:
    """The connection uses SACK (RFC 2018): 100 bytes past a hole get a duplicate ACK at
    once, with a block for them."""
    s.inject("P.", rcv_nxt + 100, our_next, payload=b"y" * 100,
             options=wire.Options(timestamps=(tsval, 0)))
    dup = s.expect(".", seq=our_next, ack=rcv_nxt)
    assert dup.options.sack == (((rcv_nxt + 100) & MASK, (rcv_nxt + 200) & MASK),)


def test_the_mac_covers_the_options_in_the_timestamp() -> None:
    """Changing the echoed TSval's option bits (a bigger MSS, another window scale, or
    SACK) or any bit of the cookie fails the MAC."""
    s = _flooded()
    s.inject("S", 5000, options=wire.Options(mss=1220, wscale=7, sack_permitted=True,
                                             timestamps=(100, 0)))
    synack = s.expect("S.", ack=5001)
    assert synack.options.timestamps is not None
    tsval = synack.options.timestamps[0]
    cookie = synack.seq
    forged = [(cookie, tsval ^ 1), (cookie, tsval ^ 0x20), (cookie, tsval ^ 0x2),
              (cookie ^ 1, tsval), (cookie ^ (1 << 31), tsval), (cookie, tsval ^ 0x80)]
    for isn, tsecr in forged:
        s.inject(".", 5001, isn + 1, options=wire.Options(timestamps=(101, tsecr)))
        s.expect("R", seq=isn + 1)
        assert PEER not in s.ep.connections
    # a timestamped cookie does not check without the timestamp, nor the reverse
    s.inject(".", 5001, cookie + 1)
    s.expect("R", seq=cookie + 1)
    assert s.ep.counters["SYN cookies checked"] == len(forged) + 1
    s.inject(".", 5001, cookie + 1, options=wire.Options(timestamps=(101, tsval)))
    conn = s.ep.connections[PEER]
    assert conn.state is State.ESTABLISHED
    assert conn.snd_mss == 1220 and conn.snd_wscale == 7
    s.expect_nothing()
    _sacks_a_segment_past_a_hole(s, cookie + 1, 5001, tsval=102)


def test_a_real_client_gets_in_on_a_cookie_during_a_syn_and_ack_flood() -> None:
    """The defence must not cost the legitimate client: SYNs fill the queue and spoofed
    ACKs fly around it, and its own cookie ACK still makes a connection that carries data
    both ways, with timestamps, SACK and window scaling."""
    s = _flooded(backlog=4)
    rng = random.Random(3)

    def noise(k: int) -> None:
        for _ in range(k):
            peer = (f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    rng.randrange(1024, 65536))
            if rng.random() < 0.5:
                s.inject("S", rng.getrandbits(32), peer=peer, flush=False,
                         options=wire.Options(mss=1400, timestamps=(1, 0)))
            else:
                s.inject(".", rng.getrandbits(32), rng.getrandbits(32), peer=peer,
                         flush=False, options=wire.Options(timestamps=(1, 2)))
        s.app()
        s.sent.clear()

    noise(500)
    s.inject("S", 5000, options=wire.Options(mss=1400, wscale=7, sack_permitted=True,
                                             timestamps=(100, 0)))
    synack = s.expect("S.", ack=5001, wscale=ANY)
    assert synack.options.timestamps is not None
    noise(500)
    s.advance(0.5)
    s.sent.clear()
    echo = synack.options.timestamps[0]
    s.inject("P.", 5001, synack.seq + 1, window=1000, payload=b"hello",
             options=wire.Options(timestamps=(150, echo)))
    conn = s.ep.connections[PEER]
    assert conn.state is State.ESTABLISHED and conn.read() == b"hello"
    assert conn.snd_wscale == 7
    conn.send(b"world")
    s.app()
    out = s.expect("P.", seq=synack.seq + 1, ack=5006, payload=b"world")
    assert out.options.timestamps is not None
    assert out.options.timestamps[1] == 150 and sq.ge(out.options.timestamps[0], echo)
    _sacks_a_segment_past_a_hole(s, synack.seq + 6, 5006, tsval=151)
    assert s.ep.counters["SYN cookies accepted"] == 1
