"""Selective acknowledgments: the sender's scoreboard of SACKed ranges (RFC 6675) and
the receiver's blocks (RFC 2018). Sequence numbers here are unwrapped ints, as
everywhere in the core. Which segments are lost is RACK's to say (utcp.rack).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from typing import Final

from utcp.buffers import Ranges

_BLOCK: Final = struct.Struct("!II")


# The sender's scoreboard of SACKed ranges above snd_una (merged, sorted): the same
# structure as the receiver's record of its out-of-order blocks.
Scoreboard = Ranges


def encode_blocks(blocks: list[tuple[int, int]]) -> bytes:
    """The SACK option (kind 5), NOP-padded to a 4-byte boundary; `blocks` are wrapped."""
    body = b"".join(_BLOCK.pack(left, right) for left, right in blocks)
    return bytes((1, 1, 5, 2 + len(body))) + body


def receiver_blocks(held: Ranges, latest: int, limit: int) -> list[tuple[int, int]]:
    """Blocks for what the out-of-order queue holds (`held`: its pieces merged, kept as
    they come), RFC 2018 §4 order: the block holding the most recently received segment
    first, then the others from the highest. A cost of `limit`, not of the queue: walking
    the pieces, a flood of tiny ones made every ACK cost thousands of steps."""
    starts, ends = held.starts, held.ends
    k = bisect_right(starts, latest) - 1
    first = k if k >= 0 and latest < ends[k] else -1
    blocks = [(starts[first], ends[first])] if first >= 0 else []
    i = len(starts) - 1
    while i >= 0 and len(blocks) < limit:
        if i != first:
            blocks.append((starts[i], ends[i]))
        i -= 1
    return blocks
