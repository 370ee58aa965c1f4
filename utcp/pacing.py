"""Pacing: a connection's data leaves at about cwnd / srtt instead of in bursts.

Without it, a window's worth of segments goes out at once whenever the window opens
(a new connection with a large initial window, an application that writes after an
idle period, an ACK that frees a lot of room): the burst waits in the bottleneck's
queue, or in the receiver's socket buffer, and overflows it long before the average
rate would. Linux paces by the rate it computes in tcp_update_pacing_rate():

    rate = gain * cwnd / srtt,  gain 2 in slow start (cwnd < ssthresh / 2: the window
    doubles every round trip), 1.2 in congestion avoidance

(sysctls tcp_pacing_ss_ratio and tcp_pacing_ca_ratio), so pacing spreads the window
over the round trip without being what limits the sending rate.

Here the rate fills a token bucket; a paced segment leaves when the bucket holds its
bytes. The bucket holds at most two segments or about a millisecond of the rate,
whichever is more: Linux sizes its TSO bursts the same way (tcp_min_tso_segs = 2,
sk_pacing_shift = 10, i.e. rate / 1024), and an event loop sleeps in steps of about a
millisecond (epoll's timeout), so a smaller bucket would lose rate at every wake-up.
On loopback the rate is hundreds of MB/s and a millisecond of it hundreds of
kilobytes: pacing seldom holds anything there. A new connection starts with ten
segments of credit, the burst RFC 6928's initial window sends anyway (Linux's fq qdisc
gives new flows the same initial quantum); what a larger initial window adds is paced.

Only what is sent in bulk is paced: new data, the go-back-N resend after a timeout,
and RFC 6675 recovery's sends after its first. ACKs, SYNs, RSTs, window probes,
keepalives, the fast retransmission and tail loss probes leave at once, and take no
credit: each is one segment that a timer or the peer asked for now.
"""

from __future__ import annotations

import math
from typing import Final

SLOW_START_GAIN: Final = 2.0          # Linux's tcp_pacing_ss_ratio, 200 %
AVOIDANCE_GAIN: Final = 1.2           # tcp_pacing_ca_ratio, 120 %
HORIZON: Final = 0.001                # seconds of the rate the bucket holds (see above)
MIN_BURST_SEGMENTS: Final = 2         # tcp_min_tso_segs
INITIAL_SEGMENTS: Final = 10          # the initial window of RFC 6928, as fq's initial_quantum
_SLACK: Final = 1.0                   # bytes: float rounding must not hold a segment at its time


class Pacer:
    """The token bucket of one connection. The connection drives it once per send loop:

    `refill` brings the credit up to `now` and returns it; the loop spends it on
    segments (`credit -= n`) while `blocks(now, credit, n)` is False; `spent` stores
    what is left. `deadline` is when a blocked segment may go: a timer of the
    connection's, like its retransmission timer.
    """

    __slots__ = ("_held", "_last", "burst", "credit", "deadline", "holds", "rate")

    def __init__(self) -> None:
        self.rate = 0.0                     # bytes per second; 0 = not pacing (no RTT yet)
        self.burst = 0.0                    # the bucket's size, bytes
        self.credit = 0.0                   # bytes that may leave now; negative: owed
        self.deadline: float | None = None  # a blocked segment's time to leave
        self._held: float | None = None     # the deadline before this send loop
        self._last: float | None = None     # when `credit` was brought up to date
        self.holds = 0                      # send loops the pacer stopped

    def refill(self, now: float, cwnd: int, ssthresh: int | None, srtt: float | None,
               mss: int) -> float:
        """The credit at `now` (inf when there is no rate to pace by)."""
        self._held, self.deadline = self.deadline, None
        if not srtt or srtt <= 0.0:
            self.rate = 0.0
            return math.inf
        gain = SLOW_START_GAIN if ssthresh is None or cwnd < ssthresh // 2 else AVOIDANCE_GAIN
        rate = self.rate = gain * cwnd / srtt
        # max and min of two as conditional expressions: no builtin call per send loop
        burst = rate * HORIZON
        if burst < MIN_BURST_SEGMENTS * mss:
            burst = float(MIN_BURST_SEGMENTS * mss)
        self.burst = burst
        last = self._last
        if last is None:
            credit = float(INITIAL_SEGMENTS * mss)
            if credit < burst:
                credit = burst
        else:
            credit = self.credit
            if credit < burst and now > last:
                # what the initial credit holds above `burst` stays until it is spent
                credit += (now - last) * rate
                if credit > burst:
                    credit = burst
        self._last = now
        self.credit = credit
        return credit

    def blocks(self, now: float, credit: float, n: int) -> bool:
        """True if a segment of `n` bytes must wait; then `deadline` says until when.

        A segment larger than the bucket (a path MTU probe) waits for a full bucket and
        leaves the credit negative, so the segments after it wait their turn.
        """
        need = min(n, self.burst)
        if credit + _SLACK >= need or not self.rate:
            return False
        self.holds += 1
        held = self._held
        if held is not None and held > now:
            # the timer is already armed for a moment close enough: keep it rather than
            # move it with every ACK that changes the rate
            self.deadline = held
            return True
        deadline = now + (need - credit) / self.rate
        if deadline <= now:
            self.holds -= 1
            return False  # rounding: due already
        self.deadline = deadline
        return True

    def spent(self, credit: float) -> None:
        if self.rate:
            self.credit = credit
