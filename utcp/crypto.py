"""Secure mode: a Noise IK handshake inside SYN and SYN+ACK, then AEAD on every segment.

The pattern is Noise_IK_25519_ChaChaPoly_SHA256 (noiseprotocol.org, rev. 34), the one
WireGuard builds on: the client knows the server's static key in advance, so

    SYN      payload = msg1: e, es, s, ss   (client ephemeral, client static encrypted,
                                     then a TAI64N timestamp as the encrypted payload)
    SYN+ACK  payload = msg2: e, ee, se      (server ephemeral)

and both sides hold transport keys after those two messages: no extra round trip.
Each message also hashes the clear TCP header it travels in, so the handshake
authenticates the SYN and SYN+ACK headers (ports, ISNs, MSS, window scale) too.

After the handshake every segment is `header || ChaCha20-Poly1305(payload) || tag`,
with the clear header (which carries an explicit 64-bit send counter in option 254,
RFC 6994) as associated data. The counter is the AEAD nonce, so a retransmission is
sealed afresh and no nonce repeats; the receiver keeps a sliding window of counters
seen, so a replayed segment is dropped like a forged one.

Every primitive comes from `cryptography`; this module only composes them as Noise says.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import struct
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from utcp.isn import ISN_PORTS, keyed_isn

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_SHA256"
PROLOGUE = b"utcp secure mode v2"   # v2: msg1 carries a timestamp (v1 peers fail msg1)
EXID = 0x7574          # RFC 6994 experiment ID carried in option 254 ("ut")
DHLEN = 32
TAGLEN = 16
TIMESTAMP_LEN = 12                             # TAI64N, as WireGuard's handshake
MSG1_LEN = DHLEN + (DHLEN + TAGLEN) + TIMESTAMP_LEN + TAGLEN  # e, enc(s), enc(timestamp)
MSG2_LEN = DHLEN + TAGLEN                      # e, enc(empty payload)
COUNTER_OPTION_LEN = 12                        # kind, len, ExID, 64-bit counter
REPLAY_WINDOW = 4096

_RAW = serialization.Encoding.Raw
_PUB_RAW = serialization.PublicFormat.Raw
_PRIV_RAW = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()
_COUNTER_OPTION = struct.Struct("!BBHQ")
_ISN_PORTS = ISN_PORTS  # F's input starts with a NUL: see utcp.isn


class SecureError(Exception):
    """A handshake or segment that does not authenticate; `reason` is for counters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------- keys

def generate_keypair() -> tuple[str, str]:
    """A new static key pair as (private, public), each a 44-character base64 string."""
    private = X25519PrivateKey.generate()
    return (_b64(private.private_bytes(_RAW, _PRIV_RAW, _NO_ENC)),
            _b64(private.public_key().public_bytes(_RAW, _PUB_RAW)))


def public_key_of(private_b64: str) -> str:
    return _b64(load_private(private_b64).public_key().public_bytes(_RAW, _PUB_RAW))


def load_private(text: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(_decode_key(text, "private"))


def load_public(text: str) -> bytes:
    raw = _decode_key(text, "public")
    check_public(raw)
    return raw


def check_public(raw: bytes) -> None:
    """Refuse a public key whose DH result is all zeros: the all-zero key and the other
    low-order points (RFC 7748 6.1). Any handshake with one has a shared secret every
    attacker knows. Rather than list the points, ask the primitive: X25519 with a
    clamped scalar maps every point of order dividing 8 (on the curve or its twist, in
    any encoding) to zero, and `cryptography` refuses a zero result."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise ValueError("a low-order public key (its DH result is all zeros)") from None


def _decode_key(text: str, kind: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"not a base64 {kind} key: {text!r}") from None
    if len(raw) != DHLEN:
        raise ValueError(f"a {kind} key is {DHLEN} bytes, this one is {len(raw)}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise SecureError("bad public key") from None  # e.g. a low-order point


# ---------------------------------------------------------------------- Noise symmetric state

def _hash(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    # Noise §4.3's HKDF is RFC 5869 HKDF with salt = chaining key and empty info
    out = HKDF(algorithm=hashes.SHA256(), length=64, salt=ck, info=b"").derive(ikm)
    return out[:32], out[32:]


def _nonce(n: int) -> bytes:
    return b"\0\0\0\0" + n.to_bytes(8, "little")  # Noise §5.1 for ChaChaPoly


class _SymmetricState:
    def __init__(self) -> None:
        self.h = PROTOCOL_NAME if len(PROTOCOL_NAME) == 32 else _hash(PROTOCOL_NAME)
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, k = _hkdf2(self.ck, ikm)
        self.k, self.n = k, 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.k is not None
        ciphertext = ChaCha20Poly1305(self.k).encrypt(_nonce(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        assert self.k is not None
        try:
            plaintext = ChaCha20Poly1305(self.k).decrypt(_nonce(self.n), ciphertext, self.h)
        except InvalidTag:
            raise SecureError("handshake does not authenticate") from None
        self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


def _start(responder_static_pub: bytes) -> _SymmetricState:
    ss = _SymmetricState()
    ss.mix_hash(PROLOGUE)
    ss.mix_hash(responder_static_pub)  # the pre-message "<- s"
    return ss


def _header_for_hash(header: bytes) -> bytes:
    """The header as both ends see it: the checksum field may be rewritten on the way."""
    return header[:16] + b"\0\0" + header[18:]


# ---------------------------------------------------------------------- handshake

_last_timestamp = 0


def tai64n() -> bytes:
    """Now as TAI64N (WireGuard's handshake timestamp): 8 bytes of 2**62 + seconds, 4 of
    nanoseconds, big-endian, so newer compares greater as bytes. The responder keeps
    the greatest it has seen per client key and drops a msg1 that is not newer: a
    replayed SYN. Strictly increasing within the process, so two connects in the same
    nanosecond (or a clock step back) still give fresh handshakes; across restarts the
    wall clock must not go back, as for WireGuard."""
    global _last_timestamp
    now = max(time.time_ns(), _last_timestamp + 1)
    _last_timestamp = now
    seconds, nanos = divmod(now, 1_000_000_000)
    return struct.pack("!QI", (1 << 62) + seconds, nanos)


class Initiator:
    """The client's side. `server_public` is pinned: any other server fails msg2."""

    def __init__(self, static_private: X25519PrivateKey, server_public: bytes) -> None:
        self._s = static_private
        self._rs = server_public
        self._e = X25519PrivateKey.generate()
        self._ss = _start(server_public)
        self._msg1: bytes | None = None

    def write_msg1(self, syn_header: bytes) -> bytes:
        if self._msg1 is not None:
            return self._msg1  # a retransmitted SYN carries the same message
        ss = self._ss
        ss.mix_hash(_header_for_hash(syn_header))
        e_pub = self._e.public_key().public_bytes(_RAW, _PUB_RAW)
        ss.mix_hash(e_pub)                                    # -> e
        ss.mix_key(_dh(self._e, self._rs))                    # es
        s_pub = self._s.public_key().public_bytes(_RAW, _PUB_RAW)
        enc_s = ss.encrypt_and_hash(s_pub)                    # s
        ss.mix_key(_dh(self._s, self._rs))                    # ss
        self._msg1 = e_pub + enc_s + ss.encrypt_and_hash(tai64n())
        return self._msg1

    def read_msg2(self, synack_header: bytes, msg2: bytes) -> Session:
        if len(msg2) != MSG2_LEN:
            raise SecureError("SYN+ACK without a secure handshake")
        # work on a copy: a forged SYN+ACK must not spoil the state for the real one
        ss = _SymmetricState()
        ss.h, ss.ck, ss.k, ss.n = self._ss.h, self._ss.ck, self._ss.k, self._ss.n
        ss.mix_hash(_header_for_hash(synack_header))
        re = msg2[:DHLEN]
        ss.mix_hash(re)                                       # <- e
        ss.mix_key(_dh(self._e, re))                          # ee
        ss.mix_key(_dh(self._s, re))                          # se
        ss.decrypt_and_hash(msg2[DHLEN:])
        k_send, k_recv = ss.split()
        return Session(k_send, k_recv)


class Responder:
    """The server's side: learns and checks the client's static key from msg1."""

    def __init__(self, static_private: X25519PrivateKey) -> None:
        self._s = static_private
        self._s_pub = static_private.public_key().public_bytes(_RAW, _PUB_RAW)
        self._e = X25519PrivateKey.generate()
        self._ss = _start(self._s_pub)
        self._re = b""
        self.client_public = b""
        self.timestamp = b""    # msg1's TAI64N: newer than the last one from this key?
        self._msg2: bytes | None = None
        self.session: Session | None = None

    def read_msg1(self, syn_header: bytes, msg1: bytes) -> bytes:
        """Check msg1; returns the client's static public key (raw) for the allow list."""
        if len(msg1) != MSG1_LEN:
            raise SecureError("SYN without a secure handshake")
        ss = self._ss
        ss.mix_hash(_header_for_hash(syn_header))
        self._re = msg1[:DHLEN]
        ss.mix_hash(self._re)                                 # -> e
        ss.mix_key(_dh(self._s, self._re))                    # es
        self.client_public = ss.decrypt_and_hash(msg1[DHLEN:DHLEN + DHLEN + TAGLEN])  # s
        ss.mix_key(_dh(self._s, self.client_public))          # ss
        self.timestamp = ss.decrypt_and_hash(msg1[DHLEN + DHLEN + TAGLEN:])
        return self.client_public

    def write_msg2(self, synack_header: bytes) -> bytes:
        if self._msg2 is not None:
            return self._msg2  # a retransmitted SYN+ACK carries the same message
        ss = self._ss
        ss.mix_hash(_header_for_hash(synack_header))
        e_pub = self._e.public_key().public_bytes(_RAW, _PUB_RAW)
        ss.mix_hash(e_pub)                                    # <- e
        ss.mix_key(_dh(self._e, self._re))                    # ee
        ss.mix_key(_dh(self._e, self.client_public))          # se
        self._msg2 = e_pub + ss.encrypt_and_hash(b"")
        k_recv, k_send = ss.split()
        self.session = Session(k_send, k_recv)
        return self._msg2


# ---------------------------------------------------------------------- retry cookies

COOKIE_LEN = 12            # 96-bit MAC: an online forgery needs ~2**95 tries
# kind, len, ExID, cookie: 16, unlike the counter's 12. Annotated: utcp.isn puts this
# module in utcp's import cycle, where mypyc's build cannot infer it in time for secure.py
COOKIE_OPTION_LEN: int = 4 + COOKIE_LEN
_RETRY_PERIOD = 10.0       # seconds per secret epoch; a cookie lives 10 to 20 s


class RetryCookies:
    """Stateless proof that a SYN's source address receives what is sent to it.

    Under load a secure server answers a SYN with a cookie instead of doing the two
    X25519 operations msg1 costs (WireGuard's cookie reply, QUIC's Retry, RFC 9000
    8.1.2): cookie = keyed BLAKE2s(secret; epoch, address, port), 12 bytes. The client
    repeats its SYN with the cookie; a flood from spoofed addresses never sees one. It is
    bound to the address and not to the SYN, so a client may resend the same msg1.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        # one keyed state, copied per cookie: made for every SYN under load, so as cheap
        # as the SYN-cookie MAC (HandshakeSecrets), not an HMAC object built each time
        self._key = hashlib.blake2s(key=secret if secret is not None else os.urandom(32),
                                    digest_size=COOKIE_LEN)

    def _mac(self, epoch: int, addr: tuple[str, int]) -> bytes:
        mac = self._key.copy()
        mac.update(struct.pack("!QH", epoch & 0xFFFFFFFFFFFFFFFF, addr[1] & 0xFFFF))
        mac.update(addr[0].encode())
        return mac.digest()

    def make(self, addr: tuple[str, int], now: float) -> bytes:
        return self._mac(int(now // _RETRY_PERIOD), addr)

    def check(self, addr: tuple[str, int], cookie: bytes, now: float) -> bool:
        epoch = int(now // _RETRY_PERIOD)
        return any(hmac.compare_digest(self._mac(e, addr), cookie)
                   for e in (epoch, epoch - 1))


# ---------------------------------------------------------------------- transport

class Session:
    """Seal and open segments of one connection, one key and counter per direction."""

    __slots__ = ("_highest", "_recv", "_seen", "_send", "_send_counter", "opened", "rejected")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._send_counter = 0
        self._highest = -1     # highest counter accepted
        self._seen = 0         # bitmap: bit i set = counter (highest - i) accepted
        self.opened = 0
        self.rejected = 0

    def seal(self, datagram: bytes) -> bytes:
        """Insert the counter option into the header, encrypt the payload behind it."""
        hlen = (datagram[12] >> 4) * 4
        if hlen + COUNTER_OPTION_LEN > 60:
            raise SecureError("no room in the header for the counter option")
        counter = self._send_counter
        self._send_counter += 1
        header = bytearray(datagram[:hlen])
        header += _COUNTER_OPTION.pack(254, COUNTER_OPTION_LEN, EXID, counter)
        header[12] = ((hlen + COUNTER_OPTION_LEN) // 4) << 4 | (header[12] & 0x0F)
        header[16:18] = b"\0\0"
        sealed = self._send.encrypt(_nonce(counter), datagram[hlen:], bytes(header))
        return bytes(header) + sealed

    def open(self, datagram: bytes | bytearray | memoryview) -> bytes:
        """Authenticate and decrypt; returns the header followed by the plaintext."""
        data = bytes(datagram)
        if len(data) < 20 + COUNTER_OPTION_LEN + TAGLEN:
            raise SecureError("too short for a sealed segment")
        hlen = (data[12] >> 4) * 4
        if hlen < 20 + COUNTER_OPTION_LEN or hlen > len(data) - TAGLEN:
            raise SecureError("no counter option")
        counter = _find_counter(data, hlen)
        if counter is None:
            raise SecureError("no counter option")
        if not self._fresh(counter):
            self.rejected += 1
            raise SecureError("replayed segment")
        header = data[:16] + b"\0\0" + data[18:hlen]
        try:
            plaintext = self._recv.decrypt(_nonce(counter), data[hlen:], header)
        except InvalidTag:
            self.rejected += 1
            raise SecureError("segment does not authenticate") from None
        self._remember(counter)
        self.opened += 1
        return header + plaintext

    @property
    def highest(self) -> int:
        """The highest counter accepted so far (-1 before any)."""
        return self._highest

    def _fresh(self, counter: int) -> bool:
        if counter > self._highest:
            return True
        age = self._highest - counter
        return age < REPLAY_WINDOW and not (self._seen >> age) & 1

    def _remember(self, counter: int) -> None:
        if counter > self._highest:
            shift = counter - self._highest
            self._seen = ((self._seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._highest = counter
        else:
            self._seen |= 1 << (self._highest - counter)


def _find_counter(data: bytes, hlen: int) -> int | None:
    i = 20
    while i < hlen:
        kind = data[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if i + 1 >= hlen:
            return None
        length = data[i + 1]
        if length < 2 or i + length > hlen:
            return None
        if kind == 254 and length == COUNTER_OPTION_LEN:
            _, _, exid, counter = _COUNTER_OPTION.unpack_from(data, i)
            if exid == EXID:
                return int(counter)
        i += length
    return None


# ---------------------------------------------------------------------- keyed ISNs, SYN cookies

# MSS values a cookie can carry (3 bits): the largest entry not above the peer's MSS is
# kept, as Linux does with its own table.
COOKIE_MSS = (536, 1200, 1220, 1360, 1400, 1440, 1452, 8960)
_COOKIE_PERIOD = 64.0   # seconds per step of the cookie clock (RFC 4987 §3.6)
COOKIE_LIFETIME = 2 * _COOKIE_PERIOD  # a cookie is accepted this long after it was sent at most
# Where the SYN's options go. With the timestamp option (RFC 7323) they ride in the low
# byte of our SYN+ACK's TSval, which the client echoes in TSecr, as Linux's
# cookie_init_timestamp does: the whole 32-bit ISN is then MAC. Without it, the ISN
# carries the MSS index in its top 3 bits and 29 bits of MAC; window scaling and SACK are
# not offered then (as Linux: the cookie has no room to remember the peer's shift).
TS_OPTION_BITS = 8
_TS_OPTION_MASK = (1 << TS_OPTION_BITS) - 1
COOKIE_MAC_BITS_NO_TS = 29
_NO_WSCALE = 15


@dataclasses.dataclass(frozen=True, slots=True)
class CookieFacts:
    """What a returning cookie tells about the SYN it answered."""

    mss: int
    wscale: int | None
    sack: bool
    timestamps: bool


class HandshakeSecrets:
    """Per-endpoint secret behind keyed ISNs (RFC 6528) and SYN cookies (RFC 4987)."""

    def __init__(self, secret: bytes | None = None) -> None:
        import os

        self._secret = secret if secret is not None else os.urandom(32)
        # keyed BLAKE2s is a MAC (RFC 7693 §2.5); copying the keyed state skips the key
        # block per call: ~2.4 us where HMAC-SHA256 over repr() took ~7, which matters
        # under a flood of ACKs while cookies are out (two MACs per datagram)
        self._mac = hashlib.blake2s(key=self._secret, digest_size=4)

    @property
    def isn_key(self) -> hashlib.blake2s:
        """The keyed MAC behind `isn`, for the endpoint's compiled call of F
        (`utcp.isn.keyed_isn`): copied there, never updated."""
        return self._mac

    def _prf(self, tag: str, peer: tuple[str, int], *numbers: int) -> int:
        mac = self._mac.copy()
        mac.update(f"{tag}|{peer[0]}|{peer[1]}|{'|'.join(map(str, numbers))}".encode())
        return int.from_bytes(mac.digest(), "big")

    def isn(self, peer: tuple[str, int], local_port: int, now: float) -> int:
        """RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock.

        Every client connection makes one, so F's input is packed rather than formatted
        as `_prf`'s is (its text took about three quarters of the call). It starts with
        a NUL byte, which no text of `_prf`'s does: no ISN input is ever a cookie's.
        (The endpoint calls `utcp.isn.keyed_isn` itself, natively.)"""
        return keyed_isn(self._mac, (str(peer[0]), int(peer[1])), local_port, now)

    def make_cookie(self, peer: tuple[str, int], local_port: int, client_isn: int,
                    peer_mss: int, peer_wscale: int | None, now: float, *,
                    sack: bool = False, timestamps: bool = False) -> tuple[int, int | None]:
        """(ISN, TSval) for a stateless SYN+ACK; TSval is None without timestamps.

        The clock is not in the cookie: `check_cookie` tries the current and the previous
        period instead, which costs one bit of the MAC where a clock field cost five.
        """
        t = int(now / _COOKIE_PERIOD)
        mss_i = max((i for i, m in enumerate(COOKIE_MSS) if m <= peer_mss), default=0)
        if not timestamps:
            mac = self._prf("cookie", peer, local_port, client_isn, t, mss_i)
            return mss_i << COOKIE_MAC_BITS_NO_TS | mac >> (32 - COOKIE_MAC_BITS_NO_TS), None
        ws = _NO_WSCALE if peer_wscale is None else min(peer_wscale, 14)
        bits = mss_i << 5 | ws << 1 | int(sack)
        cookie = self._prf("cookie-ts", peer, local_port, client_isn, t, bits)
        # the high bits a millisecond clock with a keyed offset (RFC 7323 §5.4: TSval
        # should not reveal uptime); never ahead of that clock, as Linux
        clock = (int(now * 1000) + self._prf("ts", peer, local_port)) & 0xFFFFFFFF
        tsval = (clock & ~_TS_OPTION_MASK) | bits
        if tsval > clock:
            tsval -= 1 << TS_OPTION_BITS
        return cookie, tsval & 0xFFFFFFFF

    def check_cookie(self, peer: tuple[str, int], local_port: int, client_isn: int,
                     cookie: int, now: float, tsecr: int | None = None) -> CookieFacts | None:
        """What the SYN said if `cookie` is ours and at most COOKIE_LIFETIME old.

        `tsecr` is the ACK's echo of our TSval (None if it has no timestamp option):
        a cookie made with timestamps only checks with them, and one made without only
        without, so an attacker gets one try of the MAC per period per datagram.
        """
        now_t = int(now / _COOKIE_PERIOD)
        if tsecr is None:
            mss_i = cookie >> COOKIE_MAC_BITS_NO_TS
            mac = cookie & ((1 << COOKIE_MAC_BITS_NO_TS) - 1)
            for t in (now_t, now_t - 1):
                if self._prf("cookie", peer, local_port, client_isn, t, mss_i) \
                        >> (32 - COOKIE_MAC_BITS_NO_TS) == mac:
                    return CookieFacts(COOKIE_MSS[mss_i], None, False, False)
            return None
        bits = tsecr & _TS_OPTION_MASK
        for t in (now_t, now_t - 1):
            if self._prf("cookie-ts", peer, local_port, client_isn, t, bits) == cookie:
                ws = (bits >> 1) & 15
                return CookieFacts(COOKIE_MSS[bits >> 5], None if ws == _NO_WSCALE else ws,
                                   bool(bits & 1), True)
        return None
