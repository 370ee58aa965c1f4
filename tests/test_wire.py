"""Tests for utcp.wire: the docs/protocol.md §2 segment layout, option codec and parse errors."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utcp import wire
from utcp.wire import (
    ACK,
    CWR,
    ECE,
    FIN,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    URG,
    MalformedSegment,
    Options,
    Segment,
    build,
    build_fast,
    parse,
)

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)


def header(
    *,
    src: int = 1000,
    dst: int = 2000,
    seq: int = 1,
    ack: int = 2,
    offset_words: int = 5,
    flags: int = ACK,
    window: int = 512,
    checksum: int = 0,
    urgent: int = 0,
) -> bytes:
    """A hand-packed 20-byte header, independent of wire's own struct."""
    return (
        src.to_bytes(2, "big")
        + dst.to_bytes(2, "big")
        + seq.to_bytes(4, "big")
        + ack.to_bytes(4, "big")
        + bytes((offset_words << 4, flags))
        + window.to_bytes(2, "big")
        + checksum.to_bytes(2, "big")
        + urgent.to_bytes(2, "big")
    )


def with_options(opts: bytes, payload: bytes = b"") -> bytes:
    assert len(opts) % 4 == 0
    return header(offset_words=5 + len(opts) // 4) + opts + payload


# --------------------------------------------------------------------------- strategies

_OPTION_STRATEGIES = {
    "mss": U16,
    "wscale": st.integers(0, wire.MAX_WSCALE),
    "sack_permitted": st.booleans(),
    "sack": st.lists(st.tuples(U32, U32), min_size=0, max_size=4).map(tuple),
    "timestamps": st.tuples(U32, U32),
    "experimental": st.lists(
        st.tuples(U16, st.binary(max_size=36)), min_size=0, max_size=4
    ).map(tuple),
}


@st.composite
def options(draw: st.DrawFn) -> Options:
    """Any combination of options whose encoding fits in 40 bytes.

    Components are tried in a random order and kept only if the encoding still fits,
    so every subset that fits can be generated.
    """
    chosen: dict[str, Any] = {}
    for name in draw(st.permutations(sorted(_OPTION_STRATEGIES))):
        if not draw(st.booleans()):
            continue
        trial = {**chosen, name: draw(_OPTION_STRATEGIES[name])}
        try:
            Options(**trial).encode()
        except ValueError:
            continue
        chosen = trial
    return Options(**chosen)


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    return Segment(
        src_port=draw(U16),
        dst_port=draw(U16),
        seq=draw(U32),
        ack=draw(U32),
        flags=draw(st.integers(0, 255)),
        window=draw(U16),
        payload=draw(st.binary(max_size=2000)),
        options=draw(options()),
        urgent=draw(U16),
    )


# --------------------------------------------------------------------------- round trip


@settings(max_examples=400, deadline=None)
@given(segments())
def test_round_trip(seg: Segment) -> None:
    data = build(seg)
    enc = seg.options.encode()
    assert len(enc) <= wire.MAX_OPTIONS_LEN
    assert len(data) == 20 + len(enc) + len(seg.payload)
    assert data[12] >> 4 == (20 + len(enc)) // 4
    assert data[16:18] == b"\x00\x00"  # checksum sent as 0
    back = parse(data)
    assert isinstance(back.payload, bytes)
    assert back == seg
    assert bytes(back.payload) == bytes(seg.payload)
    # bytearray / memoryview inputs give the same fields (payload may be a view)
    for view in (bytearray(data), memoryview(data)):
        other = parse(view)
        assert bytes(other.payload) == bytes(seg.payload)
        other.payload = bytes(other.payload)
        assert other == seg


@settings(max_examples=200, deadline=None)
@given(segments())
def test_build_fast_matches_build(seg: Segment) -> None:
    seg.urgent = 0  # build_fast always sends urgent 0
    fast = build_fast(seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window,
                      seg.options.encode(), seg.payload)
    assert fast == build(seg)
    assert parse(fast) == seg


def test_round_trip_memoryview_payload() -> None:
    seg = Segment(1, 2, 3, 4, ACK, 5, memoryview(b"abcdef")[1:4])
    back = parse(build(seg))
    assert back.payload == b"bcd"


# --------------------------------------------------------------------------- exact layout


def test_exact_bytes_with_options_and_payload() -> None:
    seg = Segment(
        src_port=1000,
        dst_port=80,
        seq=0x01020304,
        ack=0xA0B0C0D0,
        flags=SYN | ACK,
        window=0xFFFE,
        payload=b"hi",
        options=Options(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 2)),
        urgent=7,
    )
    expected = bytes.fromhex(
        "03e8" "0050"            # ports
        "01020304"               # seq
        "a0b0c0d0"               # ack
        "b0" "12"                # data offset 11 words, SYN|ACK
        "fffe" "0000" "0007"     # window, checksum 0, urgent
        "020405b4"               # MSS 1460
        "0402"                   # SACK-permitted
        "0101080a0000000100000002"  # NOP NOP timestamps (1, 2)
        "01030307"               # NOP window scale 7
        "0101"                   # padding to 4 bytes
        "6869"                   # payload
    )
    assert build(seg) == expected
    assert parse(expected) == seg


def test_exact_bytes_no_options() -> None:
    seg = Segment(0xFFFF, 1, 0xFFFFFFFF, 0, FIN | PSH | ACK, 0, options=NO_OPTIONS)
    assert build(seg) == bytes.fromhex("ffff0001ffffffff00000000" "5019" "000000000000")
    assert build(Segment(0xFFFF, 1, 0xFFFFFFFF, 0, FIN | PSH | ACK, 0)) == build(seg)


def test_exact_bytes_sack_and_experimental() -> None:
    opts = Options(sack=((1, 2), (0xFFFFFFFF, 0x10)), experimental=((0xABCD, b"xy"),))
    assert opts.encode() == bytes.fromhex(
        "0101" "0512" "00000001" "00000002" "ffffffff" "00000010"
        "fe06" "abcd" "7879" "0101"
    )


def test_checksum_is_ignored_on_receive() -> None:
    data = header(checksum=0xBEEF) + b"x"
    seg = parse(data)
    assert seg.payload == b"x"
    assert build(seg)[16:18] == b"\x00\x00"


def test_header_fields_big_endian() -> None:
    seg = parse(header(src=0x0102, dst=0x0304, seq=0x05060708, ack=0x090A0B0C,
                       flags=0xFF, window=0x0D0E, urgent=0x0F10))
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (0x0102, 0x0304, 0x05060708,
                                                             0x090A0B0C)
    assert (seg.flags, seg.window, seg.urgent) == (0xFF, 0x0D0E, 0x0F10)
    assert seg.payload == b""
    assert seg.options == Options()


def test_flag_bits() -> None:
    assert (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert Segment(1, 2, 0, 0, SYN | ACK, 0).flag_names() == "ACK|SYN"
    assert Segment(1, 2, 0, 0, 0, 0).flag_names() == "-"


# --------------------------------------------------------------------------- malformed

MALFORMED = [
    ("short header", header()[:19]),
    ("short header", b""),
    ("bad data offset", header(offset_words=4)),
    ("bad data offset", header(offset_words=0) + b"\x00" * 8),
    ("header past datagram", header(offset_words=6)),
    ("header past datagram", header(offset_words=15) + b"\x01" * 39),
    ("option truncated", with_options(b"\x01\x01\x01\x02")),
    ("bad option length", with_options(b"\x02\x01\x00\x00")),
    ("bad option length", with_options(b"\x63\x00\x00\x00")),
    ("option past header", with_options(b"\x02\x08\x00\x00", b"payload!")),
    ("bad MSS option", with_options(b"\x02\x03\x00\x00")),
    ("bad window scale option", with_options(b"\x03\x04\x00\x00")),
    ("bad SACK-permitted option", with_options(b"\x04\x03\x00\x01")),
    ("bad SACK option", with_options(b"\x05\x02\x01\x01")),
    ("bad SACK option", with_options(b"\x05\x06\x00\x00\x00\x00\x01\x01")),
    ("bad timestamps option", with_options(b"\x08\x04\x00\x00")),
    ("bad timestamps option", with_options(b"\x08\x0c" + b"\x00" * 10)),
    ("bad experimental option", with_options(b"\xfe\x03\x00\x01")),
    ("bad experimental option", with_options(b"\xfe\x02\x01\x01")),
]


@pytest.mark.parametrize(("reason", "data"), MALFORMED, ids=[r for r, _ in MALFORMED])
def test_malformed(reason: str, data: bytes) -> None:
    with pytest.raises(MalformedSegment) as info:
        parse(data)
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert isinstance(info.value, ValueError)


def test_every_reason_covered() -> None:
    assert {r for r, _ in MALFORMED} == {
        "short header", "bad data offset", "header past datagram", "option truncated",
        "bad option length", "option past header", "bad MSS option",
        "bad window scale option", "bad SACK-permitted option", "bad SACK option",
        "bad timestamps option", "bad experimental option",
    }


def test_minimal_header_is_not_short() -> None:
    seg = parse(header())
    assert seg.payload == b""
    with pytest.raises(MalformedSegment):
        parse(header()[:-1])


def test_full_40_byte_options_header() -> None:
    opts = b"\x02\x04\x05\xb4" + b"\x01" * 36
    seg = parse(header(offset_words=15) + opts + b"data")
    assert seg.options.mss == 1460
    assert seg.payload == b"data"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(build(draw(segments())))
    kind = draw(st.sampled_from(["flip", "truncate", "options", "offset"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "options":
        # replace the options with random bytes, data offset set to cover them (or not)
        hlen = (data[12] >> 4) * 4
        opts = draw(st.binary(min_size=0, max_size=40))
        words = draw(st.integers(0, 15))
        data = data[:20] + opts + data[hlen:]
        data[12] = (words << 4) | (data[12] & 0x0F)
    else:
        data[12] = (draw(st.integers(0, 15)) << 4) | (data[12] & 0x0F)
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_mutations_only_raise_malformed(data: bytes) -> None:
    for view in (data, bytearray(data), memoryview(data)):
        try:
            seg = parse(view)
        except MalformedSegment as exc:
            assert exc.reason
        else:
            # what parse accepted is a segment it can read back the same from its encoding
            assert parse(build(seg)) == seg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_malformed(data: bytes) -> None:
    try:
        seg = parse(data)
    except MalformedSegment as exc:
        assert exc.reason
    else:
        assert len(data) >= 20
        assert seg.src_port == int.from_bytes(data[0:2], "big")
        assert (seg.seq, seg.ack) == (int.from_bytes(data[4:8], "big"),
                                      int.from_bytes(data[8:12], "big"))
        assert bytes(seg.payload) == data[(data[12] >> 4) * 4:]
        assert parse(build(seg)) == seg


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10).flatmap(lambda words: st.binary(min_size=4 * words,
                                                           max_size=4 * words)))
def test_random_option_bytes_only_raise_malformed(opts: bytes) -> None:
    try:
        seg = parse(with_options(opts, b"tail"))
    except MalformedSegment as exc:
        assert exc.reason
    else:
        # options that parse never eat into the payload, and mean the same built again
        assert bytes(seg.payload) == b"tail"
        assert parse(build(seg)) == seg


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("shift", "expected"), [(0, 0), (13, 13), (14, 14), (15, 14),
                                                 (200, 14), (255, 14)])
def test_window_scale_clamped(shift: int, expected: int) -> None:
    seg = parse(with_options(bytes((3, 3, shift, 1))))
    assert seg.options.wscale == expected


def test_unknown_option_kinds_are_skipped() -> None:
    opts = bytes((99, 4, 0xAA, 0xBB, 2, 4, 0x05, 0xB4, 200, 2, 1, 1))
    seg = parse(with_options(opts, b"pp"))
    assert seg.options == Options(mss=1460)
    assert seg.payload == b"pp"


def test_eol_ends_option_parsing() -> None:
    # anything after End of Option List is ignored, even garbage
    seg = parse(with_options(b"\x02\x04\x01\x00\x00\x05\x01\xff"))
    assert seg.options == Options(mss=256)


def test_parsed_options_values() -> None:
    opts = (b"\x01\x01\x08\x0a" + struct.pack("!II", 0xDEADBEEF, 7)
            + b"\x01\x01\x05\x12" + struct.pack("!IIII", 1, 2, 3, 4)
            + b"\xfe\x04\x12\x34" + b"\x04\x02\x01\x01")
    seg = parse(with_options(opts))
    assert seg.options.timestamps == (0xDEADBEEF, 7)
    assert seg.options.sack == ((1, 2), (3, 4))
    assert seg.options.experimental == ((0x1234, b""),)
    assert seg.options.sack_permitted is True
    assert seg.options.mss is None
    assert seg.options.wscale is None


def test_options_encode_too_long() -> None:
    sack4 = ((1, 2), (3, 4), (5, 6), (7, 8))
    with pytest.raises(ValueError):
        Options(timestamps=(1, 2), sack=sack4).encode()
    with pytest.raises(ValueError):
        Options(experimental=((1, b"x" * 37),)).encode()
    with pytest.raises(ValueError):
        Options(mss=1, sack_permitted=True, timestamps=(1, 1), wscale=1,
                sack=((1, 2), (3, 4))).encode()
    with pytest.raises(ValueError):
        build(Segment(1, 2, 3, 4, ACK, 5, options=Options(timestamps=(1, 2), sack=sack4)))
    # exactly 40 bytes is fine
    assert len(Options(mss=1, sack=sack4).encode()) == 40
    assert len(Options(experimental=((1, b"x" * 36),)).encode()) == 40


def test_empty_options_encode_to_nothing() -> None:
    assert Options().encode() == b""
    assert len(build(Segment(1, 2, 3, 4, ACK, 5, options=Options()))) == 20


def test_encoding_padded_to_four() -> None:
    assert Options(sack_permitted=True).encode() == b"\x04\x02\x01\x01"
    assert Options(experimental=((0, b"a"),)).encode() == b"\xfe\x05\x00\x00a\x01\x01\x01"


# --------------------------------------------------------------------------- seg_len


@pytest.mark.parametrize(
    ("flags", "payload", "expected"),
    [
        (ACK, b"", 0),
        (RST | ACK, b"", 0),
        (ACK | PSH, b"abc", 3),
        (SYN, b"", 1),
        (FIN | ACK, b"", 1),
        (SYN | FIN, b"", 2),
        (SYN | FIN | ACK, b"hello", 7),
        (FIN | ACK, b"xy", 3),
        (0xFF, b"z" * 10, 12),
    ],
)
def test_seg_len(flags: int, payload: bytes, expected: int) -> None:
    seg = Segment(1, 2, 3, 4, flags, 5, payload)
    assert seg.seg_len == expected
    assert parse(build(seg)).seg_len == expected


def test_timestamps_alone_take_the_short_path_to_the_same_result() -> None:
    aligned = b"\x01\x01\x08\x0a" + struct.pack("!II", 0xDEADBEEF, 7)
    unaligned = b"\x08\x0a" + struct.pack("!II", 0xDEADBEEF, 7) + b"\x01\x00"  # NOPs after
    for opts in (aligned, unaligned):
        for data in (with_options(opts), memoryview(with_options(opts))):
            assert parse(data).options == Options(timestamps=(0xDEADBEEF, 7))
    bad = b"\x01\x01\x08\x09" + struct.pack("!II", 1, 2)  # wrong length: no short cut
    with pytest.raises(MalformedSegment):
        parse(with_options(bad))


def test_the_secure_required_option_is_the_one_parsed_back_and_carries_our_exid() -> None:
    # the RST a secure server refuses a plaintext SYN with must carry exactly what a
    # plaintext client looks for, under the experiment ID secure mode uses (RFC 6994)
    from utcp import crypto

    assert wire.SECURE_REQUIRED[0] == crypto.EXID
    seg = wire.parse(wire.build_fast(1, 2, 3, 4, wire.RST | wire.ACK, 0,
                                     wire.SECURE_REQUIRED_OPTION, b""))
    assert wire.SECURE_REQUIRED in seg.options.experimental
