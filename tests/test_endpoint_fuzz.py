"""Hostile and broken datagrams thrown at endpoints in the middle of a real transfer.

Hypothesis draws a schedule of injections; the simulator runs a real two-way transfer
(with some loss, duplication and reordering) and, between its events, the schedule feeds
extra datagrams straight into one endpoint's `receive_datagram`: bit flips, truncations
and re-optioned copies of segments really captured on that link, random headers with
plausible ports and flags, segments whose sequence or acknowledgment numbers sit just
outside what the connection accepts, and plain random bytes, from the peer's address
and from strangers. Nothing may raise, every malformed datagram is counted in
`endpoint.counters`, and both streams still arrive byte-exact (SHA-256).

The boundary. Plaintext TCP authenticates nothing: a forged segment with an exactly
right sequence number and an acceptable ACK *is* the peer as far as RFC 9293 can tell
(in-window data, RST or FIN, and even a window or ACK value, would be believed). Only
secure mode can tell it apart. So the forgeries here are built to be unacceptable by
the rules a correct TCP applies, and those rules are what is under test:

- sequence numbers clearly outside the window (wholly before rcv_nxt, or at or past the
  advertised right edge, moved by at least 2**24 for bit flips of a real segment);
- an ACK of data never sent, or no ACK bit at all, on an otherwise in-window segment;
- a SYN in a synchronized state (RFC 5961 §4: challenge ACK, never a reset);
- malformed headers and options, and truncations (which never keep a FIN);
- mutations of real segments that keep their bytes at their real place: port, PSH/URG/
  ECE/CWR/SYN/ACK flag, window, checksum and urgent-pointer flips, added options;
- random bytes and random headers from the peer's address get their sequence number
  moved half the space away if it landed near the window; from strangers they are
  left as they are (they can only reach the listener).
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.netsim import Address, LinkProfile, Network
from utcp import seq as sq
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.events import StateChanged
from utcp.state import State

S = State
SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2, recv_buffer=256 * 1024,
             synack_retries=2)
PROFILE = LinkProfile(loss=0.03, duplicate=0.03, reorder=0.05, delay=0.005, jitter=0.002)
C2S, S2C = 128 * 1024, 64 * 1024

# header bit positions (bit 0 = most significant bit of byte 0) that may be flipped in a
# real segment without giving it a new, acceptable place in the stream
_PORT_BITS = list(range(0, 32))
_SEQ_HIGH_BITS = list(range(32, 40))      # seq bits 31..24: moves it by >= 16 MiB
_ACK_HIGH_BITS = list(range(64, 72))      # ack bits 31..24
_OFFSET_BITS = list(range(96, 100))       # data offset: only for segments without payload
_RESERVED_BITS = list(range(100, 104))
_SAFE_FLAG_BITS = [104 + 7 - b for b in (7, 6, 5, 4, 3, 1)]  # CWR ECE URG ACK PSH SYN
_TAIL_BITS = list(range(112, 160))        # window, checksum, urgent pointer


def defang(data: bytes, conn: Connection) -> bytes:
    """Move a parseable datagram's sequence number half the space away if it lies near
    the connection's window (see the module docstring); leave anything else alone."""
    try:
        seg = wire.parse(data)
    except wire.MalformedSegment:
        return data
    d = sq.diff(seg.seq, sq.wrap(conn.rcv_nxt))
    if -(1 << 24) <= d <= conn.rcv_adv - conn.rcv_nxt + (1 << 24):
        b = bytearray(data)
        b[4] ^= 0x80
        return bytes(b)
    return data


# --------------------------------------------------------------------------- the schedule

@dataclass(frozen=True)
class Flip:
    pick: int
    bits: tuple[int, ...]


@dataclass(frozen=True)
class Truncate:
    pick: int
    cut: int


@dataclass(frozen=True)
class Reoption:
    pick: int
    options: bytes


@dataclass(frozen=True)
class Header:
    from_peer: bool
    ports: int
    flags: int
    seq: int
    ack: int
    window: int
    options: bytes
    payload: bytes


@dataclass(frozen=True)
class Near:
    where: str          # "old", "beyond", "bad_ack", "no_ack", "rst", "syn"
    offset: int
    flags: int
    payload: bytes


@dataclass(frozen=True)
class Garbage:
    from_peer: bool
    data: bytes


Mutation = Flip | Truncate | Reoption | Header | Near | Garbage

u32 = st.integers(0, 0xFFFFFFFF)
pick = st.integers(0, 1000)
mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(Flip, pick, st.lists(st.integers(0, 10**6), min_size=1, max_size=4).map(tuple)),
    st.builds(Truncate, pick, st.integers(0, 10**6)),
    st.builds(Reoption, pick, st.binary(min_size=1, max_size=40)),
    st.builds(Header, st.booleans(), st.integers(0, 3), st.integers(0, 255), u32, u32,
              st.integers(0, 0xFFFF), st.binary(max_size=12), st.binary(max_size=64)),
    st.builds(Near, st.sampled_from(["old", "beyond", "bad_ack", "no_ack", "rst", "syn"]),
              st.integers(0, 1 << 20), st.integers(0, 255), st.binary(max_size=200)),
    st.builds(Garbage, st.booleans(), st.binary(max_size=80)),
)
schedule = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(["server", "client"]), mutations),
    min_size=5, max_size=120)


# --------------------------------------------------------------------------- building

def build_near(m: Near, conn: Connection) -> bytes:
    """A segment just outside what `conn` accepts, addressed as its peer would."""
    payload = m.payload
    flags = m.flags & ~wire.SYN
    if m.where == "rst" and conn.rcv_adv - conn.rcv_nxt < 2:
        m = Near("beyond", m.offset, m.flags, m.payload)  # no room for a wrong in-window RST
    seg_len = len(payload) + (1 if flags & wire.FIN else 0)
    ack = conn.snd_una + (m.offset % 3000) - 1500
    ack = min(max(ack, conn.snd_una), conn.snd_max)
    if m.where == "old":           # wholly before rcv_nxt (any flags, RST included)
        seq = conn.rcv_nxt - max(seg_len, 1) - m.offset
    elif m.where == "beyond":      # at or past the right edge we advertised
        seq = max(conn.rcv_adv, conn.rcv_nxt + 1) + m.offset
    elif m.where == "rst":         # in the window but not at rcv_nxt: RFC 5961 §3
        wnd = conn.rcv_adv - conn.rcv_nxt
        seq = conn.rcv_nxt + 1 + m.offset % max(wnd - 1, 1)
        flags = wire.RST | (flags & wire.ACK)
        payload = b""
    elif m.where == "syn":         # any SYN on a synchronized connection: RFC 5961 §4
        wnd = max(conn.rcv_adv - conn.rcv_nxt, 1)
        seq = conn.rcv_nxt + m.offset % wnd
        flags |= wire.SYN
    else:                          # in the window, but no usable ACK
        wnd = max(conn.rcv_adv - conn.rcv_nxt, 1)
        seq = conn.rcv_nxt + m.offset % wnd
        flags &= ~wire.RST
        if m.where == "bad_ack":   # acknowledges data never sent
            flags |= wire.ACK
            ack = conn.snd_max + 1 + m.offset
        else:
            flags &= ~wire.ACK
    return wire.build_fast(conn.remote_port, conn.local_port, sq.wrap(seq), sq.wrap(ack),
                           flags, 1024, b"", payload)


def build_header(m: Header, conn: Connection, rng: random.Random) -> bytes:
    src, dst = conn.remote_port, conn.local_port
    if m.ports == 1:
        src, dst = dst, src
    elif m.ports == 2:
        src = rng.randrange(1 << 16)
    elif m.ports == 3:
        src, dst = rng.randrange(1 << 16), rng.randrange(1 << 16)
    options = m.options + bytes(-len(m.options) % 4)
    return wire.build_fast(src, dst, m.seq, m.ack, m.flags, m.window, options, m.payload)


def flip(m: Flip, real: bytes) -> bytes:
    hlen = (real[12] >> 4) * 4
    allowed = (_PORT_BITS + _SEQ_HIGH_BITS + _ACK_HIGH_BITS + _RESERVED_BITS + _SAFE_FLAG_BITS
               + _TAIL_BITS)
    if len(real) == hlen == wire.HEADER_LEN:
        # only a bare header: a smaller offset over option bytes (a pure ACK's SACK
        # blocks) would turn them into in-window data, a forgery plaintext cannot detect
        allowed += _OFFSET_BITS
    b = bytearray(real)
    for choice in m.bits:
        bit = allowed[choice % len(allowed)]
        b[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(b)


def truncate(m: Truncate, real: bytes) -> bytes:
    if real[13] & wire.FIN:  # a shorter segment would move the FIN: cut into the header
        return real[:m.cut % min(len(real), (real[12] >> 4) * 4)]
    return real[:m.cut % len(real)]


def reoption(m: Reoption, real: bytes) -> bytes:
    hlen = (real[12] >> 4) * 4
    options = m.options + bytes(-len(m.options) % 4)
    header = bytearray(real[:20])
    header[12] = ((20 + len(options)) // 4) << 4
    return bytes(header) + options + real[hlen:]


# --------------------------------------------------------------------------- the run

@dataclass
class App:
    conn: Connection | None = None
    got: bytearray = field(default_factory=bytearray)
    closed: bool = False


def run_fuzzed(plan: list[tuple[int, str, Mutation]], seed: int = 11) -> int:
    """Run the transfer with `plan` injected; return how many datagrams were injected."""
    rng = random.Random(seed)
    net = Network(seed, PROFILE)
    server_ep = Endpoint(CFG, SERVER[1], listening=True, rng=random.Random(2))
    client_ep = Endpoint(CFG, CLIENT[1], rng=random.Random(3))
    net.add(SERVER, server_ep)
    net.add(CLIENT, client_ep)
    captured: dict[Address, list[bytes]] = {SERVER: [], CLIENT: []}  # by destination

    def capture(data: bytes, src: Address, dst: Address, now: float) -> bool:
        if dst in captured:
            captured[dst].append(data)
        return True

    net.filter = capture
    c2s, s2c = random.Random(4).randbytes(C2S), random.Random(5).randbytes(S2C)
    client, server = App(), App()
    client.conn = client_ep.connect(SERVER, net.now)
    client.conn.send(c2s)
    endpoints = {"server": (server_ep, SERVER, CLIENT), "client": (client_ep, CLIENT, SERVER)}
    malformed_sent = {"server": 0, "client": 0}
    injected = [0]
    states: dict[str, list[State]] = {"server": [], "client": []}
    pending = list(plan)
    countdown = [pending[0][0] if pending else 0]

    def inject() -> None:
        _, target, m = pending.pop(0)
        ep, here, peer = endpoints[target]
        conn = (server if target == "server" else client).conn
        if conn is None or conn.state != S.ESTABLISHED:
            return  # only a connection mid-transfer is fuzzed
        addr = peer
        if isinstance(m, Near):
            data = build_near(m, conn)
        elif isinstance(m, Header):
            data = build_header(m, conn, rng)
            if m.from_peer:
                data = defang(data, conn)
            else:
                addr = (f"10.9.0.{rng.randrange(1, 5)}", rng.randrange(1, 1 << 16))
        elif isinstance(m, Garbage):
            data = m.data
            if m.from_peer:
                data = defang(data, conn)
            else:
                addr = (f"10.9.0.{rng.randrange(1, 5)}", rng.randrange(1, 1 << 16))
        else:
            reals = captured[here]
            real = reals[-1 - m.pick % min(len(reals), 30)]
            if isinstance(m, Flip):
                data = flip(m, real)
            elif isinstance(m, Truncate):
                data = truncate(m, real)
            else:
                data = reoption(m, real)
        try:
            wire.parse(data)
        except wire.MalformedSegment:
            malformed_sent[target] += 1
        ep.receive_datagram(data, addr, net.now)
        injected[0] += 1

    def app(side: App, name: str, expect: int, first: bool) -> None:
        conn = side.conn
        if conn is None:
            return
        while (event := conn.next_event()) is not None:
            if isinstance(event, StateChanged):
                states[name].append(event.new)
        side.got += conn.read()
        if side.closed or conn.state not in (S.ESTABLISHED, S.CLOSE_WAIT):
            return
        done_sending = conn.queued == 0
        if (first and done_sending and len(side.got) == expect) or conn.eof_received:
            conn.close()
            side.closed = True

    def stop() -> bool:
        if server.conn is None and (accepted := server_ep.accept()) is not None:
            server.conn = accepted
            accepted.send(s2c)
        if (pending and client.conn.state == S.ESTABLISHED and server.conn is not None
                and server.conn.state == S.ESTABLISHED):
            while pending and countdown[0] <= 0:
                inject()
                countdown[0] = pending[0][0] if pending else 0
            countdown[0] -= 1
        app(client, "client", S2C, first=True)
        app(server, "server", C2S, first=False)
        return (client.conn is not None and server.conn is not None
                and client.conn.state == S.CLOSED and server.conn.state == S.CLOSED)

    net.run(until=120.0, stop=stop)
    assert client.conn is not None and server.conn is not None
    assert client.conn.state == S.CLOSED and server.conn.state == S.CLOSED, (
        states, client.conn.error, server.conn.error)
    # an orderly close: no forgery reset or timed anything out
    assert client.conn.error is None and server.conn.error is None
    assert states["client"][-1] == states["server"][-1] == S.CLOSED
    assert S.TIME_WAIT in states["client"] and S.LAST_ACK in states["server"]
    # byte-exact both ways
    assert hashlib.sha256(server.got).hexdigest() == hashlib.sha256(c2s).hexdigest()
    assert hashlib.sha256(client.got).hexdigest() == hashlib.sha256(s2c).hexdigest()
    # every malformed datagram was counted, and only those (the real ones are well-formed)
    for name, (ep, _, _) in endpoints.items():
        counted = sum(n for reason, n in ep.counters.items() if reason.startswith("malformed"))
        assert counted == malformed_sent[name], (name, ep.counters)
    # strangers' half-open connections expire; nothing stays behind
    net.run(until=net.now + 30.0)
    for ep, _, _ in endpoints.values():
        assert ep.connections == {} and ep.get_timer() is None
    assert net.stats.stuck_timers == 0
    return injected[0]


@settings(max_examples=100, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=schedule)
def test_fuzzed_datagrams_mid_transfer(plan: list[tuple[int, str, Mutation]]) -> None:
    # at most 4 * 120 network steps of delays: the transfer (192 KiB over a lossy link)
    # outlasts them, so every datagram of the plan reaches a connection mid-flight
    assert run_fuzzed(plan) == len(plan)


def random_mutation(rng: random.Random) -> Mutation:
    """The same kinds as `mutations`, drawn from a seeded Random for the soak test."""
    def blob(n: int) -> bytes:
        return rng.randbytes(rng.randrange(n + 1))

    kind = rng.randrange(6)
    if kind == 0:
        return Flip(rng.randrange(1000), tuple(rng.randrange(10**6)
                                               for _ in range(rng.randint(1, 4))))
    if kind == 1:
        return Truncate(rng.randrange(1000), rng.randrange(10**6))
    if kind == 2:
        return Reoption(rng.randrange(1000), blob(40) or b"\x01")
    if kind == 3:
        return Header(rng.random() < 0.5, rng.randrange(4), rng.randrange(256),
                      rng.getrandbits(32), rng.getrandbits(32), rng.randrange(1 << 16),
                      blob(12), blob(64))
    if kind == 4:
        return Near(rng.choice(["old", "beyond", "bad_ack", "no_ack", "rst", "syn"]),
                    rng.randrange(1 << 20) if rng.random() < 0.5 else rng.randrange(4),
                    rng.randrange(256), blob(200))
    return Garbage(rng.random() < 0.5, blob(80))


@pytest.mark.parametrize("seed", range(3))
def test_soak_many_injections(seed: int) -> None:
    """Hypothesis keeps its examples small; this floods one transfer with ~1500 datagrams."""
    rng = random.Random(seed)
    plan = [(rng.randrange(2), rng.choice(["server", "client"]), random_mutation(rng))
            for _ in range(1500)]
    assert run_fuzzed(plan, seed=seed) == len(plan)  # every one reached the transfer


def test_harness_without_injections() -> None:
    """The harness itself: with nothing injected, the transfer and close pass every check."""
    assert run_fuzzed([]) == 0


def test_every_mutation_kind_once() -> None:
    """One of each kind, early, so each is exercised whatever hypothesis draws."""
    plan: list[tuple[int, str, Mutation]] = []
    for target in ("server", "client"):
        plan += [
            (20, target, Flip(0, (0, 33, 65, 100, 110, 120))),
            (1, target, Truncate(1, 7)),
            (1, target, Truncate(2, 700)),
            (1, target, Reoption(0, bytes((wire.OPT_SACK, 10)) + bytes(8))),
            (1, target, Reoption(0, bytes((wire.OPT_MSS, 9)))),   # option past header
            (1, target, Header(True, 0, wire.RST | wire.ACK, 12345, 678, 0, b"", b"")),
            (1, target, Header(False, 3, wire.SYN, 1, 0, 512, b"\x02\x04\x05\xb4", b"")),
            (1, target, Header(False, 0, wire.ACK, 1, 2, 512, b"", b"x")),
            (1, target, Near("old", 0, wire.RST, b"")),
            (1, target, Near("old", 0, wire.FIN | wire.ACK, b"stale")),
            (1, target, Near("beyond", 0, wire.RST | wire.ACK, b"")),
            (1, target, Near("beyond", 5, wire.ACK | wire.FIN, b"future")),
            (1, target, Near("bad_ack", 3, wire.ACK | wire.PSH | wire.FIN, b"unsent ack")),
            (1, target, Near("no_ack", 0, wire.PSH | wire.FIN, b"no ack bit")),
            (1, target, Near("rst", 0, wire.ACK, b"")),
            (1, target, Near("rst", 99, 0, b"")),
            (1, target, Near("syn", 0, wire.ACK, b"")),
            (1, target, Near("syn", 7, wire.RST | wire.FIN, b"syn data")),
            (1, target, Garbage(True, b"\x00" * 19)),
            (1, target, Garbage(True, struct.pack("!HHIIBBHHH", 2000, 1000, 0, 0, 0x50,
                                                    wire.RST, 0, 0, 0))),
            (1, target, Garbage(False, bytes(range(40)))),
        ]
    assert run_fuzzed(plan) == len(plan)  # each one reached the transfer mid-flight
