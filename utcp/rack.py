"""RACK (RFC 8985 §6): loss by time, from the segments sent and what SACKs deliver.

A segment is lost once something sent after it has been delivered and more than a
round trip plus the reordering window has passed since it was sent. Counting
duplicate ACKs (RFC 5681/6675's DupThresh) cannot see a lost retransmission, a loss
in the last segments of a flight, or tell reordering from loss; time can.

`SentLog` keeps every segment in flight twice, as RFC 8985 §6.2 suggests: by sequence
number (what an ACK or a SACK block delivers is found by bisection) and in the order
of (re)transmission, which the loss scan walks from the oldest and stops at the first
segment that is not yet late. Each transmission enters that queue once and leaves it
once, so an ACK costs O(log n) for its look-ups plus amortised O(1) per segment it
delivers or finds lost, however many are in flight. It also counts the bytes that RFC
6675's pipe needs (SACKed, lost, retransmitted), so pipe is O(1), and keeps the lost
segments not yet resent in a heap, lowest sequence first (RFC 6675's NextSeg()).

Sequence numbers are unwrapped ints, as everywhere in the core; times are the
caller's clock (seconds).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from operator import attrgetter, itemgetter
from typing import Final

from utcp.buffers import python_class
from utcp.sack import Scoreboard

SACKED: Final = 1    # delivered: covered by SACK blocks (a cumulative ACK removes it instead)
LOST: Final = 2      # marked lost and not SACKed since
RETRANS: Final = 4   # a retransmission of it is in flight (neither delivered nor found lost)
EVER: Final = 8      # retransmitted at least once: its ACK may be for an older copy
GONE: Final = 16     # cumulatively acknowledged, no longer in the log
DUP_THRESH: Final = 3
MIN_RTT_WINDOW: Final = 300.0  # seconds a min_rtt sample stays valid (Linux: tcp_min_rtt_wlen)
PERSIST_ROUNDS: Final = 16     # recoveries a grown reordering window lasts (RFC 8985 §6.2)
_EPSILON: Final = 1e-6         # a deadline this close is due: no timer for a rounding error

_start = attrgetter("start")
_first = itemgetter(0)


class Segment:
    __slots__ = ("end", "order", "start", "state", "ts")

    def __init__(self, start: int, end: int, ts: float, order: int, state: int) -> None:
        self.start = start
        self.end = end
        self.ts = ts          # time of the latest (re)transmission
        self.order = order    # and its rank among all transmissions
        self.state = state

    def __repr__(self) -> str:
        return f"<Segment {self.start}-{self.end} ts={self.ts} state={self.state}>"


@python_class  # a native subclass of deque crashes at import (as buffers._NoPieces)
class _NothingSent(deque[tuple[int, "Segment"]]):
    """The time queue of every log with nothing in it; appending here is a bug."""

    def append(self, item: tuple[int, Segment], /) -> None:
        raise RuntimeError("append to the shared empty time queue")


_NOTHING_SENT: Final = _NothingSent()


class SentLog:
    """The sender's segments in flight and RACK's state (RFC 8985 §6.1's RACK.*)."""

    __slots__ = (
        "_by_time",
        "_dsack_round",
        "_head",
        "_lost",
        "_min_rtt_time",
        "_sent",
        "end_seq",
        "fack",
        "lost_out",
        "lost_retransmissions",
        "min_rtt",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reordering_seen",
        "retrans_out",
        "rtt",
        "sacked_out",
        "segs",
        "segs_sacked",
        "xmit_order",
        "xmit_ts",
    )

    def __init__(self) -> None:
        self.segs: list[Segment] = []      # by sequence number; segs[_head:] are live
        self._head = 0
        # (order, segment); the shared empty deque while nothing is in flight (as
        # _NO_PIECES in buffers.py: an idle connection keeps no 760-byte deque)
        self._by_time: deque[tuple[int, Segment]] = _NOTHING_SENT
        self._lost: list[tuple[int, int, Segment]] = []  # heap: lost, not yet resent
        self._sent = 0                     # transmissions so far: the next one's order
        # bytes of live segments in each state, for pipe (RFC 6675 SetPipe())
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        self.segs_sacked = 0
        self.lost_retransmissions = 0
        # RACK.xmit_ts / RACK.end_seq: the most recently sent segment delivered so far.
        # "Most recently" is by the order of transmission, not (time, end_seq) as in
        # RFC 8985's RACK_sent_after(): on a clock that stands still between calls (a
        # sans-IO core; a fake clock) a retransmission sent after new data would
        # otherwise count as sent before it, because its sequence number is lower.
        self.xmit_ts = float("-inf")
        self.xmit_order = -1
        self.end_seq = 0
        self.rtt = 0.0                     # RACK.rtt: the round trip of that segment
        self.fack = 0                      # RACK.fack: the highest end delivered
        self.min_rtt: float | None = None
        self._min_rtt_time = 0.0
        self.reordering_seen = False
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0
        self._dsack_round: int | None = None

    # ------------------------------------------------------------------ what is sent

    def __bool__(self) -> bool:
        return len(self.segs) > self._head

    def first(self) -> Segment | None:
        return self.segs[self._head] if len(self.segs) > self._head else None

    def last(self) -> Segment | None:
        return self.segs[-1] if len(self.segs) > self._head else None

    def sent(self, start: int, end: int, now: float, retransmission: bool) -> None:
        """Record a transmission of [start, end): a new segment past the last, or a
        retransmission of the segments it covers (each as a whole)."""
        segs = self.segs
        if len(segs) == self._head or start >= segs[-1].end:
            seg = Segment(start, end, now, self._sent, EVER if retransmission else 0)
            self._sent += 1
            segs.append(seg)
            (self._by_time or self._queue()).append((seg.order, seg))
            return
        i = self._index(start)
        n = len(segs)
        while i < n and segs[i].start < end:
            seg = segs[i]
            i += 1
            state = seg.state
            if state & SACKED or (seg.ts == now and state & RETRANS):
                continue  # delivered already, or another piece of the same resend
            if not state & RETRANS:
                self.retrans_out += seg.end - seg.start
            seg.state = state | RETRANS | EVER
            seg.ts = now
            seg.order = self._sent
            self._sent += 1
            (self._by_time or self._queue()).append((seg.order, seg))
        if end > segs[-1].end:  # past what was logged (only after a timeout's rewind)
            seg = Segment(segs[-1].end, end, now, self._sent, EVER)
            self._sent += 1
            segs.append(seg)
            (self._by_time or self._queue()).append((seg.order, seg))

    def in_flight(self) -> int:
        """How many segments are logged as sent and not yet cumulatively acknowledged."""
        return len(self.segs) - self._head

    def _index(self, seq: int) -> int:
        """The index of the live segment holding seq, or of the first one after it."""
        segs, lo = self.segs, self._head
        i = bisect_right(segs, seq, lo, key=_start) - 1
        if i < lo:
            return lo
        return i + 1 if segs[i].end <= seq else i

    def reset(self) -> None:
        """A retransmission timeout: everything will be sent again from snd_una."""
        self.segs.clear()
        self._head = 0
        self._by_time = _NOTHING_SENT
        self._lost.clear()
        self.sacked_out = self.lost_out = self.retrans_out = self.segs_sacked = 0

    # ------------------------------------------------------------------ what arrives

    def on_rtt_sample(self, rtt: float, now: float) -> None:
        """RFC 8985 §6.2 step 1: a windowed minimum, so a longer new path is learnt."""
        if self.min_rtt is None or rtt <= self.min_rtt \
                or now - self._min_rtt_time > MIN_RTT_WINDOW:
            self.min_rtt = rtt
            self._min_rtt_time = now

    def acked(self, ack: int, now: float) -> bool:
        """A cumulative ACK up to `ack`: drop what it covers; True if it delivered any
        segment not SACKed before."""
        segs = self.segs
        i = self._head
        n = len(segs)
        newest: Segment | None = None  # the latest sent of the plain segments delivered
        fack = self.fack
        delivered = False
        while i < n:
            seg = segs[i]
            end = seg.end
            if end > ack:
                if seg.start < ack:  # acked in part (the peer took a piece of a resend)
                    self._forget(seg, ack - seg.start)
                    seg.start = ack
                break
            i += 1
            state = seg.state
            seg.state = state | GONE
            if not state:  # the common case, inline: sent once, neither SACKed nor lost
                delivered = True
                newest = seg
                if end > fack:
                    fack = end
                elif end < fack:
                    self.reordering_seen = True
            elif state & SACKED:
                self.sacked_out -= end - seg.start
                self.segs_sacked -= 1
            else:
                delivered = True
                self._forget(seg, end - seg.start)
                self.fack = fack
                self._delivered(seg, now)
                fack = self.fack
        self.fack = fack
        if newest is not None and newest.order > self.xmit_order:
            self.xmit_ts = newest.ts
            self.xmit_order = newest.order
            self.end_seq = newest.end
            self.rtt = now - newest.ts
        self._head = i
        if i == n and n:
            # All delivered: whatever the time queue still names is GONE (detect_loss
            # would skip it), so both go, and an idle connection holds neither.
            segs.clear()
            self._head = 0
            self._by_time = _NOTHING_SENT
        elif i > 64 and 2 * i > n:
            del segs[:i]
            self._head = 0
        return delivered

    def _queue(self) -> deque[tuple[int, Segment]]:
        """A time queue of its own, in place of the shared empty one."""
        self._by_time = deque()
        return self._by_time

    def _forget(self, seg: Segment, size: int) -> None:
        state = seg.state
        if state & SACKED:
            self.sacked_out -= size
            return
        if state & LOST:
            self.lost_out -= size
        if state & RETRANS:
            self.retrans_out -= size

    def sacked(self, left: int, right: int, sb: Scoreboard, now: float) -> bool:
        """The block [left, right) was newly merged into `sb`: mark the segments it
        completes as delivered. True if there was any."""
        segs = self.segs
        n = len(segs)
        i = self._index(left)
        delivered = False
        block: tuple[int, int] | None = None
        while i < n:
            seg = segs[i]
            i += 1
            if seg.start >= right:
                break
            state = seg.state
            if state & SACKED:
                continue
            if block is None or not block[0] <= seg.start < block[1]:
                block = sb.block_of(seg.start)
                if block is None:
                    continue
            if seg.end > block[1]:
                continue  # SACKed only in part
            size = seg.end - seg.start
            if state & LOST:
                self.lost_out -= size
            if state & RETRANS:
                self.retrans_out -= size
            seg.state = (state & EVER) | SACKED
            self.sacked_out += size
            self.segs_sacked += 1
            delivered = True
            self._delivered(seg, now)
        return delivered

    def _delivered(self, seg: Segment, now: float) -> None:
        """RFC 8985 §6.2 steps 2 and 3 for one segment, taken in ascending order."""
        ts = seg.ts
        rtt = now - ts
        if seg.state & EVER and (self.min_rtt is None or rtt + _EPSILON < self.min_rtt):
            # Delivered sooner than any round trip (exactly min_rtt, as on a path of
            # constant delay, is not sooner, whatever the float rounding): the ACK is
            # for an older copy, so it dates nothing. (RFC 8985 also skips a resend
            # when the ACK's TSecr predates it; as Linux, we do not: a SACK echoes
            # TS.Recent, the TSval of the last in-order segment (RFC 7323 §4.3), so that
            # test would discard every SACKed resend and blind RACK to lost ones.)
            pass
        elif seg.order > self.xmit_order:
            self.xmit_ts = ts
            self.xmit_order = seg.order
            self.end_seq = seg.end
            self.rtt = rtt
        if seg.end > self.fack:
            self.fack = seg.end
        elif seg.end < self.fack and not seg.state & EVER:
            self.reordering_seen = True  # it arrived after something sent later

    # ------------------------------------------------------------------ loss

    def reo_wnd(self, in_recovery: bool, srtt: float | None) -> float:
        """RFC 8985 §6.2 step 4 (RACK_update_reo_wnd; the DSACK part is on_dsack)."""
        if not self.reordering_seen and (in_recovery or self.segs_sacked >= DUP_THRESH):
            return 0.0
        if self.min_rtt is None:
            return 0.0
        wnd = self.reo_wnd_mult * self.min_rtt / 4
        return min(wnd, srtt) if srtt is not None else wnd

    def on_dsack(self, snd_una: int, snd_nxt: int) -> None:
        """A D-SACK (RFC 2883): a retransmission was needless. Widen the reordering
        window by min_rtt / 4, at most once a round trip, for the next PERSIST_ROUNDS
        recoveries (RFC 8985 §6.2 step 4)."""
        if self._dsack_round is not None and snd_una < self._dsack_round:
            return
        self._dsack_round = snd_nxt
        self.reo_wnd_mult += 1
        self.reo_wnd_persist = PERSIST_ROUNDS

    def recovery_ended(self) -> None:
        if self.reo_wnd_persist > 0:
            self.reo_wnd_persist -= 1
            if self.reo_wnd_persist == 0:
                self.reo_wnd_mult = 1

    def detect_loss(self, now: float, reo_wnd: float) -> tuple[int, float]:
        """RFC 8985 §6.2 step 5: mark lost what was sent before the most recently sent
        delivered segment, longer ago than RACK.rtt + reo_wnd. Returns (how many were
        marked, seconds until the next one may be: the reordering timer, or 0)."""
        queue = self._by_time
        marked = 0
        xmit_order = self.xmit_order
        deadline = self.rtt + reo_wnd - now
        while queue:
            order, seg = queue[0]
            state = seg.state
            if seg.order != order or state & (SACKED | GONE) \
                    or state & (LOST | RETRANS) == LOST:
                queue.popleft()  # resent since, delivered, or already found lost
                continue
            if order >= xmit_order:
                break  # this and everything sent later are not overdue by RACK's rule
            if seg.ts + deadline > _EPSILON:
                # the others sent before RACK.xmit_ts are due by then too (RFC 8985
                # §6.2: one timer for the latest of them)
                return marked, self.xmit_ts + deadline
            queue.popleft()
            self.mark_lost(seg)
            marked += 1
        return marked, 0.0

    def mark_lost(self, seg: Segment) -> None:
        state = seg.state
        if state & (SACKED | GONE):
            return
        size = seg.end - seg.start
        if not state & LOST:
            self.lost_out += size
        if state & RETRANS:
            self.retrans_out -= size
            self.lost_retransmissions += 1
        seg.state = (state | LOST) & ~RETRANS
        heapq.heappush(self._lost, (seg.start, seg.order, seg))

    def on_timeout(self, now: float, reo_wnd: float) -> None:
        """RFC 8985 §6.3 (RACK_mark_losses_on_RTO): the first segment is lost, and so is
        every other sent longer than RACK.rtt + reo_wnd ago (a walk over the flight,
        once a timeout)."""
        segs = self.segs
        for i in range(self._head, len(segs)):
            seg = segs[i]
            if not seg.state & SACKED and (
                    i == self._head or seg.ts + self.rtt + reo_wnd <= now):
                self.mark_lost(seg)

    def unmark_lost(self) -> None:
        """A loss response was undone: what was marked lost and not resent was late, not
        lost, and goes back in the time-ordered queue, where RACK may find it lost again
        (a walk over the flight, on an undo only)."""
        live = []
        for seg in self.segs[self._head:]:
            state = seg.state
            if state & LOST and not state & RETRANS:
                self.lost_out -= seg.end - seg.start
                seg.state = state = state & ~LOST
            if not state & SACKED and state & (LOST | RETRANS) != LOST:
                live.append((seg.order, seg))  # in flight: sent once, or resent
        live.sort(key=_first)
        self._by_time = deque(live)
        self._lost.clear()

    def next_lost(self) -> Segment | None:
        """RFC 6675 NextSeg() rule 1: the lowest segment lost and not yet resent."""
        heap = self._lost
        while heap:
            seg = heap[0][2]
            if seg.state & (LOST | RETRANS | SACKED | GONE) == LOST:
                return seg
            heapq.heappop(heap)
        return None

    def pipe(self, snd_una: int, snd_max: int) -> int:
        """RFC 6675 SetPipe(): bytes in flight, counting a retransmission once more."""
        return snd_max - snd_una - self.sacked_out - self.lost_out + self.retrans_out
