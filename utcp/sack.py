"""Selective acknowledgments: the sender's scoreboard (RFC 6675) and the receiver's
blocks (RFC 2018). Sequence numbers here are unwrapped ints, as everywhere in the core.

Loss is judged as RFC 6675's IsLost() does, with DupThresh = 3: a hole is lost once at
least three segments' worth of bytes, or three separate blocks, are SACKed above it.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

DUP_THRESH = 3
_BLOCK = struct.Struct("!II")


class Scoreboard:
    """SACKed ranges above snd_una, merged and sorted: `starts[i]..ends[i]`."""

    __slots__ = ("all_lost", "ends", "high_rxt", "lost_retransmissions", "rxt_marks",
                 "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.high_rxt = 0           # RFC 6675 HighRxt: retransmitted up to here
        # retransmitted range start -> snd_max when it was sent (RACK's idea, RFC 8985)
        self.rxt_marks: dict[int, int] = {}
        self.lost_retransmissions = 0
        # set when a tail loss probe was delivered: everything sent before it and still
        # missing is lost (RFC 8985 §7.4), however few segments are SACKed above
        self.all_lost = False

    def retransmitted(self, start: int, snd_max: int) -> None:
        self.rxt_marks[start] = snd_max

    def detect_lost_retransmissions(self, snd_una: int, mss: int) -> None:
        """A retransmission is lost if data sent after it is SACKed well past it while
        its own range is still missing: send it again (lower HighRxt to it). RFC 6675
        alone would wait for the retransmission timer."""
        if not self.rxt_marks:
            return
        fack = self.fack
        for start, mark in list(self.rxt_marks.items()):
            if start < snd_una or self.sacked(start):
                del self.rxt_marks[start]
            elif fack >= mark + DUP_THRESH * mss:
                del self.rxt_marks[start]
                self.lost_retransmissions += 1
                if start < self.high_rxt:
                    self.high_rxt = start

    def sacked(self, seq: int) -> bool:
        k = bisect_right(self.starts, seq) - 1
        return k >= 0 and seq < self.ends[k]

    def __bool__(self) -> bool:
        return bool(self.starts)

    @property
    def fack(self) -> int:
        """The highest byte SACKed, plus one (0 when empty)."""
        return self.ends[-1] if self.ends else 0

    def add(self, left: int, right: int) -> bool:
        """Merge one block; True if it told us something new."""
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
        if self.starts and self.starts[0] < snd_una:
            self.starts[0] = snd_una

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()
        self.rxt_marks.clear()
        self.high_rxt = 0
        self.all_lost = False

    def holes(self, snd_una: int, mss: int) -> Iterator[tuple[int, int, bool]]:
        """(start, end, lost) for every un-SACKed gap below the highest SACKed byte."""
        starts, ends = self.starts, self.ends
        sacked_above = 0
        out: list[tuple[int, int, bool]] = []
        for k in range(len(starts) - 1, -1, -1):
            sacked_above += ends[k] - starts[k]
            blocks_above = len(starts) - k
            gap_start = ends[k - 1] if k else snd_una
            if gap_start < starts[k]:
                lost = (self.all_lost or sacked_above >= DUP_THRESH * mss
                        or blocks_above >= DUP_THRESH)
                out.append((gap_start, starts[k], lost))
        return reversed(out)

    def is_lost(self, seq: int, snd_una: int, mss: int) -> bool:
        for start, end, lost in self.holes(snd_una, mss):
            if start <= seq < end:
                return lost
        return False

    def pipe(self, snd_una: int, snd_max: int, mss: int) -> int:
        """RFC 6675 SetPipe(): bytes believed to be in the network."""
        fack = max(self.fack, snd_una)
        pipe = snd_max - fack
        for start, end, lost in self.holes(snd_una, mss):
            if not lost:
                pipe += end - start
            elif self.high_rxt > start:
                pipe += min(end, self.high_rxt) - start  # retransmitted, in flight again
        return pipe

    def next_lost(self, snd_una: int, mss: int) -> tuple[int, int] | None:
        """RFC 6675 NextSeg() rule 1: the first lost byte range not yet retransmitted."""
        floor = max(snd_una, self.high_rxt)
        for start, end, lost in self.holes(snd_una, mss):
            if lost and end > floor:
                return max(start, floor), end
        return None


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
