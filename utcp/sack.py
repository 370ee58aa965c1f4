"""Selective acknowledgments: the sender's scoreboard of SACKed ranges (RFC 6675) and
the receiver's blocks (RFC 2018). Sequence numbers here are unwrapped ints, as
everywhere in the core. Which segments are lost is RACK's to say (utcp.rack).
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from typing import Final

from utcp.buffers import NO_ITEMS

_BLOCK: Final = struct.Struct("!II")


class Scoreboard:
    """SACKed ranges above snd_una, merged and sorted: `starts[i]..ends[i]`."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        # nothing SACKed: the shared empty list, until the first block (idle memory)
        self.starts: list[int] = NO_ITEMS
        self.ends: list[int] = NO_ITEMS

    def block_of(self, seq: int) -> tuple[int, int] | None:
        """The SACKed range holding seq, if any."""
        k = bisect_right(self.starts, seq) - 1
        if k >= 0 and seq < self.ends[k]:
            return self.starts[k], self.ends[k]
        return None

    def __bool__(self) -> bool:
        return bool(self.starts)

    def add(self, left: int, right: int) -> bool:
        """Merge one block; True if it told us something new."""
        if self.starts is NO_ITEMS:
            self.starts = []
            self.ends = []
        i = bisect_left(self.ends, left)        # first range ending at or after `left`
        j = bisect_right(self.starts, right)    # ranges starting at or before `right`
        if i < j and self.starts[i] <= left and self.ends[i] >= right:
            return False                         # already known
        if i < j:
            left = min(left, self.starts[i])
            right = max(right, self.ends[j - 1])
        self.starts[i:j] = [left]
        self.ends[i:j] = [right]
        return True

    def trim(self, snd_una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        k = bisect_right(self.ends, snd_una)
        if k:
            del self.starts[:k]
            del self.ends[:k]
            if not self.starts:
                self.clear()
                return
        if self.starts and self.starts[0] < snd_una:
            self.starts[0] = snd_una

    def clear(self) -> None:
        self.starts = NO_ITEMS
        self.ends = NO_ITEMS


def encode_blocks(blocks: list[tuple[int, int]]) -> bytes:
    """The SACK option (kind 5), NOP-padded to a 4-byte boundary; `blocks` are wrapped."""
    body = b"".join(_BLOCK.pack(left, right) for left, right in blocks)
    return bytes((1, 1, 5, 2 + len(body))) + body


def receiver_blocks(ooo: list[tuple[int, bytes]], latest: int, limit: int
                    ) -> list[tuple[int, int]]:
    """Blocks for what the out-of-order queue holds (unwrapped), RFC 2018 §4 order:
    the block holding the most recently received segment first, then the others."""
    merged: list[list[int]] = []
    for start, data in ooo:
        end = start + len(data)
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
        else:
            merged.append([start, end])
    first = [b for b in merged if b[0] <= latest < b[1]]
    rest = [b for b in reversed(merged) if not b[0] <= latest < b[1]]
    return [(b[0], b[1]) for b in (first + rest)[:limit]]
