"""Tests for utcp.state: the RFC 9293 §3.3.2 state diagram as a table."""

from __future__ import annotations

import pytest

from utcp.state import (
    CAN_RECEIVE,
    CAN_SEND,
    SYNCHRONIZED,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    next_state,
)

S, E = State, Event


def walk(start: State, *events: Event) -> list[State]:
    states = [start]
    for event in events:
        states.append(next_state(states[-1], event))
    return states


def test_exactly_eleven_states() -> None:
    assert [s.name for s in State] == [
        "CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1",
        "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT",
    ]
    assert len(State) == 11


def test_active_open() -> None:
    assert walk(S.CLOSED, E.ACTIVE_OPEN, E.RCV_SYN_ACK) == [
        S.CLOSED, S.SYN_SENT, S.ESTABLISHED]


def test_passive_open() -> None:
    assert walk(S.LISTEN, E.PASSIVE_OPEN, E.RCV_ACK_OF_SYN) == [
        S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]


def test_simultaneous_open() -> None:
    assert walk(S.CLOSED, E.ACTIVE_OPEN, E.RCV_SYN, E.RCV_ACK_OF_SYN) == [
        S.CLOSED, S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED]


def test_active_close() -> None:
    assert walk(S.ESTABLISHED, E.CLOSE, E.RCV_ACK_OF_FIN, E.RCV_FIN, E.TIMEOUT_2MSL) == [
        S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED]


def test_passive_close() -> None:
    assert walk(S.ESTABLISHED, E.RCV_FIN, E.CLOSE, E.RCV_ACK_OF_FIN) == [
        S.ESTABLISHED, S.CLOSE_WAIT, S.LAST_ACK, S.CLOSED]


def test_simultaneous_close() -> None:
    assert walk(S.ESTABLISHED, E.CLOSE, E.RCV_FIN, E.RCV_ACK_OF_FIN, E.TIMEOUT_2MSL) == [
        S.ESTABLISHED, S.FIN_WAIT_1, S.CLOSING, S.TIME_WAIT, S.CLOSED]


def test_fin_wait_1_fin_ack_of_fin() -> None:
    assert next_state(S.FIN_WAIT_1, E.RCV_FIN_ACK_OF_FIN) is S.TIME_WAIT


def test_time_wait_2msl() -> None:
    assert next_state(S.TIME_WAIT, E.TIMEOUT_2MSL) is S.CLOSED


def test_close_before_established() -> None:
    assert next_state(S.SYN_SENT, E.CLOSE) is S.CLOSED
    assert next_state(S.SYN_RCVD, E.CLOSE) is S.FIN_WAIT_1
    assert next_state(S.LISTEN, E.CLOSE) is S.CLOSED


def test_whole_connection_both_sides() -> None:
    client = walk(S.CLOSED, E.ACTIVE_OPEN, E.RCV_SYN_ACK, E.CLOSE, E.RCV_ACK_OF_FIN,
                  E.RCV_FIN, E.TIMEOUT_2MSL)
    server = walk(S.LISTEN, E.PASSIVE_OPEN, E.RCV_ACK_OF_SYN, E.RCV_FIN, E.CLOSE,
                  E.RCV_ACK_OF_FIN)
    assert client[-1] is S.CLOSED and server[-1] is S.CLOSED
    assert S.TIME_WAIT in client and S.TIME_WAIT not in server


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.CLOSED, E.RCV_FIN),
        (S.CLOSED, E.CLOSE),
        (S.CLOSED, E.PASSIVE_OPEN),
        (S.LISTEN, E.ACTIVE_OPEN),
        (S.LISTEN, E.RCV_SYN_ACK),
        (S.SYN_SENT, E.RCV_ACK_OF_SYN),
        (S.SYN_SENT, E.RCV_FIN),
        (S.ESTABLISHED, E.ACTIVE_OPEN),
        (S.ESTABLISHED, E.RCV_ACK_OF_FIN),
        (S.ESTABLISHED, E.TIMEOUT_2MSL),
        (S.FIN_WAIT_1, E.CLOSE),
        (S.FIN_WAIT_2, E.RCV_ACK_OF_FIN),
        (S.CLOSE_WAIT, E.RCV_FIN),
        (S.LAST_ACK, E.CLOSE),
        (S.CLOSING, E.RCV_FIN),
        (S.TIME_WAIT, E.CLOSE),
        (S.TIME_WAIT, E.RCV_FIN_ACK_OF_FIN),
    ],
)
def test_illegal_transition(state: State, event: Event) -> None:
    assert (state, event) not in TRANSITIONS
    with pytest.raises(IllegalTransition) as info:
        next_state(state, event)
    assert state.name in str(info.value)
    assert event.value in str(info.value)


def test_missing_pairs_all_raise() -> None:
    for state in State:
        for event in Event:
            if (state, event) in TRANSITIONS:
                assert next_state(state, event) is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(IllegalTransition):
                    next_state(state, event)


@pytest.mark.parametrize("state", [s for s in State if s is not S.CLOSED])
def test_abort_leaves_every_state_but_closed(state: State) -> None:
    assert next_state(state, E.ABORT) is S.CLOSED


@pytest.mark.parametrize("state", [s for s in State if s not in (S.CLOSED, S.LISTEN)])
def test_rst_leaves_every_open_state(state: State) -> None:
    assert next_state(state, E.RCV_RST) is S.CLOSED


def test_rst_in_listen_is_not_a_transition() -> None:
    # RFC 9293 §3.10.7.2: in LISTEN an incoming RST is ignored, so there is no edge
    with pytest.raises(IllegalTransition):
        next_state(S.LISTEN, E.RCV_RST)


@pytest.mark.parametrize("event", [E.RCV_RST, E.ABORT])
def test_closed_cannot_be_left_by_rst_or_abort(event: Event) -> None:
    with pytest.raises(IllegalTransition):
        next_state(S.CLOSED, event)


def test_closed_is_left_only_by_an_open_call() -> None:
    # RFC 9293 §3.10.1: OPEN, active (SYN_SENT) or passive (LISTEN, where a listener
    # puts the connection it creates for a SYN)
    assert {ev for (st, ev) in TRANSITIONS if st is S.CLOSED} == {E.ACTIVE_OPEN, E.LISTEN}


def test_every_state_reachable_from_closed_or_listen() -> None:
    seen = {S.CLOSED, S.LISTEN}
    frontier = list(seen)
    while frontier:
        cur = frontier.pop()
        for (src, _ev), dst in TRANSITIONS.items():
            if src is cur and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(State)


def test_state_sets() -> None:
    assert {S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING,
            S.LAST_ACK, S.TIME_WAIT} == SYNCHRONIZED
    assert {S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT} == CAN_SEND
    # text is taken once synchronized and until the peer's FIN (SYN_RCVD's data comes
    # with the ACK that moves it to ESTABLISHED first)
    assert {S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2} == CAN_RECEIVE


def test_illegal_transition_is_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
