"""Retransmission timeout estimation, exactly RFC 6298."""

from __future__ import annotations

from typing import Final

_ALPHA: Final = 1 / 8
_BETA: Final = 1 / 4
_K: Final = 4
_G: Final = 0.001  # clock granularity: the fake and the real clocks are both finer than 1 ms


class RttEstimator:
    """SRTT / RTTVAR / RTO with Karn's rule left to the caller (it only feeds clean samples).

    `rto` is a plain attribute, kept current by the two calls that change it: it is read
    for every segment sent and every ACK (a property cost the pure-Python build a call
    each time)."""

    __slots__ = ("_base_rto", "backoff", "rto", "rto_max", "rto_min", "rttvar", "srtt")

    def __init__(self, rto_initial: float, rto_min: float, rto_max: float) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto_min = rto_min
        self.rto_max = rto_max
        # the first SYN waits exactly rto_initial (docs/protocol.md §5); rto_min bounds
        # measured RTOs
        self._base_rto = min(rto_initial, rto_max)
        self.backoff = 0  # exponent of the doubling since the last clean sample (§5.5)
        self.rto = self._base_rto  # _base_rto doubled `backoff` times, at most rto_max

    def sample(self, rtt: float) -> None:
        if rtt < 0.0:
            rtt = 0.0
        srtt, rttvar = self.srtt, self.rttvar
        if srtt is None or rttvar is None:
            srtt = rtt                       # §2.2
            rttvar = rtt / 2
        else:                                # §2.3: RTTVAR first, with the old SRTT
            rttvar = (1 - _BETA) * rttvar + _BETA * abs(srtt - rtt)
            srtt = (1 - _ALPHA) * srtt + _ALPHA * rtt
        self.srtt, self.rttvar = srtt, rttvar
        # max and min of two, as conditional expressions: no builtin call per ACK
        var = _K * rttvar
        rto = srtt + (var if var > _G else _G)
        if rto < self.rto_min:
            rto = self.rto_min
        if rto > self.rto_max:
            rto = self.rto_max
        self._base_rto = self.rto = rto
        self.backoff = 0

    def on_timeout(self) -> None:
        """§5.5: back off the timer; the cap keeps the exponent from growing forever."""
        if self._base_rto * (1 << self.backoff) < self.rto_max:
            self.backoff += 1
        self.rto = min(self._base_rto * (1 << self.backoff), self.rto_max)
