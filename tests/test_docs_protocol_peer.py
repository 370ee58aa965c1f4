"""docs/protocol.md is enough to write a compatible peer: here is one, from the page alone.

A client built only from what docs/protocol.md states (raw bytes on a plain UDP socket,
Noise IK and ChaCha20-Poly1305 from `cryptography`, nothing imported from utcp's wire
or crypto code) connects to a real utcp echo server on loopback, sends a line, reads
it back and closes: in plaintext; in secure mode (§3: msg1 with its timestamp); in
secure mode with the server under load, so that the connect needs its retry cookie
(§3.4); and in secure mode moving to a new UDP port mid-connection, so that the server
challenges the new address and the peer must answer (§3.6). If the page and the code
part ways, this fails.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

import utcp

TIMEOUT = 30.0  # per datagram awaited: generous for a loaded machine
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
HEADER = struct.Struct("!HHIIBBHHH")  # §2.1, big-endian
MESSAGE = b"hello from a peer written from the docs\n"


# ---------------------------------------------------------------------- §2: segments

@dataclass
class Seg:
    src: int
    dst: int
    seq: int
    ack: int
    flags: int
    window: int
    checksum: int
    options: bytes
    payload: bytes
    header: bytes  # with options, as received


def build(src: int, dst: int, seq: int, ack: int, flags: int, options: bytes = b"",
          payload: bytes = b"", window: int = 65535) -> bytes:
    assert len(options) % 4 == 0
    offset = (20 + len(options)) // 4
    return HEADER.pack(src, dst, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, offset << 4, flags,
                       window, 0, 0) + options + payload  # checksum sent as 0 (§2.3)


def parse(data: bytes) -> Seg:
    src, dst, seq, ack, off, flags, window, checksum, _ = HEADER.unpack_from(data)
    hlen = (off >> 4) * 4
    return Seg(src, dst, seq, ack, flags, window, checksum, data[20:hlen], data[hlen:],
               data[:hlen])


def option_list(options: bytes) -> list[tuple[int, bytes]]:
    """§2.4: kind, length, data; NOP is one byte, EOL ends the list."""
    found: list[tuple[int, bytes]] = []
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = options[i + 1]
        found.append((kind, options[i + 2:i + length]))
        i += length
    return found


def option_kinds(options: bytes) -> dict[int, bytes]:
    return dict(option_list(options))


def exids(options: bytes) -> dict[int, bytes]:
    """Option 254 (§3.7) by length: ExID and data."""
    return {len(data) + 2: data for kind, data in option_list(options) if kind == 254}


# ---------------------------------------------------------------------- §3: Noise IK

def _hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (HMAC-SHA256), written out as the Noise spec does."""
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    out2 = hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()
    return out1, out2


def _nonce(n: int) -> bytes:
    return b"\0" * 4 + n.to_bytes(8, "little")  # §3.3: Noise §5.1


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _sans_checksum(header: bytes) -> bytes:
    return header[:16] + b"\0\0" + header[18:]


class Noise:
    def __init__(self, server_public: bytes) -> None:
        name = b"Noise_IK_25519_ChaChaPoly_SHA256"
        assert len(name) == 32
        self.h = self.ck = name
        self.k = b""
        self.n = 0
        self.mix_hash(b"utcp secure mode v2")
        self.mix_hash(server_public)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = _hkdf2(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = ChaCha20Poly1305(self.k).encrypt(_nonce(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = ChaCha20Poly1305(self.k).decrypt(_nonce(self.n), ciphertext, self.h)
        self.n += 1
        self.mix_hash(ciphertext)
        return out


def tai64n() -> bytes:
    """§3.1: 2**62 + Unix seconds, then nanoseconds, both big-endian."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return struct.pack("!QI", (1 << 62) + seconds, nanos)


COOKIE_TAG = bytes((254, 16)) + b"\x75\x74"
PATH_TAG = bytes((254, 13)) + b"\x75\x74"


def with_offset(header: bytes) -> bytes:
    """The header with its data offset set to its length (§2.1)."""
    out = bytearray(header)
    out[12] = (len(out) // 4) << 4
    return bytes(out)


class Sealer:
    """§3.3: the counter option after the other options; header as associated data."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self.send, self.recv = ChaCha20Poly1305(send_key), ChaCha20Poly1305(recv_key)
        self.counter = 0

    def seal(self, datagram: bytes) -> bytes:
        hlen = (datagram[12] >> 4) * 4
        header = bytearray(datagram[:hlen])
        header += struct.pack("!BBHQ", 254, 12, 0x7574, self.counter)
        header[12] = ((hlen + 12) // 4) << 4
        sealed = self.send.encrypt(_nonce(self.counter), datagram[hlen:], bytes(header))
        self.counter += 1
        return bytes(header) + sealed

    def open(self, datagram: bytes) -> bytes:
        seg = parse(datagram)
        option = exids(seg.options)[12]  # §3.5: the counter option
        assert option[:2] == b"\x75\x74"
        counter = struct.unpack("!Q", option[2:])[0]
        plaintext = self.recv.decrypt(_nonce(counter), seg.payload, _sans_checksum(seg.header))
        return seg.header + plaintext


# ---------------------------------------------------------------------- the peer

def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


class Peer:
    def __init__(self, server: tuple[str, int], server_public: bytes | None) -> None:
        self.sock = udp_socket()
        self.port = self.sock.getsockname()[1]  # the header's source port, for good (§3.6)
        self.server = server
        self.server_public = server_public
        self.sealer: Sealer | None = None
        self.isn = int.from_bytes(os.urandom(4), "big")
        self.seen: list[Seg] = []
        self.cookie_replies = 0
        self.challenges = 0
        self.snd = self.rcv = 0

    async def send(self, datagram: bytes) -> None:
        if self.sealer is not None:
            datagram = self.sealer.seal(datagram)
        await asyncio.get_running_loop().sock_sendto(self.sock, datagram, self.server)

    async def receive(self) -> Seg:
        """The next segment for TCP; path challenges are answered on the way (§3.6)."""
        loop = asyncio.get_running_loop()
        for _ in range(100):  # a bounded number of datagrams
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), TIMEOUT)
            assert addr == self.server
            if self.sealer is not None:
                data = self.sealer.open(data)
            seg = parse(data)
            # §2.2 and §2.3: our UDP port in the destination port, checksum 0
            assert (seg.src, seg.dst, seg.checksum) == \
                (self.server[1], self.sock.getsockname()[1], 0), seg
            if self.sealer is not None and 13 in exids(seg.options):
                path = exids(seg.options)[13]  # ExID, type, 8-byte token
                assert path[:3] == b"\x75\x74\x02" and len(path) == 11, seg  # a challenge
                self.challenges += 1
                response = PATH_TAG + b"\x03" + path[3:] + b"\x01\x01\x01"
                await self.send(build(self.port, self.server[1], self.snd, self.rcv, ACK,
                                      response, window=0))
                continue  # the secure layer's own: not TCP's
            self.seen.append(seg)
            return seg
        raise AssertionError("only path challenges came")

    async def handshake(self) -> None:
        mss = struct.pack("!BBH", 2, 4, 1400)  # §2.4: MSS, and nothing else offered
        syn = build(self.port, self.server[1], self.isn, 0, SYN, mss)
        noise = e = static = None
        msg1 = b""
        if self.server_public is not None:  # §3.1: message 1 in the SYN's payload
            noise, e, static = Noise(self.server_public), X25519PrivateKey.generate(), \
                X25519PrivateKey.generate()
            rs = X25519PublicKey.from_public_bytes(self.server_public)
            noise.mix_hash(_sans_checksum(syn))
            noise.mix_hash(_raw(e.public_key()))
            noise.mix_key(e.exchange(rs))
            msg1 = _raw(e.public_key()) + noise.encrypt_and_hash(_raw(static.public_key()))
            noise.mix_key(static.exchange(rs))
            msg1 += noise.encrypt_and_hash(tai64n())
            assert len(msg1) == 108
        await self.send(syn + msg1)
        synack = await self.receive()
        if synack.flags & RST and synack.payload == b"" and len(synack.header) == 36 \
                and synack.options[:4] == COOKIE_TAG:
            # §3.4: a cookie reply; it must acknowledge exactly our SYN
            assert noise is not None and synack.flags & ACK and synack.ack == self.isn + 1
            self.seen.remove(synack)
            self.cookie_replies += 1
            # the same SYN and message 1, the cookie option appended last
            await self.send(with_offset(syn + synack.options) + msg1)
            synack = await self.receive()
        assert synack.flags & (SYN | ACK) == SYN | ACK and synack.ack == self.isn + 1, synack
        kinds = option_kinds(synack.options)
        assert 2 in kinds and not {3, 4, 8} & set(kinds)  # §2.4: only what the SYN offered
        if noise is not None and e is not None and static is not None:  # §3.2: message 2
            assert len(synack.payload) == 48
            re_pub = synack.payload[:32]
            re = X25519PublicKey.from_public_bytes(re_pub)
            noise.mix_hash(_sans_checksum(synack.header))
            noise.mix_hash(re_pub)
            noise.mix_key(e.exchange(re))
            noise.mix_key(static.exchange(re))
            noise.decrypt_and_hash(synack.payload[32:])  # raises if it does not authenticate
            self.sealer = Sealer(*_hkdf2(noise.ck, b""))
        else:
            assert synack.payload == b""
        self.snd = self.isn + 1
        self.rcv = synack.seq + 1

    async def exchange(self, message: bytes, *, move: bool = False) -> bytes:
        """Handshake, one request, read the echo until the server's FIN, close.

        With `move`, the FIN goes from a new UDP socket, as after a NAT rebinding (§3.6)."""
        await self.handshake()
        # §4.1: the handshake's last ACK carries the first data
        await self.send(build(self.port, self.server[1], self.snd, self.rcv, ACK | PSH, b"",
                              message))
        self.snd += len(message)
        if move:
            ack = await self.receive()  # the data is in before we move
            assert ack.ack == self.snd, ack
            self.sock.close()
            self.sock = udp_socket()
        await self.send(build(self.port, self.server[1], self.snd, self.rcv, ACK | FIN))  # §4.2
        self.snd += 1
        echoed = b""
        fin_seen = False
        for _ in range(100):  # a bounded number of datagrams
            seg = await self.receive()
            assert not seg.flags & RST, seg
            if seg.payload and seg.seq == self.rcv:
                echoed += seg.payload
                self.rcv += len(seg.payload)
            if seg.flags & FIN and seg.seq + len(seg.payload) == self.rcv:
                self.rcv += 1
                fin_seen = True
            if fin_seen or seg.payload:
                await self.send(build(self.port, self.server[1], self.snd, self.rcv, ACK))
            if fin_seen and seg.ack == self.snd:  # our FIN acknowledged: TIME_WAIT is ours
                break
        assert fin_seen
        return echoed

    def close(self) -> None:
        self.sock.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # until the peer's FIN
    await writer.drain()
    writer.close()


MODES = ["plaintext", "secure", "secure under load", "secure, moving"]


@pytest.fixture
async def server_and_key(request: pytest.FixtureRequest
                         ) -> AsyncIterator[tuple[tuple[str, int], bytes | None]]:
    public: bytes | None = None
    config = utcp.Config(pmtu_probing=False)
    if request.param != "plaintext":
        private = X25519PrivateKey.generate()
        secret = private.private_bytes(serialization.Encoding.Raw,
                                       serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())
        public = _raw(private.public_key())
        config = config.replace(secret_key=base64.b64encode(secret).decode())  # §3
    # a small backlog: one half-open handshake is then a quarter of the SYN queue,
    # "under load" (secure-mode.md), so that a SYN needs a retry cookie (§3.4)
    server = await utcp.start_server(_echo, "127.0.0.1", 0, config=config, backlog=4)
    try:
        yield ("127.0.0.1", server.sockets[0].getsockname()[1]), public
    finally:
        server.close()


@pytest.mark.parametrize("server_and_key", MODES, ids=MODES, indirect=True)
async def test_a_peer_written_from_the_docs_talks_to_utcp(
        server_and_key: tuple[tuple[str, int], bytes | None],
        request: pytest.FixtureRequest) -> None:
    address, public = server_and_key
    mode = request.node.callspec.params["server_and_key"]
    decoy = Peer(address, public)
    peer = Peer(address, public)
    try:
        if mode == "secure under load":
            # a handshake left half-open (its SYN+ACK seen, never acknowledged) puts the
            # server under load for the SYN+ACK's retransmissions, some 7 s
            await decoy.handshake()
        assert await peer.exchange(MESSAGE, move=mode == "secure, moving") == MESSAGE
    finally:
        peer.close()
        decoy.close()
    # nothing but what the page describes came back: SYN+ACK, ACKs, data, FIN
    assert all(seg.flags & ~(SYN | ACK | FIN | PSH) == 0 for seg in peer.seen), peer.seen
    assert peer.cookie_replies == (mode == "secure under load")
    assert (peer.challenges >= 1) == (mode == "secure, moving")
