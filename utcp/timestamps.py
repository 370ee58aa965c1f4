"""RFC 7323 timestamps for one connection: our clock, TS.Recent, and PAWS.

Kept apart from the connection because its rules are subtle in one place only: when
TS.Recent may move. Moving it from a segment that later fails the window or ACK checks
let 4 blind datagrams stall a connection (every genuine segment then failed PAWS).
"""

from __future__ import annotations

import struct
from typing import Final

from utcp import seq as sq
from utcp import wire
from utcp.wire import RST

PAWS_IDLE: Final = 24 * 86400.0  # RFC 7323 §5.5: TS.Recent older than 24 days is invalid
_OPTION: Final = struct.Struct("!BBBBII")  # NOP NOP kind len TSval TSecr


class Timestamps:
    __slots__ = ("last_ack_sent", "offset", "ok", "recent", "recent_time", "syn_tsval")

    def __init__(self, iss: int) -> None:
        self.ok = False          # both SYNs carried the option
        # a millisecond clock with a per-connection offset (§5.4: the value says nothing
        # about the host's uptime)
        self.offset = (iss * 2654435761) & sq.MASK
        self.recent = 0          # TS.Recent: the peer's latest valid TSval
        self.recent_time = 0.0
        self.last_ack_sent = 0   # Last.ACK.sent (§4.3)
        # a retransmitted SYN repeats the first one's TSval: the same segment (secure
        # mode's handshake authenticates the header it was first sent with)
        self.syn_tsval: int | None = None

    def clock(self, now: float) -> int:
        return (int(now * 1000) + self.offset) & sq.MASK

    def option(self, now: float) -> bytes:
        """NOP NOP TS: what every segment but a bare RST carries once negotiated."""
        return _OPTION.pack(1, 1, 8, 10, self.clock(now), self.recent)

    def follow(self, tsval: int, now: float) -> None:
        """Our clock starts from `tsval`, a value we sent statelessly (a SYN cookie's
        SYN+ACK), so the peer's PAWS never sees our TSval go back."""
        self.offset = (tsval - int(now * 1000)) & sq.MASK

    def paws_rejects(self, seg: wire.Segment, now: float) -> bool:
        """§5.3 R1: a TSval older than TS.Recent is an old duplicate (PAWS). Only a test:
        TS.Recent moves in `take_recent`, once the segment has proved acceptable."""
        ts = seg.options.timestamps
        # sq.lt(TSval, TS.Recent), inline: this runs for every segment
        return (ts is not None and (ts[0] - self.recent) & sq.MASK >= sq.HALF
                and not seg.flags & RST
                and now - self.recent_time < PAWS_IDLE)

    def take_recent(self, seg: wire.Segment, seg_seq: int, now: float) -> None:
        """§5.3 R3 (§4.3): a newer TSval at or before Last.ACK.sent becomes TS.Recent,
        but only from an acceptable segment: called after the window check (R2) and, as
        Linux's tcp_replace_ts_recent from tcp_ack, after RFC 5961's ACK check."""
        ts = seg.options.timestamps
        if ts is not None and seg_seq <= self.last_ack_sent and (
                (ts[0] - self.recent) & sq.MASK < sq.HALF  # sq.ge, inline
                or now - self.recent_time >= PAWS_IDLE):
            self.recent = ts[0]  # §5.5: after 24 days idle, an older TSval resets it
            self.recent_time = now
