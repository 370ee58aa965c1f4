"""The wire format of docs/protocol.md §2: one UDP datagram carries one RFC 9293 TCP segment.

Parsing never raises anything but `MalformedSegment`, whose `reason` is a short
stable string the endpoint counts drops by. Building is the inverse; a segment
that `parse` accepts and `build` re-encodes compares equal field by field.
"""

from __future__ import annotations

import struct
from typing import Final

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

FLAG_NAMES: Final = ((CWR, "CWR"), (ECE, "ECE"), (URG, "URG"), (ACK, "ACK"), (PSH, "PSH"),
              (RST, "RST"), (SYN, "SYN"), (FIN, "FIN"))

OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_PERMITTED: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMPS: Final = 8
OPT_EXPERIMENTAL: Final = 254

HEADER_LEN: Final = 20
MAX_OPTIONS_LEN: Final = 40
MAX_WSCALE: Final = 14  # RFC 7323 §2.3: larger shifts are treated as 14
MAX_WINDOW_FIELD: Final = 0xFFFF
# RFC 6994 option 254, ExID "ut" (utcp.crypto.EXID), data 0x01: a secure-mode server
# sends it in the RST that refuses a SYN without a handshake, so that a plaintext client
# can say why it was refused (docs/secure-mode.md). As parsed, and as sent (NOP-padded).
SECURE_REQUIRED: Final = (0x7574, b"\x01")
SECURE_REQUIRED_OPTION: Final = (bytes((254, 4 + len(SECURE_REQUIRED[1])))
                          + SECURE_REQUIRED[0].to_bytes(2, "big") + SECURE_REQUIRED[1]
                          + b"\x01" * 3)
DEFAULT_MSS: Final = 536  # RFC 9293 §3.7.1: the send MSS when the peer sends no MSS option

_HEADER: Final = struct.Struct("!HHIIBBHHH")
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_TS: Final = struct.Struct("!II")
_TS_ALIGNED: Final = b"\x01\x01\x08\x0a"  # NOP NOP kind=8 len=10
_TS_ONLY_LEN: Final = HEADER_LEN + 12
# The header and RFC 7323 appendix A's timestamps layout (NOP NOP kind=8 len=10 TSval
# TSecr) as one struct: nearly every segment of a connection is exactly this, and one
# pack or unpack of it costs what a tenth of the general option code does
_HEADER_TS: Final = struct.Struct("!HHIIBBHHHIII")
_HEADER_TS_WORDS: Final = struct.Struct("!8I")  # the same 32 bytes, as build_ts packs them
_TS_WORD: Final = 0x0101080A
_TS_OFFSET_BYTE: Final = (_TS_ONLY_LEN // 4) << 4
_SACK_BLOCK: Final = struct.Struct("!II")
# Options.encode's fixed parts: kind and length (and the NOPs that align them)
_MSS_KIND: Final = bytes((OPT_MSS, 4))
_SACK_PERMITTED_OPTION: Final = bytes((OPT_SACK_PERMITTED, 2))
_WSCALE_KIND: Final = bytes((OPT_NOP, OPT_WSCALE, 3))
# MSS, SACK-permitted, timestamps, window scale and the padding, as encode lays them out
_SYN_OPTIONS: Final = struct.Struct("!2sH6sII3sB2s")
_SACK_PERMITTED_TS: Final = _SACK_PERMITTED_OPTION + _TS_ALIGNED
_TWO_NOPS: Final = bytes((OPT_NOP, OPT_NOP))


class MalformedSegment(ValueError):
    """A datagram that is not a well-formed segment; `reason` names what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Options:
    """The TCP options utcp understands; absent ones are None / empty.

    A plain class rather than a dataclass: one is made per datagram parsed, and under mypyc a
    dataclass keeps the Python `__init__` the dataclasses module writes at import time, while
    this one is native (about a microsecond per datagram, with `Segment`'s)."""

    __slots__ = ("experimental", "mss", "sack", "sack_permitted", "timestamps", "wscale")

    def __init__(self, mss: int | None = None, wscale: int | None = None,
                 sack_permitted: bool = False, sack: tuple[tuple[int, int], ...] = (),
                 timestamps: tuple[int, int] | None = None,  # (TSval, TSecr)
                 experimental: tuple[tuple[int, bytes], ...] = ()) -> None:  # RFC 6994
        self.mss = mss
        self.wscale = wscale
        self.sack_permitted = sack_permitted
        self.sack = sack
        self.timestamps = timestamps
        self.experimental = experimental

    def _fields(self) -> tuple[object, ...]:
        return (self.mss, self.wscale, self.sack_permitted, self.sack, self.timestamps,
                self.experimental)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        names = ("mss", "wscale", "sack_permitted", "sack", "timestamps", "experimental")
        pairs = zip(names, self._fields(), strict=True)
        return "Options(" + ", ".join(f"{n}={v!r}" for n, v in pairs) + ")"

    def encode(self) -> bytes:
        """Encode, padded with NOPs to a 4-byte boundary, in the order Linux uses."""
        # constant kinds and lengths, and packs of what varies: every SYN and SYN+ACK is
        # encoded here, and each bytes((...)) of a tuple, or pack(*args), was a Python call
        mss = self.mss
        ts = self.timestamps
        wscale = self.wscale
        if (mss is not None and ts is not None and wscale is not None and 0 <= wscale <= 255
                and self.sack_permitted and not self.sack and not self.experimental):
            # a SYN's (and a SYN+ACK's) usual four, the same 24 bytes as below: one pack
            return _SYN_OPTIONS.pack(_MSS_KIND, mss, _SACK_PERMITTED_TS, ts[0], ts[1],
                                     _WSCALE_KIND, wscale, _TWO_NOPS)
        out = bytearray()
        if mss is not None:
            out += _MSS_KIND
            out += _U16.pack(mss)
        if self.sack_permitted:
            out += _SACK_PERMITTED_OPTION
        if ts is not None:
            out += _TS_ALIGNED
            out += _TS.pack(ts[0], ts[1])
        if wscale is not None:
            out += _WSCALE_KIND
            out.append(wscale)
        if self.sack:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(self.sack)))
            for left, right in self.sack:
                out += _SACK_BLOCK.pack(left, right)
        for exid, data in self.experimental:
            out += bytes((OPT_EXPERIMENTAL, 4 + len(data))) + _U16.pack(exid) + data
        while len(out) % 4:
            out.append(OPT_NOP)
        if len(out) > MAX_OPTIONS_LEN:
            raise ValueError(f"options take {len(out)} bytes, more than {MAX_OPTIONS_LEN}")
        return bytes(out)


NO_OPTIONS: Final = Options()


class Segment:
    """One parsed segment. `seq` and `ack` are the 32-bit wire values. A plain class for
    the reason `Options` is one."""

    __slots__ = ("ack", "dst_port", "flags", "options", "payload", "seq", "src_port", "urgent",
                 "window")

    def __init__(self, src_port: int, dst_port: int, seq: int, ack: int, flags: int,
                 window: int, payload: bytes | memoryview = b"", options: Options | None = None,
                 urgent: int = 0) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.payload: bytes | memoryview = payload
        self.options: Options = options if options is not None else Options()
        self.urgent = urgent

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Segment):
            return NotImplemented
        return ((self.src_port, self.dst_port, self.seq, self.ack, self.flags, self.window,
                 self.payload, self.options, self.urgent)
                == (other.src_port, other.dst_port, other.seq, other.ack, other.flags,
                    other.window, other.payload, other.options, other.urgent))

    __hash__ = None  # type: ignore[assignment]

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        n = len(self.payload)
        if self.flags & SYN:
            n += 1
        if self.flags & FIN:
            n += 1
        return n

    def flag_names(self) -> str:
        return "|".join(name for bit, name in FLAG_NAMES if self.flags & bit) or "-"

    def __repr__(self) -> str:
        return (f"Segment({self.flag_names()} {self.src_port}->{self.dst_port} seq={self.seq}"
                f" ack={self.ack} win={self.window} len={len(self.payload)} {self.options})")


def build(seg: Segment) -> bytes:
    """Encode a segment; the checksum is sent as 0 (docs/protocol.md §2: UDP's covers it)."""
    opts = seg.options.encode() if seg.options is not NO_OPTIONS else b""
    header = _HEADER.pack(seg.src_port, seg.dst_port, seg.seq, seg.ack,
                          ((HEADER_LEN + len(opts)) // 4) << 4, seg.flags,
                          seg.window, 0, seg.urgent)
    return header + opts + bytes(seg.payload)


def build_fast(src_port: int, dst_port: int, seq: int, ack: int, flags: int, window: int,
               options: bytes = b"", payload: bytes | memoryview = b"") -> bytes:
    """The hot-path encoder: pre-encoded options, no Segment object."""
    header = _HEADER.pack(src_port, dst_port, seq, ack, ((HEADER_LEN + len(options)) // 4) << 4,
                          flags, window, 0, 0)
    if options:
        return b"".join((header, options, payload))
    return header + payload if payload else header


def build_ts(src_port: int, dst_port: int, seq: int, ack: int, flags: int, window: int,
             tsval: int, tsecr: int, payload: bytes | memoryview = b"") -> bytes:
    """`build_fast` for a segment whose only option is the timestamps one (the common
    case once it is negotiated): header and option in one pack, no options bytes."""
    # as eight 32-bit words, the fields that share one combined first: a pack's cost
    # is mostly its per-argument conversions (12 fields cost a third more)
    header = _HEADER_TS_WORDS.pack((src_port << 16) | dst_port, seq, ack,
                                   (_TS_OFFSET_BYTE << 24) | (flags << 16) | window, 0,
                                   _TS_WORD, tsval, tsecr)
    return header + payload if payload else header


def parse(data: bytes | bytearray | memoryview) -> Segment:
    """Parse one datagram; raise `MalformedSegment` with a reason if it is not a segment."""
    n = len(data)
    if n >= _TS_ONLY_LEN:
        # the common layout first, in one unpack (what `_parse_general` would find)
        (src, dst, seq, ack, off_byte, flags, window, _csum, urgent, word, tsval,
         tsecr) = _HEADER_TS.unpack_from(data, 0)
        if off_byte >> 4 == 8 and word == _TS_WORD:
            payload: bytes | memoryview = b""
            if n > _TS_ONLY_LEN:
                payload = (data[_TS_ONLY_LEN:] if isinstance(data, bytes)
                           else memoryview(data)[_TS_ONLY_LEN:])
            return Segment(src, dst, seq, ack, flags, window, payload,
                           Options(timestamps=(tsval, tsecr)), urgent)
    return _parse_general(data, n)


# What a run of glued datagrams shares when one segment can stand for all of them: all
# but the sequence number and the PSH bit. The ACK and the data offset (`head`), the
# window, checksum and urgent fields and the timestamps option (`rest`), byte for byte.
_RUN_HEADER: Final = struct.Struct("!4xI5sB18s")
_SEQ_MASK: Final = 0xFFFFFFFF


def glued_run(data: bytes | bytearray | memoryview, begin: int, step: int, n: int,
              start: int, room: int) -> int:
    """Where the run of datagrams glued at `step` bytes from `begin` (one UDP GRO read,
    the last datagram maybe shorter, the data ending at `n`) ends that one segment can
    stand for, as Linux's TCP GRO merges segments: data with the common timestamps-only
    header, the first at sequence number `start` (the receiver's next byte: anything
    else is left to the per-datagram path, whose duplicate ACKs and SACK blocks count
    datagrams), each header equal to the first's but for its sequence number, which
    continues where the one before ended (and PSH, which the receiver does not act on),
    their payloads together within `room` (the window the receiver offered, as header
    prediction asks of each). A SYN, FIN, RST, URG, any other option layout, a gap or a
    changed ACK, window or timestamp ends the run. Returns at least the end of the first
    datagram, `min(begin + step, n)`; `parse_run` makes the one segment."""
    end = min(begin + step, n)
    size = step - _TS_ONLY_LEN  # the payload of every datagram but maybe the last
    if size <= 0 or end == n:
        return end
    seq: int
    head: bytes
    flags: int
    rest: bytes
    seq, head, flags, rest = _RUN_HEADER.unpack_from(data, begin)
    if (seq != start or head[4] != _TS_OFFSET_BYTE or flags | PSH != ACK | PSH
            or rest[6:10] != _TS_ALIGNED):
        return end
    taken = size
    while n - end > _TS_ONLY_LEN:
        taken += min(size, n - end - _TS_ONLY_LEN)
        if taken > room:
            break
        seq = (seq + size) & _SEQ_MASK
        next_seq, next_head, next_flags, next_rest = _RUN_HEADER.unpack_from(data, end)
        if (next_seq != seq or next_flags | PSH != ACK | PSH or next_head != head
                or next_rest != rest):
            break
        end = min(end + step, n)
    return end


def parse_run(data: bytes | bytearray | memoryview, begin: int, end: int, step: int,
              ) -> Segment:
    """The one segment that the datagrams `glued_run` found stand for: the first one's
    header, the payloads joined (one copy, out of a buffer the next read overwrites),
    PSH if any datagram had it."""
    (src, dst, seq, ack, _off, flags, window, _csum, urgent, _word, tsval,
     tsecr) = _HEADER_TS.unpack_from(data, begin)
    view = data if isinstance(data, memoryview) else memoryview(data)
    pieces = []
    for at in range(begin, end, step):
        flags |= view[at + 13] & PSH
        pieces.append(view[at + _TS_ONLY_LEN:min(at + step, end)])
    return Segment(src, dst, seq, ack, flags, window, b"".join(pieces),
                   Options(timestamps=(tsval, tsecr)), urgent)


def _parse_general(data: bytes | bytearray | memoryview, n: int) -> Segment:
    if n < HEADER_LEN:
        raise MalformedSegment("short header")
    src, dst, seq, ack, off_byte, flags, window, _csum, urgent = _HEADER.unpack_from(data, 0)
    hlen = (off_byte >> 4) * 4
    if hlen < HEADER_LEN:
        raise MalformedSegment("bad data offset")
    if hlen > n:
        raise MalformedSegment("header past datagram")
    if hlen == _TS_ONLY_LEN and data[HEADER_LEN:HEADER_LEN + 4] == _TS_ALIGNED:
        # what nearly every segment of a connection with timestamps carries (RFC 7323
        # appendix A's layout): skip the general option loop
        options = Options(timestamps=_TS.unpack_from(data, HEADER_LEN + 4))
    elif hlen > HEADER_LEN:
        options = _parse_options(data, hlen)
    else:
        options = Options()
    payload: bytes | memoryview = b""
    if hlen < n:  # bytes are sliced (one copy), anything else viewed
        payload = data[hlen:] if isinstance(data, bytes) else memoryview(data)[hlen:]
    return Segment(src, dst, seq, ack, flags, window, payload, options, urgent)


def _parse_options(data: bytes | bytearray | memoryview, end: int) -> Options:
    opts = Options()
    sack: list[tuple[int, int]] = []
    exp: list[tuple[int, bytes]] = []
    i = HEADER_LEN
    while i < end:
        kind = data[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedSegment("option truncated")
        length = data[i + 1]
        if length < 2:
            raise MalformedSegment("bad option length")
        if i + length > end:
            raise MalformedSegment("option past header")
        if kind == OPT_MSS:
            if length != 4:
                raise MalformedSegment("bad MSS option")
            opts.mss = _U16.unpack_from(data, i + 2)[0]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise MalformedSegment("bad window scale option")
            opts.wscale = min(data[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise MalformedSegment("bad SACK-permitted option")
            opts.sack_permitted = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise MalformedSegment("bad SACK option")
            for j in range(i + 2, i + length, 8):
                sack.append(_SACK_BLOCK.unpack_from(data, j))
        elif kind == OPT_TIMESTAMPS:
            if length != 10:
                raise MalformedSegment("bad timestamps option")
            opts.timestamps = _TS.unpack_from(data, i + 2)
        elif kind == OPT_EXPERIMENTAL:
            if length < 4:
                raise MalformedSegment("bad experimental option")
            exp.append((_U16.unpack_from(data, i + 2)[0], bytes(data[i + 4:i + length])))
        i += length
    if sack:
        opts.sack = tuple(sack)
    if exp:
        opts.experimental = tuple(exp)
    return opts
