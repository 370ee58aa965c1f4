"""What a connection tells the layer above it. Tiny frozen, slotted dataclasses (h11's habit).

Immutable and compared by value, so the core queues shared instances rather than
building one per transition: `STATE_CHANGES[old][new]` for every transition of
`utcp.state.TRANSITIONS`, and one instance of each event that carries nothing (and of
`Terminated(None)`). Under mypyc a frozen dataclass is built through the `__init__` the
dataclasses module writes (object.__setattr__ per field): about 4,000 instructions, and
a connection made eleven of them between its two ends (issue #13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from utcp.state import TRANSITIONS, State


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The connection reached ESTABLISHED (or a later state straight from the handshake)."""


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer's FIN arrived in order: no byte follows what `read` returns."""


@dataclass(frozen=True, slots=True)
class SendClosed:
    """Everything we sent, FIN included, is acknowledged."""


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class Terminated:
    """The connection is CLOSED. `error` is None for an orderly end (or our own abort)."""

    error: Exception | None


Event = HandshakeCompleted | EofReceived | SendClosed | StateChanged | Terminated

HANDSHAKE_COMPLETED: Final = HandshakeCompleted()
EOF_RECEIVED: Final = EofReceived()
SEND_CLOSED: Final = SendClosed()
TERMINATED: Final = Terminated(None)  # an orderly end (or our own abort)


def _state_changes() -> dict[State, dict[State, StateChanged]]:
    table: dict[State, dict[State, StateChanged]] = {}
    for (old, _), new in TRANSITIONS.items():
        table.setdefault(old, {}).setdefault(new, StateChanged(old, new))
    return table


# every transition's event, made once: `STATE_CHANGES[old][new]`
STATE_CHANGES: Final = _state_changes()
