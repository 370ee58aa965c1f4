"""What a connection tells the layer above it. Tiny frozen, slotted dataclasses (h11's habit)."""

from __future__ import annotations

from dataclasses import dataclass

from utcp.state import State


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
