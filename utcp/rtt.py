"""Retransmission timeout estimation, exactly RFC 6298."""

from __future__ import annotations

from typing import Final

_ALPHA: Final = 1 / 8
_BETA: Final = 1 / 4
_K: Final = 4
_G: Final = 0.001  # clock granularity: the fake and the real clocks are both finer than 1 ms


class RttEstimator:
    """SRTT / RTTVAR / RTO with Karn's rule left to the caller (it only feeds clean samples)."""

    __slots__ = ("_base_rto", "backoff", "rto_max", "rto_min", "rttvar", "srtt")

    def __init__(self, rto_initial: float, rto_min: float, rto_max: float) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto_min = rto_min
        self.rto_max = rto_max
        # the first SYN waits exactly rto_initial (docs/protocol.md §5); rto_min bounds
        # measured RTOs
        self._base_rto = min(rto_initial, rto_max)
        self.backoff = 0  # exponent of the doubling since the last clean sample (§5.5)

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt                       # §2.2
            self.rttvar = rtt / 2
        else:                                      # §2.3: RTTVAR first, with the old SRTT
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self._base_rto = min(max(self.srtt + max(_G, _K * self.rttvar), self.rto_min),
                             self.rto_max)
        self.backoff = 0

    @property
    def rto(self) -> float:
        return min(self._base_rto * (1 << self.backoff), self.rto_max)

    def on_timeout(self) -> None:
        """§5.5: back off the timer; the cap keeps the exponent from growing forever."""
        if self._base_rto * (1 << self.backoff) < self.rto_max:
            self.backoff += 1
