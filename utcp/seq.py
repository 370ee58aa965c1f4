"""32-bit sequence-number arithmetic (RFC 9293 §3.4, RFC 1982).

Inside the core every sequence number is *unwrapped*: a plain Python int that
keeps growing past 2**32, so buffers and comparisons never think about the wrap.
Only the wire carries the 32-bit form; `unwrap` turns a received 32-bit value
back into the unwrapped number closest to a reference we already hold, which is
exactly the modular comparison RFC 9293 asks for (valid as long as the two are
less than 2**31 apart, which the window guarantees).
"""

from __future__ import annotations

from typing import Final

MOD: Final = 1 << 32
MASK: Final = MOD - 1
HALF: Final = 1 << 31


def diff(a: int, b: int) -> int:
    """Signed distance a - b between two 32-bit sequence numbers."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def lt(a: int, b: int) -> bool:
    return diff(a, b) < 0


def le(a: int, b: int) -> bool:
    return diff(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return diff(a, b) > 0


def ge(a: int, b: int) -> bool:
    return diff(a, b) >= 0


def unwrap(value32: int, reference: int) -> int:
    """The unwrapped number congruent to `value32` (mod 2**32) nearest `reference`."""
    return reference + diff(value32, reference & MASK)


def wrap(value: int) -> int:
    return value & MASK
