"""Attacks on the endpoint and the connection, on the fake clock.

- SYN floods: 20,000 SYNs from many source ports while a legitimate client connects and
  moves 1 MiB; the SYN queue stays bounded by `backlog`, SYN cookies take over when it is
  full, and memory stays bounded (tracemalloc). The cookie path on its own: the client
  whose SYN got a cookie completes the handshake with its MSS and window scale kept, and
  a forged cookie gets RST and creates nothing.
- Blind in-window attacks (RFC 5961), plaintext mode: RSTs in the window but not at
  rcv_nxt, RSTs outside it, data at wrong offsets or with unacceptable ACKs, SYNs,
  thrown at both ends of a running transfer. The transfer completes byte-exact and the
  challenge ACKs are counted. An ACK of unsent data changes nothing.
- Anti-amplification: before an address is validated, the server sends it at most three
  times what it received from it, over the whole SYN+ACK schedule, plaintext and secure.

What plaintext TCP cannot stop, these tests do not pretend it can: a forgery with exactly
the right sequence number and an acceptable ACK is indistinguishable from the peer (see
tests/test_endpoint_fuzz.py). Secure mode is the answer to that (tests/test_secure.py).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import random
import tracemalloc
from dataclasses import dataclass, field

import pytest

from tests import peek
from tests.netsim import Address, LinkProfile, Network
from tests.script import ANY, PEER, Script
from utcp import crypto, wire
from utcp import seq as sq
from utcp.config import Config
from utcp.connection import CHALLENGE_ACK_LIMIT, Connection, window_scale_for
from utcp.endpoint import Endpoint
from utcp.state import State

S = State
SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
MiB = 1 << 20
CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2)
MASK = 0xFFFFFFFF

_SERVER_PRIV = base64.b64encode(hashlib.sha256(b"attacks server key").digest()).decode()
_SERVER_PUB = crypto.public_key_of(_SERVER_PRIV)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Transfer:
    """A client and a server moving `c2s` / `s2c` through a `Network`, then closing."""

    net: Network
    client_ep: Endpoint
    server_ep: Endpoint
    c2s: bytes
    s2c: bytes
    client: Connection | None = None
    server: Connection | None = None
    got_c: bytearray = field(default_factory=bytearray)
    got_s: bytearray = field(default_factory=bytearray)

    def connect(self) -> None:
        self.client = self.client_ep.connect(SERVER, self.net.now)
        self.client.send(self.c2s)

    def poll(self) -> bool:
        """The applications' turn; True once both connections are CLOSED."""
        if self.server is None and (conn := self.server_ep.accept()) is not None:
            self.server = conn
            conn.send(self.s2c)
        client, server = self.client, self.server
        assert client is not None
        self.got_c += client.read()
        if client.state == S.ESTABLISHED and len(self.got_c) == len(self.s2c):
            client.close()  # the client closes once it has everything
        if server is not None:
            self.got_s += server.read()
            if server.state == S.CLOSE_WAIT:
                server.close()
        return client.state == S.CLOSED and server is not None and server.state == S.CLOSED

    def check(self) -> None:
        client, server = self.client, self.server
        assert client is not None and server is not None
        assert client.state == S.CLOSED and server.state == S.CLOSED, (client.state,
                                                                      server.state)
        assert client.error is None and server.error is None, (client.error, server.error)
        assert len(self.got_s) == len(self.c2s) and sha(self.got_s) == sha(self.c2s)
        assert len(self.got_c) == len(self.s2c) and sha(self.got_c) == sha(self.s2c)


def make_transfer(seed: int, profile: LinkProfile, c2s: int, s2c: int, *,
                  server_cfg: Config = CFG, client_cfg: Config = CFG,
                  backlog: int = 128, trace: bool = False) -> Transfer:
    rng = random.Random(seed)
    net = Network(seed, profile, trace=trace)
    server_ep = Endpoint(server_cfg, SERVER[1], listening=True, backlog=backlog,
                         rng=random.Random(rng.getrandbits(64)))
    client_ep = Endpoint(client_cfg, CLIENT[1], rng=random.Random(rng.getrandbits(64)))
    net.add(SERVER, server_ep)
    net.add(CLIENT, client_ep)
    return Transfer(net, client_ep, server_ep, rng.randbytes(c2s), rng.randbytes(s2c))


def syn_from(port: int, seq: int, mss: int = 1400, wscale: int | None = 7) -> bytes:
    return wire.build(wire.Segment(port, SERVER[1], seq, 0, wire.SYN, 65535,
                                   options=wire.Options(mss=mss, wscale=wscale)))


# --------------------------------------------------------------------------- SYN flood

def test_syn_flood_20000_while_a_client_transfers_1mib() -> None:
    backlog = 16
    flood_total = 20_000
    t = make_transfer(1, LinkProfile(loss=0.01, delay=0.005, jitter=0.001), MiB, 64 << 10,
                      backlog=backlog)
    ep = t.server_ep
    rng = random.Random(2)
    flooders = [(f"198.18.{h}.{h + 1}", 1024 + p) for h in range(4) for p in range(5000)]
    rng.shuffle(flooders)
    assert len(set(flooders)) == flood_total
    sent = [0]
    worst = {"connections": 0, "syn_queue": 0}

    def flood(n: int) -> None:
        for _ in range(min(n, flood_total - sent[0])):
            addr = flooders[sent[0]]
            ep.receive_datagram(syn_from(addr[1], rng.getrandbits(32)), addr, t.net.now)
            sent[0] += 1

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        flood(backlog)  # the SYN queue is full before the client's SYN arrives
        t.connect()

        def stop() -> bool:
            # the flood keeps pace with the transfer, so it lasts as long as it does
            progress = min(1.0, len(t.got_s) / len(t.c2s))
            flood(backlog + int((flood_total - backlog) * progress) - sent[0])
            worst["connections"] = max(worst["connections"], len(ep.connections))
            worst["syn_queue"] = max(worst["syn_queue"], len(ep.syn_queue))
            return t.poll() and sent[0] == flood_total

        t.net.run(until=120.0, stop=stop)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    t.check()
    assert sent[0] == flood_total
    # bounded: the flood's half-open entries never exceed backlog, plus the one legit
    assert worst["syn_queue"] <= backlog + 1, worst
    assert worst["connections"] <= backlog + 1, worst
    assert ep.counters["SYN cookies sent"] >= flood_total - 10 * backlog, ep.counters
    assert ep.counters["SYN cookies accepted"] == 1  # the client came in on a cookie
    # Measured: about 2.3 MiB (the transfer's buffers, the simulator's queue, the stateless
    # SYN+ACKs in flight). 20,000 half-open connections would hold about 70 MiB (some
    # 3.6 KiB each, measured with an unbounded backlog), so this bound does tell them apart.
    assert peak < 16 * MiB, f"tracemalloc peak grew by {peak / MiB:.1f} MiB"


def test_cookie_connection_end_to_end_keeps_mss_and_window_scale() -> None:
    """A real client whose SYN meets a full queue: it gets a cookie, completes the
    handshake, and data flows both ways under loss, with its MSS and window scale."""
    client_cfg = CFG.replace(mss=1200, recv_buffer=1 << 20)
    t = make_transfer(3, LinkProfile(loss=0.05, duplicate=0.02, delay=0.005), 256 << 10,
                      256 << 10, client_cfg=client_cfg, backlog=1)
    stranger = ("198.18.9.9", 4444)
    t.server_ep.receive_datagram(syn_from(4444, 77), stranger, 0.0)
    assert len(t.server_ep.syn_queue) == 1
    t.connect()
    t.net.run(until=120.0, stop=t.poll)
    t.check()
    ep = t.server_ep
    assert ep.counters["SYN cookies sent"] >= 1 and ep.counters["SYN cookies accepted"] == 1
    server, client = t.server, t.client
    assert server is not None and client is not None
    assert server.snd_mss == 1200
    assert server.snd_wscale == window_scale_for(1 << 20) == client.rcv_wscale
    assert server.rcv_wscale == client.snd_wscale


def cookie_script(mss: int = 1220, wscale: int | None = 7,
                  config: Config = CFG, ts: bool = False) -> tuple[Script, int]:
    """A listener with backlog 1 whose SYN queue is full; PEER's SYN gets a cookie.

    With `ts` the SYN offers timestamps and SACK: the cookie keeps the window scale and
    SACK in its SYN+ACK's TSval, echoed by `cookie_ts(s)`. Without, it keeps the MSS only.
    """
    s = Script(config, listening=True, backlog=1, seed=5)
    other = ("10.9.9.9", 5555)
    s.inject("S", 1000, options=wire.Options(mss=1400), peer=other)
    s.expect("S.", ack=1001, peer=other)
    s.inject("S", 5000, options=wire.Options(mss=mss, wscale=wscale, sack_permitted=ts,
                                             timestamps=(777, 0) if ts else None))
    synack = s.expect("S.", ack=5001, mss=config.mss,
                      wscale=window_scale_for(config.recv_buffer)
                      if wscale is not None and ts else None)
    assert s.ep.counters["SYN cookies sent"] == 1
    assert PEER not in s.ep.connections and len(s.ep.syn_queue) == 1  # no state for it
    if ts:
        assert synack.options.timestamps is not None and synack.options.sack_permitted
        assert synack.options.timestamps[1] == 777
    return s, synack.seq


def cookie_ts(s: Script, tsval: int = 778) -> wire.Options:
    """The options of the client's ACK that returns a cookie made with timestamps."""
    assert s.last_sent is not None
    synack_ts = s.last_sent.seg.options.timestamps
    assert synack_ts is not None
    return wire.Options(timestamps=(tsval, synack_ts[0]))


def test_cookie_handshake_keeps_mss_and_window_scale() -> None:
    s, cookie = cookie_script(mss=1220, wscale=7, ts=True)
    opts = cookie_ts(s)
    s.inject(".", 5001, cookie + 1, window=100, options=opts)
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED and conn.iss == cookie
    assert conn.snd_mss == 1220 and conn.snd_wscale == 7
    assert conn.snd_wnd == 100 << 7
    assert conn.rcv_wscale == window_scale_for(CFG.recv_buffer)
    assert s.ep.accept() is conn
    # data both ways over the cookie connection
    s.inject("P.", 5001, cookie + 1, window=1000, payload=b"hello cookie",
             options=wire.Options(timestamps=(779, opts.timestamps[1])))  # type: ignore[index]
    assert conn.read() == b"hello cookie"
    conn.send(bytes(3000))
    s.app()
    first = s.expect(ANY, seq=cookie + 1, ack=5013, length=1208)
    # our TSval carries on from the cookie's, never below it (the peer's PAWS)
    assert opts.timestamps is not None and first.options.timestamps is not None
    assert sq.ge(first.options.timestamps[0], opts.timestamps[1])
    second = s.expect(ANY, seq=cookie + 1209, length=1208)
    third = s.expect(ANY, seq=cookie + 2417, length=584)
    assert first.flags & wire.ACK and second.flags & wire.ACK and third.flags & wire.PSH
    s.inject(".", 5013, cookie + 3001, window=1000,
             options=wire.Options(timestamps=(780, first.options.timestamps[0])))
    assert conn.snd_una == conn.snd_max and conn.queued == 0
    # timestamps were kept (1208 = 1220 - 12 above, each segment stamped), and SACK: a
    # segment past a hole is answered at once with a block for it (RFC 2018)
    assert all(seg.options.timestamps is not None for seg in (first, second, third))
    s.inject("P.", 5013 + 100, cookie + 3001, window=1000, payload=b"y" * 100,
             options=wire.Options(timestamps=(781, third.options.timestamps[0])))  # type: ignore[index]
    dup = s.expect(".", seq=cookie + 3001, ack=5013)
    assert dup.options.sack == ((5113, 5213),)


def test_cookie_without_timestamps_keeps_mss_but_not_window_scale() -> None:
    """No timestamp option: no room to remember the peer's shift, so neither side
    scales (as Linux); the 64 KiB window still works."""
    s, cookie = cookie_script(mss=1220, wscale=7)
    s.inject(".", 5001, cookie + 1, window=100)
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED and conn.iss == cookie
    assert conn.snd_mss == 1220 and conn.snd_wscale == 0 and conn.rcv_wscale == 0
    assert conn.snd_wnd == 100
    s.inject("P.", 5001, cookie + 1, window=5000, payload=b"hello cookie")
    assert conn.read() == b"hello cookie"
    conn.send(bytes(3000))
    s.app()
    s.expect(ANY, seq=cookie + 1, ack=5013, length=1220)


def test_cookie_mss_table_and_no_window_scale() -> None:
    config = CFG.replace(mss=8960)
    s, cookie = cookie_script(mss=1460, wscale=None, config=config)
    s.inject(".", 5001, cookie + 1, window=4000)
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED
    assert conn.snd_mss == 1452  # the largest table entry not above 1460, as Linux
    assert conn.snd_wscale == 0 and conn.rcv_wscale == 0 and conn.snd_wnd == 4000


@pytest.mark.parametrize("how", ["wrong cookie", "wrong client isn", "other address",
                                 "expired", "cookie off by one"])
def test_forged_cookie_ack_gets_rst_and_creates_nothing(how: str) -> None:
    s, cookie = cookie_script()
    peer, seq, ack, flags = PEER, 5001, cookie + 1, "."
    if how == "wrong cookie":
        ack = cookie ^ 0x5A5A5 + 1
    elif how == "wrong client isn":
        seq = 5002
    elif how == "other address":
        peer = ("10.0.0.3", PEER[1])
    elif how == "expired":
        s.advance(200.0)
        s.sent.clear()
    else:
        ack = cookie + 2
    conns = dict(s.ep.connections)
    s.inject(flags, seq, ack, peer=peer)
    s.expect("R", seq=ack, peer=peer)
    s.expect_nothing()
    assert s.ep.counters["SYN cookies accepted"] == 0
    assert peer not in s.ep.connections
    assert set(s.ep.connections) == set(conns)
    assert not s.ep.accept_queue


def test_forged_cookie_with_data_is_dropped_without_rst() -> None:
    """A data segment that does not carry a valid cookie, while cookies are out, may be a
    legitimate client's segment that overtook its first one (seq = ISN + 1, the one the
    cookie is checked against): a RST would reset that client. Dropped, counted."""
    s, cookie = cookie_script()
    for seq, ack in ((5001 + 1400, cookie + 1), (5001, cookie + 99), (7, 8)):
        s.inject("P.", seq, ack, payload=b"x" * 1400)
    s.expect_nothing()
    assert PEER not in s.ep.connections
    assert s.ep.counters["dropped: data for no connection while SYN cookies are out"] == 3
    # once the cookies are stale, such a segment is answered as any other (RFC 9293)
    s.advance(200.0)
    s.sent.clear()
    s.inject("P.", 5001, cookie + 1, payload=b"late")
    s.expect("R", seq=cookie + 1)


def test_cookie_connection_survives_reordering_of_its_first_segments() -> None:
    """Regression: the client's second data segment overtook the first (the one whose
    seq - 1 is the ISN the cookie is bound to). It got a RST with seq = the client's
    rcv_nxt, which reset the client, and the SYN flood test failed under jitter."""
    s, cookie = cookie_script()
    s.inject("P.", 5001 + 1400, cookie + 1, payload=b"b" * 1400)   # arrives first
    s.expect_nothing()
    s.inject(".", 5001, cookie + 1, payload=b"a" * 1400)           # the cookie
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED and conn.read() == b"a" * 1400
    s.inject("P.", 5001 + 1400, cookie + 1, payload=b"b" * 1400)   # its retransmission
    assert conn.read() == b"b" * 1400


def test_cookie_ack_may_carry_data_and_fin() -> None:
    """A client that connects, sends a little and closes at once puts all of it in the
    segment that returns the cookie: it opens the connection and half-closes it."""
    s, cookie = cookie_script()
    s.inject("FP.", 5001, cookie + 1, payload=b"bye")
    conn = s.ep.connections[PEER]
    assert conn.read() == b"bye" and conn.eof_received
    assert conn.state == S.CLOSE_WAIT
    s.expect(".", seq=cookie + 1, ack=5001 + 3 + 1)


# --------------------------------------------------------------------------- RFC 5961

def established(config: Config = CFG) -> tuple[Script, Connection]:
    s = Script(config, listening=True, isns=(1000,))
    s.inject("S", 5000, options=wire.Options(mss=1400, wscale=7))
    s.expect("S.", seq=1000, ack=5001)
    s.inject(".", 5001, 1001, window=1000)
    conn = s.ep.connections[PEER]
    assert conn.state == S.ESTABLISHED
    return s, conn


def core(conn: Connection) -> tuple[object, ...]:
    return (conn.state, conn.snd_una, conn.snd_nxt, conn.snd_max, conn.snd_wnd, conn.rcv_nxt,
            conn.readable, conn.queued)


def test_ack_of_unsent_data_is_challenged_and_ignored() -> None:
    s, conn = established()
    conn.send(b"x" * 100)
    s.app()
    s.expect("P.", seq=1001, ack=5001, length=100)
    before = core(conn)
    s.inject(".", 5001, 1101 + 5000, window=2000)        # acks 5000 bytes never sent
    s.expect(".", seq=1101, ack=5001)                    # the challenge ACK
    s.inject("P.", 5001, 1101 + 1, window=2000, payload=b"evil")  # and with data
    s.expect(".", seq=1101, ack=5001)
    s.expect_nothing()
    assert core(conn) == before
    assert conn.stats().challenge_acks == 2
    # the 100 bytes are still unacknowledged: the retransmission timer resends them
    s.advance(conn.stats().rto)
    s.expect("P.", seq=1001, length=100)
    s.inject(".", 5001, 1101, window=2000)
    assert conn.snd_una == conn.snd_max and conn.state == S.ESTABLISHED


def test_challenge_acks_are_rate_limited() -> None:
    s, conn = established()
    for i in range(CHALLENGE_ACK_LIMIT + 50):
        s.inject(".", 5001, 1001 + 10_000 + i)
    assert conn.stats().challenge_acks == CHALLENGE_ACK_LIMIT
    assert peek.counter(conn, "challenge_acks_suppressed") == 50
    assert len(s.sent) == CHALLENGE_ACK_LIMIT
    s.sent.clear()
    s.advance(1.0)  # a new second: challenge ACKs again
    s.inject(".", 5001, 1001 + 99_999)
    s.expect(".", seq=1001, ack=5001)
    assert conn.stats().challenge_acks == CHALLENGE_ACK_LIMIT + 1
    assert conn.state == S.ESTABLISHED


def test_rst_in_window_is_challenged_exact_rst_resets() -> None:
    s, conn = established()
    before = core(conn)
    s.inject("R", 5001 + 1)
    s.expect(".", seq=1001, ack=5001)
    s.inject("R.", 5001 + 30_000, 1001)
    s.expect(".", seq=1001, ack=5001)
    s.inject("R", 5001 - 1)              # before the window: dropped silently
    s.inject("R", 5001 + (1 << 30))      # far beyond it
    s.expect_nothing()
    s.inject("S", 5001 + 77)             # SYN on an open connection: challenge too
    s.expect(".", seq=1001, ack=5001)
    assert core(conn) == before and conn.stats().challenge_acks == 3
    # the boundary: exactly rcv_nxt is the peer's reset, and it is believed
    s.inject("R", 5001)
    assert conn.state == S.CLOSED and isinstance(conn.error, ConnectionResetError)


@dataclass
class Forgery:
    kind: str
    data: bytes


KINDS = ("rst_in_window", "rst_old", "rst_beyond", "data_old", "data_beyond",
         "data_unsent_ack", "data_too_old_ack", "fin_unsent_ack", "syn_in_window",
         "no_ack_data")


def forge(kind: str, conn: Connection, rng: random.Random) -> bytes:
    """A segment from `conn`'s peer that a correct TCP must not accept."""
    wnd = conn.rcv_adv - conn.rcv_nxt
    payload = rng.randbytes(rng.randrange(1, 1400))
    ack = conn.snd_una + rng.randrange(0, max(conn.snd_max - conn.snd_una, 0) + 1)
    flags = wire.ACK | wire.PSH
    if kind == "rst_in_window":
        seq = conn.rcv_nxt + 1 + rng.randrange(max(wnd - 1, 1))
        flags, payload = rng.choice([wire.RST, wire.RST | wire.ACK]), b""
    elif kind == "rst_old":
        seq = conn.rcv_nxt - 1 - rng.randrange(1 << 20)
        flags, payload = wire.RST | wire.ACK, b""
    elif kind == "rst_beyond":
        seq = conn.rcv_adv + rng.randrange(1 << 20)
        flags, payload = wire.RST, b""
    elif kind == "data_old":
        seq = conn.rcv_nxt - len(payload) - rng.randrange(1 << 20)
    elif kind == "data_beyond":
        seq = conn.rcv_adv + rng.randrange(1 << 20)
    elif kind in ("data_unsent_ack", "fin_unsent_ack"):
        seq = conn.rcv_nxt + rng.randrange(max(wnd, 1))
        ack = conn.snd_max + 1 + rng.randrange(1 << 20)
        if kind == "fin_unsent_ack":
            flags |= wire.FIN
    elif kind == "data_too_old_ack":
        seq = conn.rcv_nxt + rng.randrange(max(wnd, 1))
        ack = conn.snd_una - max(conn.max_snd_wnd, 1) - 1 - rng.randrange(1 << 20)
    elif kind == "syn_in_window":
        seq = conn.rcv_nxt + rng.randrange(max(wnd, 1))
        flags = wire.SYN | rng.choice([0, wire.ACK])
    else:  # no_ack_data: in the window, but no ACK bit (RFC 9293: drop)
        seq = conn.rcv_nxt + rng.randrange(max(wnd, 1))
        flags = wire.PSH
    return wire.build_fast(conn.remote_port, conn.local_port, sq.wrap(seq), sq.wrap(ack),
                           flags, rng.randrange(1 << 16), b"", payload)


@pytest.mark.parametrize("seed", range(3))
def test_forged_rsts_and_data_do_not_break_a_transfer(seed: int) -> None:
    t = make_transfer(seed, LinkProfile(loss=0.02, duplicate=0.02, reorder=0.02, delay=0.005,
                                        jitter=0.001), MiB, 256 << 10)
    rng = random.Random(100 + seed)
    injected = {k: 0 for k in KINDS}
    t.connect()

    def stop() -> bool:
        client, server = t.client, t.server
        assert client is not None
        if server is not None and client.state == server.state == S.ESTABLISHED and \
                sum(injected.values()) < 4000:
            for _ in range(5):  # per event: the transfer must see 4,000 in all
                kind = rng.choice(KINDS)
                conn, ep, src = rng.choice([(server, t.server_ep, CLIENT),
                                            (client, t.client_ep, SERVER)])
                ep.receive_datagram(forge(kind, conn, rng), src, t.net.now)
                injected[kind] += 1
        return t.poll()

    t.net.run(until=300.0, stop=stop)
    t.check()
    # 5 per event until 4,000: the transfer outlasts them all, none is left out
    assert sum(injected.values()) == 4000 and min(injected.values()) > 100, injected
    assert t.client is not None and t.server is not None
    for conn in (t.client, t.server):
        assert conn.stats().challenge_acks > 0
        assert conn.stats().dropped_segments > 0


# --------------------------------------------------------------------------- amplification

def secure_syn() -> bytes:
    client = Endpoint(Config(server_key=_SERVER_PUB), PEER[1])
    client.connect(("10.0.0.1", 8000), 0.0)
    (syn, _), = client.datagrams_to_send(0.0)
    return syn


def plain_syn() -> bytes:
    client = Endpoint(Config(), PEER[1])
    client.connect(("10.0.0.1", 8000), 0.0)
    (syn, _), = client.datagrams_to_send(0.0)
    return syn


BARE_SYN = wire.build_fast(PEER[1], 8000, 12345, 0, wire.SYN, 1024, b"", b"")


@pytest.mark.parametrize("synack_retries", [0, 2, 6])
@pytest.mark.parametrize("which", ["plaintext", "bare", "secure"])
def test_anti_amplification_over_the_synack_schedule(which: str, synack_retries: int) -> None:
    config = CFG.replace(synack_retries=synack_retries)
    if which == "secure":
        config = config.replace(secret_key=_SERVER_PRIV)
        syn = secure_syn()
    else:
        syn = plain_syn() if which == "plaintext" else BARE_SYN
    s = Script(config, listening=True, seed=1)
    s.inject_raw(syn)
    s.advance(600.0)  # the whole SYN+ACK schedule, and then some
    out = [item for item in s.sent if item.addr == PEER]
    assert all(item.seg.flags == wire.SYN | wire.ACK for item in out)
    sent = sum(len(item.raw) for item in out)
    assert sent <= 3 * len(syn), (sent, len(syn))
    # as many SYN+ACKs as the schedule asks, unless the budget runs out first
    synack_len = len(out[0].raw)
    expected = min(1 + synack_retries, 3 * len(syn) // synack_len)
    assert len(out) == expected, (len(out), expected, len(syn), synack_len)
    if expected < 1 + synack_retries:
        assert s.ep.counters["amplification limit"] > 0
    assert s.ep.connections == {} and not s.ep.syn_queue  # the half-open entry expired
    if which != "bare":
        assert 1 + min(synack_retries, 2) <= len(out)  # the default schedule always fits


def test_anti_amplification_with_syn_cookies() -> None:
    """With the SYN queue full, every SYN is answered statelessly: still never more than
    3x what the address sent, however many SYNs it sends."""
    s = Script(CFG, listening=True, backlog=1, seed=1)
    s.inject_raw(BARE_SYN, peer=("10.9.9.9", 1))
    received = 0
    for i in range(50):
        syn = wire.build_fast(PEER[1], 8000, i * 7919, 0, wire.SYN, 1024, b"", b"")
        s.inject_raw(syn)
        received += len(syn)
    s.advance(600.0)
    sent = sum(len(item.raw) for item in s.sent if item.addr == PEER)
    assert s.ep.counters["SYN cookies sent"] == 50
    assert 0 < sent <= 3 * received


def test_validated_address_is_not_limited() -> None:
    """Once the handshake completes, the budget no longer applies: a full window of data
    goes out at once."""
    s, conn = established()
    conn.send(bytes(10 * 1400))
    s.app()
    data = [item for item in s.sent if item.seg.payload]
    assert len(data) == 10 and s.ep.counters["amplification limit"] == 0
