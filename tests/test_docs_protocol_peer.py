"""docs/protocol.md is enough to write a compatible peer: here is one, from the page alone.

A client built only from what docs/protocol.md states (raw bytes on a plain UDP socket,
Noise IK and ChaCha20-Poly1305 from `cryptography`, nothing imported from utcp's wire
or crypto code) connects to a real utcp echo server on loopback, sends a line, reads
it back and closes; once in plaintext and once in secure mode. If the page and the code
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


def option_kinds(options: bytes) -> dict[int, bytes]:
    """§2.4: kind, length, data; NOP is one byte, EOL ends the list."""
    found: dict[int, bytes] = {}
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = options[i + 1]
        found[kind] = options[i + 2:i + length]
        i += length
    return found


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
        self.mix_hash(b"utcp secure mode v1")
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
        counter = struct.unpack("!Q", option_kinds(seg.options)[254][2:])[0]
        assert option_kinds(seg.options)[254][:2] == b"\x75\x74"
        plaintext = self.recv.decrypt(_nonce(counter), seg.payload, _sans_checksum(seg.header))
        return seg.header + plaintext


# ---------------------------------------------------------------------- the peer

class Peer:
    def __init__(self, server: tuple[str, int], server_public: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = server
        self.server_public = server_public
        self.sealer: Sealer | None = None
        self.isn = int.from_bytes(os.urandom(4), "big")
        self.seen: list[Seg] = []

    async def send(self, datagram: bytes) -> None:
        if self.sealer is not None:
            datagram = self.sealer.seal(datagram)
        await asyncio.get_running_loop().sock_sendto(self.sock, datagram, self.server)

    async def receive(self) -> Seg:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), TIMEOUT)
        assert addr == self.server
        if self.sealer is not None:
            data = self.sealer.open(data)
        seg = parse(data)
        # §2.2 and §2.3: our UDP port in the destination port, checksum 0
        assert (seg.src, seg.dst, seg.checksum) == (self.server[1], self.port, 0), seg
        self.seen.append(seg)
        return seg

    async def exchange(self, message: bytes) -> bytes:
        """Handshake, one request, read the echo until the server's FIN, close."""
        mss = struct.pack("!BBH", 2, 4, 1400)  # §2.4: MSS, and nothing else offered
        syn = build(self.port, self.server[1], self.isn, 0, SYN, mss)
        noise = e = static = None
        if self.server_public is not None:  # §3.1: message 1 in the SYN's payload
            noise, e, static = Noise(self.server_public), X25519PrivateKey.generate(), \
                X25519PrivateKey.generate()
            rs = X25519PublicKey.from_public_bytes(self.server_public)
            noise.mix_hash(_sans_checksum(syn))
            noise.mix_hash(_raw(e.public_key()))
            noise.mix_key(e.exchange(rs))
            msg1 = _raw(e.public_key()) + noise.encrypt_and_hash(_raw(static.public_key()))
            noise.mix_key(static.exchange(rs))
            msg1 += noise.encrypt_and_hash(b"")
            assert len(msg1) == 96
            syn += msg1
        await self.send(syn)
        synack = await self.receive()
        assert synack.flags & (SYN | ACK) == SYN | ACK and synack.ack == self.isn + 1
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
        snd = self.isn + 1
        rcv = synack.seq + 1
        # §4.1: the handshake's last ACK carries the first data
        await self.send(build(self.port, self.server[1], snd, rcv, ACK | PSH, b"", message))
        snd += len(message)
        await self.send(build(self.port, self.server[1], snd, rcv, ACK | FIN))  # §4.2
        snd += 1
        echoed = b""
        fin_seen = False
        for _ in range(100):  # a bounded number of datagrams
            seg = await self.receive()
            assert not seg.flags & RST, seg
            if seg.payload and seg.seq == rcv:
                echoed += seg.payload
                rcv += len(seg.payload)
            if seg.flags & FIN and seg.seq + len(seg.payload) == rcv:
                rcv += 1
                fin_seen = True
            if fin_seen or seg.payload:
                await self.send(build(self.port, self.server[1], snd, rcv, ACK))
            if fin_seen and seg.ack == snd:  # our FIN acknowledged too: TIME_WAIT is ours
                break
        assert fin_seen
        return echoed

    def close(self) -> None:
        self.sock.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # until the peer's FIN
    await writer.drain()
    writer.close()


@pytest.fixture
async def server_and_key(request: pytest.FixtureRequest
                         ) -> AsyncIterator[tuple[tuple[str, int], bytes | None]]:
    public: bytes | None = None
    config = utcp.Config(pmtu_probing=False)
    if request.param:
        private = X25519PrivateKey.generate()
        secret = private.private_bytes(serialization.Encoding.Raw,
                                       serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())
        public = _raw(private.public_key())
        config = config.replace(secret_key=base64.b64encode(secret).decode())  # §3
    server = await utcp.start_server(_echo, "127.0.0.1", 0, config=config)
    try:
        yield ("127.0.0.1", server.sockets[0].getsockname()[1]), public
    finally:
        server.close()


@pytest.mark.parametrize("server_and_key", [False, True], ids=["plaintext", "secure"],
                         indirect=True)
async def test_a_peer_written_from_the_docs_talks_to_utcp(
        server_and_key: tuple[tuple[str, int], bytes | None]) -> None:
    address, public = server_and_key
    peer = Peer(address, public)
    try:
        assert await peer.exchange(MESSAGE) == MESSAGE
    finally:
        peer.close()
    # nothing but what the page describes came back: SYN+ACK, ACKs, data, FIN
    assert all(seg.flags & ~(SYN | ACK | FIN | PSH) == 0 for seg in peer.seen), peer.seen
