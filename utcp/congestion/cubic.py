"""CUBIC (RFC 9438) with HyStart++ (RFC 9406) leaving slow start before it overshoots.

Window sizes are bytes, as everywhere in utcp; the cubic function itself is written in
segments, as the RFC writes it, and converted at the edges.
"""

from __future__ import annotations

from typing import Final

from utcp.congestion.base import CongestionControl

C: Final = 0.4                      # RFC 9438 §5
BETA: Final = 0.7                   # multiplicative decrease
ALPHA: Final = 3 * (1 - BETA) / (1 + BETA)  # Reno-friendly additive increase (§4.3)

# HyStart++ (RFC 9406 §4.3)
MIN_RTT_THRESH: Final = 0.004
MAX_RTT_THRESH: Final = 0.016
MIN_RTT_DIVISOR: Final = 8
N_RTT_SAMPLE: Final = 8


class Cubic(CongestionControl):
    name = "cubic"

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self.w_max = 0.0            # window (bytes) before the last reduction
        self.k = 0.0                # seconds from the epoch to reach w_max again
        self.epoch: float | None = None
        self.w_est = 0.0            # the window Reno would have (bytes)
        self.srtt = 0.0
        # HyStart++: the minimum RTT of this round and of the last
        self.round_min = float("inf")
        self.last_round_min = float("inf")
        self.round_samples = 0
        self.hystart_exits = 0

    # ------------------------------------------------------------------ events

    def on_rtt_sample(self, rtt: float, now: float) -> None:
        self.srtt = rtt if self.srtt == 0 else 0.875 * self.srtt + 0.125 * rtt
        if rtt < self.round_min:
            self.round_min = rtt
        self.round_samples += 1
        if self.in_slow_start and self.round_samples >= N_RTT_SAMPLE \
                and self.last_round_min != float("inf"):
            eta = min(max(self.last_round_min / MIN_RTT_DIVISOR, MIN_RTT_THRESH),
                      MAX_RTT_THRESH)
            if self.round_min >= self.last_round_min + eta:
                # queues are building: leave slow start now rather than after a loss
                self.ssthresh = self.cwnd
                self.hystart_exits += 1

    def on_round(self, now: float) -> None:
        self.last_round_min = self.round_min
        self.round_min = float("inf")
        self.round_samples = 0

    @property
    def in_slow_start(self) -> bool:
        return self.ssthresh is None or self.cwnd < self.ssthresh

    def on_ack(self, acked: int, flight: int, now: float) -> None:
        if 2 * flight < self.cwnd:
            return  # not cwnd-limited (RFC 9438 §4.7, RFC 7661)
        mss = self.mss
        if self.in_slow_start:
            self.cwnd += min(acked, 2 * mss)
            return
        if self.epoch is None:
            self.epoch = now
            self.w_est = float(self.cwnd)
            if self.w_max > self.cwnd:
                self.k = ((self.w_max - self.cwnd) / mss / C) ** (1 / 3)
            else:
                self.k = 0.0
                self.w_max = float(self.cwnd)
        t = now - self.epoch + self.srtt
        target = (C * (t - self.k) ** 3 * mss) + self.w_max          # §4.2, in bytes
        target = min(max(target, float(self.cwnd)), 1.5 * self.cwnd)  # §4.4
        self.w_est += ALPHA * acked / self.cwnd * mss                # §4.3
        if self.w_est > target:
            self.cwnd = max(self.cwnd, int(self.w_est))               # Reno-friendly region
        else:
            self.cwnd += max(int((target - self.cwnd) * acked / self.cwnd), 0)

    def _reduce(self) -> int:
        cwnd = float(self.cwnd)
        # fast convergence (§4.7): a flow below its last maximum yields to newer flows
        self.w_max = cwnd * (1 + BETA) / 2 if cwnd < self.w_max else cwnd
        ssthresh = self.ssthresh = max(int(cwnd * BETA), 2 * self.mss)
        self.epoch = None
        return ssthresh

    def on_loss(self, flight: int, now: float) -> None:
        self.cwnd = self._reduce() + 3 * self.mss  # the connection deflates at recovery end

    def on_rto(self, flight: int, now: float) -> None:
        self._reduce()
        self.cwnd = self.mss

    def on_recovery_end(self) -> None:
        if self.ssthresh is not None:
            self.cwnd = self.ssthresh
