"""The eleven RFC 9293 states and every transition between them, as data.

`TRANSITIONS[(state, event)]` is the next state. The connection moves only through
this table (`Connection.set_state` reads it, and calls `next_state` for a pair it
lacks), so a (state, event) pair missing from the table is a bug that raises
`IllegalTransition` instead of silently doing something else (h11's habit).
The table reads like the diagram of RFC 9293 §3.3.2.
"""

from __future__ import annotations

import enum

from utcp.errors import IllegalTransition

__all__ = ["CAN_RECEIVE", "CAN_SEND", "SYNCHRONIZED", "TRANSITIONS", "Event",
           "IllegalTransition", "State", "next_state"]


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RCVD = "SYN_RCVD"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    def __repr__(self) -> str:
        return f"State.{self.name}"

    # Members are singletons compared by identity, so identity hashing agrees with
    # equality; Enum's own __hash__ is a Python function (hash of the name) that every
    # `state in SYNCHRONIZED` paid, twice per segment.
    __hash__ = object.__hash__


class Event(enum.Enum):
    LISTEN = "listen"                    # a listener creates a connection for a SYN
    ACTIVE_OPEN = "active open"          # application connects: send SYN
    PASSIVE_OPEN = "passive open"        # a listener takes a SYN
    RCV_SYN = "SYN"                      # a SYN without ACK (simultaneous open)
    RCV_SYN_ACK = "SYN+ACK"              # the answer to our SYN
    RCV_ACK_OF_SYN = "ACK of SYN"        # the third message of the handshake
    CLOSE = "close"                      # application closes: send FIN after the data
    RCV_FIN = "FIN"                      # peer's FIN, in order
    RCV_ACK_OF_FIN = "ACK of FIN"        # our FIN is acknowledged
    RCV_FIN_ACK_OF_FIN = "FIN+ACK of FIN"  # FIN that also acknowledges ours
    TIMEOUT_2MSL = "2MSL timeout"
    RCV_RST = "RST"
    ABORT = "abort"                      # application abort, or a timeout gives up

    __hash__ = object.__hash__  # as State's: TRANSITIONS is looked up on each change


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    # opening
    (S.CLOSED, E.LISTEN): S.LISTEN,
    (S.CLOSED, E.ACTIVE_OPEN): S.SYN_SENT,
    (S.LISTEN, E.PASSIVE_OPEN): S.SYN_RCVD,
    (S.SYN_SENT, E.RCV_SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, E.RCV_SYN): S.SYN_RCVD,            # simultaneous open
    (S.SYN_RCVD, E.RCV_ACK_OF_SYN): S.ESTABLISHED,
    # closing, the side that closes first
    (S.SYN_SENT, E.CLOSE): S.CLOSED,
    (S.SYN_RCVD, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.FIN_WAIT_1, E.RCV_ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.RCV_FIN): S.CLOSING,            # simultaneous close
    (S.FIN_WAIT_1, E.RCV_FIN_ACK_OF_FIN): S.TIME_WAIT,
    (S.FIN_WAIT_2, E.RCV_FIN): S.TIME_WAIT,
    (S.CLOSING, E.RCV_ACK_OF_FIN): S.TIME_WAIT,
    (S.TIME_WAIT, E.TIMEOUT_2MSL): S.CLOSED,
    # closing, the side that closes second (half-close: CLOSE_WAIT may still send)
    (S.ESTABLISHED, E.RCV_FIN): S.CLOSE_WAIT,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.LAST_ACK, E.RCV_ACK_OF_FIN): S.CLOSED,
}

# RST and abort end every synchronized or opening state at once (RFC 9293 §3.10.7).
for _s in State:
    if _s not in (S.CLOSED, S.LISTEN):
        TRANSITIONS[(_s, E.RCV_RST)] = S.CLOSED
        TRANSITIONS[(_s, E.ABORT)] = S.CLOSED
TRANSITIONS[(S.LISTEN, E.ABORT)] = S.CLOSED
TRANSITIONS[(S.LISTEN, E.CLOSE)] = S.CLOSED
TRANSITIONS[(S.SYN_RCVD, E.RCV_RST)] = S.CLOSED

SYNCHRONIZED = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT,
                          S.CLOSING, S.LAST_ACK, S.TIME_WAIT})
# States in which the application may still queue data to send.
CAN_SEND = frozenset({S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT})
# States in which text from the peer is taken (RFC 9293 §3.10.7.4, seventh step) and a
# window update is worth announcing: the peer has not sent its FIN.
CAN_RECEIVE = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.name} on {event.value}") from None
