"""Packetization-layer path MTU discovery (RFC 8899's DPLPMTUD, as TCP needs it).

A connection starts at a segment size every path carries (`Config.mss`) and probes
upward to the largest the path takes, up to a ceiling: the peer's MSS option and the
local route's MTU (on loopback about 64 KiB, where one segment then carries 46 times
the payload, and per-segment work is what bounds a Python transport). Probes are
ordinary data segments of the candidate size (RFC 4821 §7.2's approach for TCP): an
acknowledgment confirms the size, a retransmission of the probe counts as a failed
probe, not as congestion.

A connection to a loopback address starts at the ceiling instead (`Endpoint._new_connection`),
as Linux's TCP does there: the route is all the path there usually is. Usually: a
forwarder on 127.0.0.1 (a tunnel's or a container's port proxy) may carry less, so the
size counts as confirmed, not as known, and two timeouts in a row fall back to the base
size and search from there, as for a size a probe confirmed.
"""

from __future__ import annotations

from typing import Final

MAX_PROBES: Final = 2          # failures at one size before the search lowers its ceiling
MIN_STEP: Final = 64           # stop when the untried range is narrower than this


class PmtuSearch:
    __slots__ = ("base", "candidate", "ceiling", "current", "failures", "hi", "probe_end",
                 "probe_seq", "probe_size", "probes_sent", "rto_streak")

    def __init__(self, base: int, ceiling: int, start: int | None = None) -> None:
        self.base = base            # BASE_PLPMTU as a segment size: known to work
        # the largest size confirmed so far; a loopback connection starts at the
        # ceiling, taken as confirmed, keeping the black-hole fallback (`on_rto`)
        self.current = base if start is None else start
        self.ceiling = ceiling      # MAX_PLPMTU: never probe above this
        self.hi = ceiling           # the smallest size not yet known to fail, less one
        self.failures = 0           # failed probes at `candidate`
        self.candidate = ceiling    # optimistic: on loopback the first probe is the last
        self.probe_seq: int | None = None
        self.probe_end = 0
        self.probe_size = 0
        self.probes_sent = 0
        self.rto_streak = 0

    @property
    def searching(self) -> bool:
        return self.hi - self.current >= MIN_STEP

    def next_size(self) -> int | None:
        """The size to probe with now, or None (done, or a probe is in flight)."""
        if self.probe_seq is not None or not self.searching:
            return None
        return self.candidate

    def sent(self, seq: int, size: int) -> None:
        self.probe_seq, self.probe_end, self.probe_size = seq, seq + size, size
        self.probes_sent += 1

    def acked(self, ack: int) -> int | None:
        """The new confirmed size if this cumulative ACK covers the probe."""
        if self.probe_seq is None or ack < self.probe_end:
            return None
        self.current = max(self.current, self.probe_size)
        self.probe_seq = None
        self.failures = 0
        self._bisect()
        return self.current

    def retransmitting(self, seq: int, n: int) -> bool:
        """A retransmission covering the probe's first byte: the probe was lost."""
        if self.probe_seq is None or not seq <= self.probe_seq < seq + max(n, 1):
            return False
        self.failures += 1
        if self.failures >= MAX_PROBES:  # this size does not pass: search below it
            self.hi = self.probe_size - 1
            self.failures = 0
            self._bisect()
        self.probe_seq = None
        return True

    def _bisect(self) -> None:
        self.candidate = (self.current + self.hi + 1) // 2

    def on_rto(self) -> bool:
        """True if repeated timeouts with a grown size suggest a black hole: fall back."""
        self.rto_streak += 1
        if self.rto_streak >= 2 and self.current > self.base:
            self.hi = self.current - 1
            self.current = self.base
            self.failures = 0
            self.rto_streak = 0
            self.probe_seq = None
            self._bisect()
            return True
        return False

    def progress(self) -> None:
        self.rto_streak = 0
