"""NewReno: slow start and congestion avoidance of RFC 5681, recovery of RFC 6582."""

from __future__ import annotations

from utcp.congestion.base import CongestionControl


class NewReno(CongestionControl):
    name = "newreno"

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self._ca_acked = 0  # bytes acked since cwnd last grew in congestion avoidance

    def on_ack(self, acked: int, flight: int, now: float) -> None:
        if 2 * flight < self.cwnd:
            return  # not cwnd-limited: the window was not in use, so not tested (RFC 7661)
        if self.ssthresh is None or self.cwnd < self.ssthresh:
            # RFC 5681 §3.1 with RFC 3465's byte counting, L = 2 * SMSS
            self.cwnd += min(acked, 2 * self.mss)
            return
        self._ca_acked += acked
        if self._ca_acked >= self.cwnd:  # one MSS per cwnd of data acknowledged
            self._ca_acked -= self.cwnd
            self.cwnd += self.mss

    def on_loss(self, flight: int, now: float) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)   # RFC 5681 eq. 4
        self.cwnd = self.ssthresh + 3 * self.mss          # RFC 6582 §3.2 step 2
        self._ca_acked = 0

    def on_rto(self, flight: int, now: float) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._ca_acked = 0

    def on_recovery_end(self) -> None:
        if self.ssthresh is not None:
            self.cwnd = self.ssthresh                     # RFC 6582 §3.2 step 3, option 1
