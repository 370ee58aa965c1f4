"""A connection's timers as one table, keyed by `Timer` (smoltcp's habit).

Nine loose `_*_deadline` fields had to be listed wherever all of them mattered (the
earliest, the walk when the clock fires, the clearing when a connection ends), and the
lists drifted apart: a connection that ended could keep a probe timer armed. Here
`cancel_all` and `earliest` see every timer by construction, and `Connection.handle_timer`
walks them in `Timer` order, which is their priority: a timer whose handler ends the
connection (2MSL, an orphan's FIN_WAIT_2 timeout, the user timeout, the last
retransmission) runs before one that would send on it.
"""

from __future__ import annotations

import enum
from typing import Final


class Timer(enum.IntEnum):
    """Every timer a connection has, in the order they are served when due together."""

    TIME_WAIT = 0   # 2MSL in TIME_WAIT (RFC 9293 §3.6)
    FIN_WAIT_2 = 1  # an orphan's Config.fin_timeout in FIN_WAIT_2 (Linux's tcp_fin_timeout)
    USER = 2        # TCP_USER_TIMEOUT (RFC 5482): data unacknowledged for this long fails
    RTX = 3         # retransmission timeout (RFC 6298)
    REORDER = 4     # RACK's reordering window ran out (RFC 8985 §6.3)
    TLP = 5         # tail loss probe (RFC 8985 §7)
    PERSIST = 6     # zero-window probe, or the sender SWS override (RFC 9293 §3.8.6.2.1)
    ACK = 7         # delayed ACK (RFC 9293 §3.8.6.3)
    IDLE = 8        # Config.idle_timeout
    KEEPALIVE = 9   # keepalive idle time, then its probe interval (RFC 1122 §4.2.3.6)


_COUNT: Final = len(Timer)
_ALL: Final = tuple(Timer)


class Timers:
    """Absolute deadlines on the caller's clock; None when a timer is not armed.

    Timers are taken as `int` (a `Timer` is one): under mypyc the table is then indexed
    natively, where an enum-typed index takes the generic item lookup."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: list[float | None] = [None] * _COUNT

    def arm(self, timer: int, at: float) -> None:
        self._at[timer] = at

    def arm_if_idle(self, timer: int, at: float) -> None:
        """Arm unless already armed: a running timer keeps its deadline (RFC 6298 §5.1)."""
        if self._at[timer] is None:
            self._at[timer] = at

    def cancel(self, timer: int) -> None:
        self._at[timer] = None

    def cancel_all(self) -> None:
        self._at = [None] * _COUNT

    def get(self, timer: int) -> float | None:
        return self._at[timer]

    def armed(self, timer: int) -> bool:
        return self._at[timer] is not None

    def due(self, timer: int, now: float) -> bool:
        at = self._at[timer]
        return at is not None and now >= at

    def earliest(self) -> float | None:
        best: float | None = None
        for at in self._at:
            if at is not None and (best is None or at < best):
                best = at
        return best

    def pending(self) -> dict[Timer, float]:
        """The armed timers, for logs and tests."""
        return {t: at for t, at in zip(_ALL, self._at, strict=True) if at is not None}
