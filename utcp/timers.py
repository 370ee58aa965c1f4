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

# Each timer's index into `Timers.at`, as a plain int constant: the hot paths index the
# table with these (`timers.at[T_RTX] = ...`). Under mypyc a Final int is a C constant
# and the indexing native; in the pure-Python build a global is read where the enum's
# member (`Timer.RTX`) costs a descriptor call through Python 3.11's enum machinery
# each time, and a method call (`Timers.arm`) a frame.
T_TIME_WAIT: Final = 0   # 2MSL in TIME_WAIT (RFC 9293 §3.6)
T_FIN_WAIT_2: Final = 1  # an orphan's Config.fin_timeout in FIN_WAIT_2 (Linux's tcp_fin_timeout)
T_USER: Final = 2        # TCP_USER_TIMEOUT (RFC 5482): data unacknowledged for this long fails
T_RTX: Final = 3         # retransmission timeout (RFC 6298)
T_REORDER: Final = 4     # RACK's reordering window ran out (RFC 8985 §6.3)
T_TLP: Final = 5         # tail loss probe (RFC 8985 §7)
T_PERSIST: Final = 6     # zero-window probe, or the sender SWS override (RFC 9293 §3.8.6.2.1)
T_ACK: Final = 7         # delayed ACK (RFC 9293 §3.8.6.3)
T_IDLE: Final = 8        # Config.idle_timeout
T_KEEPALIVE: Final = 9   # keepalive idle time, then its probe interval (RFC 1122 §4.2.3.6)


class Timer(enum.IntEnum):
    """Every timer a connection has, in the order they are served when due together: the
    names of the `T_*` indices, for logs, tests and `Timers.pending`."""

    TIME_WAIT = T_TIME_WAIT
    FIN_WAIT_2 = T_FIN_WAIT_2
    USER = T_USER
    RTX = T_RTX
    REORDER = T_REORDER
    TLP = T_TLP
    PERSIST = T_PERSIST
    ACK = T_ACK
    IDLE = T_IDLE
    KEEPALIVE = T_KEEPALIVE


_COUNT: Final = len(Timer)
_ALL: Final = tuple(Timer)


class Timers:
    """Absolute deadlines on the caller's clock, `at[timer]`; None when a timer is not
    armed.

    The methods say what they do; the per-segment paths read and write `at` directly,
    indexed by the `T_*` constants (a method call there cost the pure-Python build more
    than the work). `at` is the one list for the connection's life: it is cleared in
    place, so a caller may hold it for the length of a call."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: list[float | None] = [None] * _COUNT

    def arm(self, timer: int, at: float) -> None:
        self.at[timer] = at

    def arm_if_idle(self, timer: int, at: float) -> None:
        """Arm unless already armed: a running timer keeps its deadline (RFC 6298 §5.1)."""
        if self.at[timer] is None:
            self.at[timer] = at

    def cancel(self, timer: int) -> None:
        self.at[timer] = None

    def cancel_all(self) -> None:
        deadlines = self.at
        for timer in range(_COUNT):
            deadlines[timer] = None

    def get(self, timer: int) -> float | None:
        return self.at[timer]

    def armed(self, timer: int) -> bool:
        return self.at[timer] is not None

    def due(self, timer: int, now: float) -> bool:
        at = self.at[timer]
        return at is not None and now >= at

    def earliest(self) -> float | None:
        best: float | None = None
        for at in self.at:
            if at is not None and (best is None or at < best):
                best = at
        return best

    def pending(self) -> dict[Timer, float]:
        """The armed timers, for logs and tests."""
        return {t: at for t, at in zip(_ALL, self.at, strict=True) if at is not None}
