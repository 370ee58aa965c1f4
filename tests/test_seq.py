"""Tests for utcp.seq: modular 32-bit comparisons and unwrapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utcp.seq import HALF, MASK, MOD, diff, ge, gt, le, lt, unwrap, wrap

U32 = st.integers(0, MASK)


def test_constants() -> None:
    assert MOD == 2**32
    assert MASK == 2**32 - 1
    assert HALF == 2**31


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (5, 5, 0),
        (6, 5, 1),
        (5, 6, -1),
        (5, 2**32 - 10, 15),          # 5 is 15 after 2**32-10, across the wrap
        (2**32 - 10, 5, -15),
        (0, MASK, 1),
        (MASK, 0, -1),
        (2**31 - 1, 0, 2**31 - 1),    # largest positive distance
        (2**31, 0, -(2**31)),         # exactly half: counted as behind
        (0, 2**31 + 1, 2**31 - 1),
        (100 + 2**32, 100, 0),        # unwrapped inputs reduce mod 2**32
    ],
)
def test_diff(a: int, b: int, expected: int) -> None:
    assert diff(a, b) == expected


def test_comparisons_across_wrap() -> None:
    a, b = 2**32 - 10, 5
    assert lt(a, b) is True
    assert le(a, b) is True
    assert gt(a, b) is False
    assert ge(a, b) is False
    assert gt(b, a) is True
    assert ge(b, a) is True
    assert lt(b, a) is False
    assert le(b, a) is False
    # plain integer order would say the opposite
    assert a > b


def test_comparisons_equal() -> None:
    for x in (0, 1, 2**31, MASK):
        assert le(x, x) and ge(x, x)
        assert not lt(x, x) and not gt(x, x)


def test_comparisons_without_wrap() -> None:
    assert lt(1000, 2000) and le(1000, 2000)
    assert gt(2000, 1000) and ge(2000, 1000)
    assert not lt(2000, 1000)
    assert lt(MASK - 1, MASK)
    assert lt(MASK, 0)
    assert gt(0, MASK)


@settings(max_examples=300, deadline=None)
@given(U32, U32)
def test_comparison_consistency(a: int, b: int) -> None:
    d = diff(a, b)
    assert -HALF <= d < HALF
    assert (a - d - b) % MOD == 0
    assert lt(a, b) == (d < 0)
    assert le(a, b) == (d <= 0)
    assert gt(a, b) == (d > 0)
    assert ge(a, b) == (d >= 0)
    assert lt(a, b) != ge(a, b)
    assert gt(a, b) != le(a, b)
    if d != -HALF:
        assert diff(b, a) == -d
        assert lt(a, b) == gt(b, a)


@settings(max_examples=300, deadline=None)
@given(U32, st.integers(-(2**31) + 1, 2**31 - 1))
def test_offset_compares_by_sign(a: int, delta: int) -> None:
    b = wrap(a + delta)
    assert diff(b, a) == delta
    assert lt(a, b) == (delta > 0)
    assert gt(a, b) == (delta < 0)


def test_wrap() -> None:
    assert wrap(0) == 0
    assert wrap(MASK) == MASK
    assert wrap(2**32) == 0
    assert wrap(2**32 + 7) == 7
    assert wrap(5 * 2**32 + 123) == 123
    assert wrap(-1) == MASK


@pytest.mark.parametrize(
    ("value32", "reference", "expected"),
    [
        (5, 5, 5),
        (10, 0, 10),
        (5, 2**32 - 10, 2**32 + 5),            # value just past the wrap ahead of reference
        (2**32 - 5, 2**32 + 3, 2**32 - 5),      # value slightly behind, reference above 2**32
        (2**32 - 5, 3, -5),                     # behind a small reference: negative
        (100, 2**33 + 200, 2**33 + 100),        # reference far above 2**32, value behind
        (300, 2**33 + 200, 2**33 + 300),        # reference far above 2**32, value ahead
        (5, 3 * 2**32 - 10, 3 * 2**32 + 5),     # crossing the third wrap
        (MASK, 7 * 2**32, 7 * 2**32 - 1),
        (0, 7 * 2**32 - 1, 7 * 2**32),
        (2**31 - 1 + 1000, 1000 + 2**32, 2**32 + 2**31 - 1 + 1000),  # furthest ahead
    ],
)
def test_unwrap(value32: int, reference: int, expected: int) -> None:
    got = unwrap(value32, reference)
    assert got == expected
    assert got % MOD == value32


@settings(max_examples=400, deadline=None)
@given(st.integers(2**31, 2**64), st.integers(-(2**31) + 1, 2**31 - 1))
def test_unwrap_inverts_wrap(reference: int, delta: int) -> None:
    assert unwrap(wrap(reference + delta), reference) == reference + delta


@settings(max_examples=300, deadline=None)
@given(U32, st.integers(0, 2**64))
def test_unwrap_is_nearest(value32: int, reference: int) -> None:
    got = unwrap(value32, reference)
    assert got % MOD == value32
    # no other congruent number is strictly closer (ties at exactly 2**31 either way)
    assert abs(got - reference) <= HALF
    assert abs(got - reference) <= abs(got + MOD - reference)
    assert abs(got - reference) <= abs(got - MOD - reference)
