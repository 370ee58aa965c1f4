"""The fuzz run: 500,000 mutated and random datagrams thrown at live endpoints while a
real transfer runs through them, half in plaintext mode and half in secure mode.

Each run moves 1 MiB client -> server and 512 KiB back through the seeded simulator
(with loss, duplication and reordering), and between slices of simulated time injects
batches of hostile datagrams straight into `receive_datagram` of the server (mostly) and
the client. The data is written in chunks paced by the injections, and the close waits
for the last injection, so the whole fuzzing happens in the middle of a live transfer.
Nothing may raise, both streams must arrive byte-exact (SHA-256), the close must be
orderly, and nothing may be left behind.

Plaintext mode authenticates nothing, so its forgeries stay outside what a correct TCP
accepts, as tests/test_endpoint_fuzz.py explains (a segment at exactly the right place
with an acceptable ACK *is* the peer as far as RFC 9293 can tell): segments wholly
outside the window, unacceptable ACKs, RSTs in the window but not at rcv_nxt, SYNs,
mutations of real segments that keep their bytes at their real place, malformed ones.

Secure mode gets everything: random bytes of any length, up to eight bits flipped
anywhere in real sealed segments, truncations, extensions, real headers over random
bodies, fresh counters over random ciphertext, exact replays, plaintext forgeries with
exactly the right sequence and acknowledgment numbers (RST at rcv_nxt included), and
replays and flips from strangers' addresses (which must never move the connection).
Every one of them must be counted as dropped (``secure: ...`` or ``malformed: ...``);
the only datagrams let through are byte-exact resends of the SYN and SYN+ACK, which
are indistinguishable from retransmissions and change nothing.

Measured on the 2-core test machine: about 8 s for the four runs (1.2 s per plaintext
run, 2 s per secure run), well inside the one-minute budget.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import deque
from dataclasses import dataclass, field

import pytest

from tests.netsim import Address, LinkProfile, Network
from tests.test_attacks import KINDS, forge
from tests.test_endpoint_fuzz import Flip, defang, flip
from utcp import crypto, wire
from utcp import seq as sq
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

S = State
SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
CFG = Config(msl=1.0, rto_min=0.05, rto_initial=0.2, recv_buffer=1 << 20)
PROFILE = LinkProfile(loss=0.02, duplicate=0.02, reorder=0.02, delay=0.005, jitter=0.001)
C2S, S2C = 1 << 20, 512 << 10
CHUNKS = 16
BATCH = 60            # datagrams injected per slice of simulated time
SLICE = 0.002         # seconds of simulated time between batches
PER_RUN = 125_000     # x 2 seeds x 2 modes = 500,000

_PRIV = "aGVsbG8gdXRjcCBmdXp6ZXIgc2VydmVyIGtleSAhISE="
_PUB = crypto.public_key_of(_PRIV)
NOT_DROPS = {"secure: handshakes accepted", "secure: connections moved to a new address"}
MOVED = "secure: connections moved to a new address"


def counted_drops(ep: Endpoint) -> int:
    return sum(n for reason, n in ep.counters.items()
               if reason.startswith("malformed")
               or (reason.startswith("secure: ") and reason not in NOT_DROPS))


def sans_checksum(data: bytes) -> bytes:
    return data[:16] + b"\0\0" + data[18:] if len(data) >= 18 else data


class Recorder:
    """An endpoint in the simulator that remembers the datagrams delivered to it."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.seen: deque[bytes] = deque(maxlen=400)
        self.handshake: list[bytes] = []   # the SYN / SYN+ACK it received

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) > 13 and data[13] & wire.SYN:
            if len(self.handshake) < 4:
                self.handshake.append(data)
        else:
            self.seen.append(data)
        self.ep.receive_datagram(data, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self.ep.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.ep.get_timer()

    def handle_timer(self, now: float) -> None:
        self.ep.handle_timer(now)


@dataclass
class Side:
    rec: Recorder
    peer: Address
    data: bytes
    conn: Connection | None = None
    written: int = 0
    got: bytearray = field(default_factory=bytearray)
    extra: list[Connection] = field(default_factory=list)  # anything else it accepted

    @property
    def ep(self) -> Endpoint:
        return self.rec.ep


def stranger(rng: random.Random) -> Address:
    return (f"10.9.{rng.randrange(4)}.{rng.randrange(1, 255)}", rng.randrange(1, 1 << 16))


# --------------------------------------------------------------------------- plaintext

def plain_mutant(side: Side, rng: random.Random) -> tuple[bytes, Address]:
    conn = side.conn
    assert conn is not None
    real = rng.choice(side.rec.seen) if side.rec.seen else b""
    r = rng.random()
    if r < 0.25 or not real:
        return forge(rng.choice(KINDS), conn, rng), side.peer
    if r < 0.45:                                        # safe bit flips of a real one
        choices = tuple(rng.randrange(10**6) for _ in range(rng.randint(1, 4)))
        return flip(Flip(0, choices), real), side.peer
    if r < 0.55:                                        # truncation (never keeps a FIN)
        if real[13] & wire.FIN:
            return real[:rng.randrange(min(len(real), (real[12] >> 4) * 4))], side.peer
        return real[:rng.randrange(len(real))], side.peer
    if r < 0.62:                                        # new options, same bytes, same place
        hlen = (real[12] >> 4) * 4
        options = rng.randbytes(rng.randrange(1, 41))
        options += bytes(-len(options) % 4)
        header = bytearray(real[:20])
        header[12] = ((20 + len(options)) // 4) << 4
        return bytes(header) + options + real[hlen:], side.peer
    if r < 0.72:                                        # exact replay
        return real, side.peer
    if r < 0.86:                                        # random header
        options = rng.randbytes(rng.choice((0, 4, 8, 12)))
        flags = rng.randrange(256)
        src, dst = conn.remote_port, conn.local_port
        if rng.random() < 0.3:
            src, dst = rng.randrange(1 << 16), rng.randrange(1 << 16)
        data = wire.build_fast(src, dst, rng.getrandbits(32), rng.getrandbits(32), flags,
                               rng.randrange(1 << 16), options,
                               rng.randbytes(rng.randrange(0, 200)))
        if rng.random() < 0.5:
            return data, stranger(rng)
        return defang(data, conn), side.peer
    garbage = rng.randbytes(rng.randrange(0, 100))     # random bytes
    if rng.random() < 0.5:
        return garbage, stranger(rng)
    return defang(garbage, conn), side.peer


# --------------------------------------------------------------------------- secure

_COUNTER = struct.Struct("!BBHQ")


def flip_some(data: bytes, rng: random.Random, most: int = 8) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, most)):
        bit = rng.randrange(len(b) * 8)
        b[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(b)


def secure_mutant(side: Side, rng: random.Random) -> tuple[bytes, Address, bool]:
    """(datagram, from, whether it must be counted as dropped)."""
    conn = side.conn
    assert conn is not None
    seen = side.rec.seen
    real = rng.choice(seen) if seen else b""
    r = rng.random()
    if r < 0.10 or not real:                            # random bytes, any length
        return rng.randbytes(rng.randrange(0, 1500)), side.peer, True
    if r < 0.35:                                        # flips anywhere
        return flip_some(real, rng), side.peer, True
    if r < 0.48:                                        # exact replay
        return real, side.peer, True
    if r < 0.55:                                        # truncated
        return real[:rng.randrange(len(real))], side.peer, True
    if r < 0.59:                                        # extended
        return real + rng.randbytes(rng.randint(1, 64)), side.peer, True
    if r < 0.66:                                        # real header, random body
        hlen = min((real[12] >> 4) * 4, len(real))
        return real[:hlen] + rng.randbytes(len(real) - hlen), side.peer, True
    if r < 0.72:                                        # a fresh counter, random ciphertext
        counter = _COUNTER.pack(254, crypto.COUNTER_OPTION_LEN, crypto.EXID,
                                rng.randrange(1 << 20, 1 << 40))
        data = wire.build_fast(conn.remote_port, conn.local_port, sq.wrap(conn.rcv_nxt),
                               sq.wrap(conn.snd_una), wire.ACK | wire.PSH, 512,
                               counter, rng.randbytes(rng.randrange(16, 1416)))
        return data, side.peer, True
    if r < 0.82:                                        # plaintext, exactly right
        flags = rng.choice((wire.ACK | wire.PSH, wire.RST, wire.RST | wire.ACK,
                            wire.ACK | wire.FIN, wire.ACK))
        payload = rng.randbytes(rng.randrange(1, 1400)) if flags & wire.PSH else b""
        ack = conn.snd_una + rng.randrange(conn.snd_max - conn.snd_una + 1)
        data = wire.build_fast(conn.remote_port, conn.local_port, sq.wrap(conn.rcv_nxt),
                               sq.wrap(ack), flags, 512, b"", payload)
        return data, side.peer, True
    if r < 0.93:                                        # strangers: a replay or a flip
        data = real if rng.random() < 0.5 else flip_some(real, rng, 3)
        return data, stranger(rng), True
    if r < 0.94:                                        # a stranger's SYN with a fake msg1
        data = wire.build_fast(rng.randrange(1 << 16), conn.local_port, rng.getrandbits(32),
                               0, wire.SYN, 512, b"\x02\x04\x05\x78",
                               rng.randbytes(crypto.MSG1_LEN))
        return data, stranger(rng), True
    if r < 0.95 and side.rec.handshake:                 # the handshake message again
        original = rng.choice(side.rec.handshake)
        data = original if rng.random() < 0.5 else flip_some(original, rng, 2)
        resend = sans_checksum(data) == sans_checksum(original)
        return data, side.peer, not resend
    header = wire.build_fast(conn.remote_port, conn.local_port, rng.getrandbits(32),
                             rng.getrandbits(32), rng.randrange(256), rng.randrange(1 << 16),
                             rng.randbytes(rng.choice((0, 4, 12))),
                             rng.randbytes(rng.randrange(0, 300)))
    return header, (side.peer if rng.random() < 0.7 else stranger(rng)), True


# --------------------------------------------------------------------------- the run

@dataclass
class Outcome:
    injected: int
    malformed_sent: dict[str, int]
    server: Side
    client: Side


def fuzz_run(secure: bool, seed: int, target: int) -> Outcome:
    rng = random.Random(seed)
    net = Network(seed, PROFILE)
    server_cfg = CFG.replace(secret_key=_PRIV) if secure else CFG
    client_cfg = CFG.replace(server_key=_PUB) if secure else CFG
    srec = Recorder(Endpoint(server_cfg, SERVER[1], listening=True,
                             rng=random.Random(rng.getrandbits(64))))
    crec = Recorder(Endpoint(client_cfg, CLIENT[1], rng=random.Random(rng.getrandbits(64))))
    net.add(SERVER, srec)
    net.add(CLIENT, crec)
    server = Side(srec, CLIENT, rng.randbytes(S2C))
    client = Side(crec, SERVER, rng.randbytes(C2S))
    client.conn = crec.ep.connect(SERVER, net.now)
    injected = [0]
    malformed_sent = {"server": 0, "client": 0}

    def write_chunks(side: Side) -> None:
        conn = side.conn
        if conn is None or conn.state not in (S.ESTABLISHED, S.CLOSE_WAIT, S.SYN_SENT):
            return
        size = len(side.data) // CHUNKS
        while side.written < len(side.data) and injected[0] >= (
                side.written // size) * target // CHUNKS:
            conn.send(side.data[side.written:side.written + size])
            side.written += size

    def poll() -> bool:
        while (conn := srec.ep.accept()) is not None:
            if server.conn is None:
                server.conn = conn
            else:
                server.extra.append(conn)  # a stranger that got lucky: not ours
                conn.abort()
        for side in (client, server):
            write_chunks(side)
            if side.conn is not None:
                side.got += side.conn.read()
        c, s = client.conn, server.conn
        assert c is not None
        if (c.state == S.ESTABLISHED and injected[0] >= target
                and client.written == len(client.data) and len(client.got) == len(server.data)):
            c.close()
        if s is not None and s.state == S.CLOSE_WAIT and server.written == len(server.data):
            s.close()
        return c.state == S.CLOSED and s is not None and s.state == S.CLOSED

    while not poll():
        assert net.now < 600.0, (client.conn and client.conn.state,
                                 server.conn and server.conn.state, injected[0])
        c, s = client.conn, server.conn
        if (injected[0] < target and s is not None and c.state == S.ESTABLISHED
                and s.state == S.ESTABLISHED):
            for _ in range(min(BATCH, target - injected[0])):
                side, name = (server, "server") if rng.random() < 0.75 else (client, "client")
                ep = side.ep
                if secure:
                    data, addr, must_count = secure_mutant(side, rng)
                    before = counted_drops(ep)
                    ep.receive_datagram(data, addr, net.now)
                    if must_count:
                        assert counted_drops(ep) > before, (name, data.hex(), ep.counters)
                else:
                    data, addr = plain_mutant(side, rng)
                    try:
                        wire.parse(data)
                    except wire.MalformedSegment:
                        malformed_sent[name] += 1
                    ep.receive_datagram(data, addr, net.now)
                injected[0] += 1
        net.run(until=net.now + SLICE, stop=poll)

    # strangers' half-open connections expire; then nothing is left anywhere
    net.run(until=net.now + 30.0)
    for ep in (srec.ep, crec.ep):
        assert ep.connections == {} and ep.get_timer() is None, ep.connections
    assert net.stats.stuck_timers == 0
    return Outcome(injected[0], malformed_sent, server, client)


def check(out: Outcome, target: int) -> None:
    server, client = out.server, out.client
    assert out.injected == target
    assert server.conn is not None and client.conn is not None
    assert server.conn.error is None and client.conn.error is None
    assert len(server.got) == len(client.data)
    assert hashlib.sha256(server.got).hexdigest() == hashlib.sha256(client.data).hexdigest()
    assert len(client.got) == len(server.data)
    assert hashlib.sha256(client.got).hexdigest() == hashlib.sha256(server.data).hexdigest()


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_plaintext_endpoint_mid_transfer(seed: int) -> None:
    out = fuzz_run(False, seed, PER_RUN)
    check(out, PER_RUN)
    for name, side in (("server", out.server), ("client", out.client)):
        malformed = sum(n for r, n in side.ep.counters.items() if r.startswith("malformed"))
        assert malformed == out.malformed_sent[name], (name, side.ep.counters)
        assert side.conn is not None and side.conn.stats().challenge_acks > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_secure_endpoint_mid_transfer(seed: int) -> None:
    out = fuzz_run(True, seed, PER_RUN)
    check(out, PER_RUN)
    assert not out.server.extra
    for side in (out.server, out.client):
        ep = side.ep
        assert ep.counters[MOVED] == 0, ep.counters       # nothing moved the connection
        assert ep.counters["secure: replayed segment"] > 1000, ep.counters
        assert ep.counters["secure: segment does not authenticate"] > 1000, ep.counters
        assert side.conn is not None and side.conn.stats().challenge_acks == 0


def test_atheris_harness_smoke() -> None:
    """The optional atheris harness (tests/fuzz/atheris_endpoint.py) runs without atheris
    too: a few thousand random inputs through its entry point, so it cannot rot."""
    from tests.fuzz import atheris_endpoint

    rng = random.Random(0)
    for _ in range(3000):
        atheris_endpoint.fuzz_one_input(rng.randbytes(rng.randrange(1, 200)))
    assert atheris_endpoint.HARNESS.datagrams >= 3000
