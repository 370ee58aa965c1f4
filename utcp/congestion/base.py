"""The interface every congestion-control algorithm implements."""

from __future__ import annotations


class CongestionControl:
    """Window bookkeeping in bytes; `ssthresh` is None until the first loss (like TCP_INFO)."""

    name = "base"

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh: int | None = None

    def set_mss(self, mss: int) -> None:
        self.mss = mss

    def on_ack(self, acked: int, flight: int, now: float) -> None:
        """New data acknowledged outside loss recovery."""
        raise NotImplementedError

    def on_loss(self, flight: int, now: float) -> None:
        """Entering fast recovery (RFC 5681 §3.2 step 2): shrink once per window."""
        raise NotImplementedError

    def on_rto(self, flight: int, now: float) -> None:
        """The retransmission timer fired (RFC 5681 §3.1, eq. 4): back to one segment."""
        raise NotImplementedError

    def on_recovery_end(self) -> None:
        """Full ACK ended fast recovery (RFC 6582 §3.2 step 3)."""
        raise NotImplementedError

    def undo(self, cwnd: int, ssthresh: int | None) -> None:
        """The last loss response was needless (every retransmission came back as a
        duplicate): return to the window it started from (RFC 4015 §3.2, as Linux's
        tcp_undo_cwnd_reduction)."""
        self.cwnd = max(self.cwnd, cwnd)
        if ssthresh is None or self.ssthresh is None:
            self.ssthresh = ssthresh
        else:
            self.ssthresh = max(self.ssthresh, ssthresh)

    def on_rtt_sample(self, rtt: float, now: float) -> None:
        """A clean RTT sample (Karn's rule applied). Delay-aware algorithms use it."""

    def on_round(self, now: float) -> None:
        """A round trip ended: everything sent when the last round began is acknowledged."""
