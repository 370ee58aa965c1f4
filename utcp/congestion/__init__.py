"""Congestion control behind one small interface, chosen by name (`Config.congestion`).

Loss *detection* is `utcp.recovery.LossRecovery`'s (RACK, duplicate ACKs, timeouts);
an algorithm only answers how big the window is after each event. That keeps recovery logic in one
place and lets algorithms be swapped without touching the state machine.
"""

from __future__ import annotations

from collections.abc import Callable

from utcp.congestion.base import CongestionControl
from utcp.congestion.cubic import Cubic
from utcp.congestion.newreno import NewReno

_REGISTRY: dict[str, Callable[[int, int], CongestionControl]] = {"newreno": NewReno,
                                                                "cubic": Cubic}


def create(name: str, mss: int, initial_window: int) -> CongestionControl:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown congestion algorithm {name!r}") from None
    return factory(mss, initial_window)


__all__ = ["CongestionControl", "Cubic", "NewReno", "create"]
