"""The one place tests look inside a connection.

Tests assert behaviour through `Connection`'s public surface (segments on the wire,
`get_timer`, `handle_timer`, `stats()`). A few values a test needs are not in `Stats`
(the RTO's backoff, RACK's reordering state, counters such as tail loss probes), and
one harness needs to copy a connection and reset what a copy holds: that is done
here, so that when the core moves them (recovery into its own class, counters into a
dataclass, buffers into classes; issue #13) one file changes, not every test module.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

import utcp
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.rack import SentLog


def counter(conn: Connection, name: str) -> int:
    """One of the connection's event counters, by name (`utcp.stats.Counters`; the
    ones `Stats` leaves out are there too)."""
    value = getattr(conn.counters, name)
    assert isinstance(value, int)
    return value


def dropped_segments(conn: Connection) -> int:
    """`stats().dropped_segments` without building a whole `Stats`: for a loop that asks
    after each of some 200,000 segments (building one each time made it 4x slower)."""
    return conn.counters.dropped_segments


def timer_heap_entries(endpoint: Endpoint) -> int:
    """Entries in the endpoint's deadline heap, stale ones included (they cost every
    push and pop a level when they pile up)."""
    return len(endpoint._heap)


def rto_backoff(conn: Connection) -> int:
    """How many times the retransmission timeout has doubled since the last clean RTT
    sample (RFC 6298 §5.5)."""
    return conn.recovery.rtt.backoff


def rack(conn: Connection) -> SentLog:
    """RACK's state (RFC 8985): `reordering_seen`, `reo_wnd_mult`,
    `lost_retransmissions`."""
    return conn.recovery.rack


def detached_copy(conn: Connection) -> Connection:
    """A deep copy of `conn` that tells no endpoint about its output: a probe to try
    segments on without touching the real connection (tests/test_attack_input.py).

    The core compiled with mypyc makes `Connection` a native class, which `copy` cannot
    rebuild: a test that needs a copy runs on the pure-Python build only (CI runs both)."""
    if utcp.compiled:
        pytest.skip("a compiled Connection cannot be copied; the pure-Python run covers this")
    memo: dict[int, Any] = {id(conn.notify): None}
    for chunk in conn.sndbuf.chunks:
        if isinstance(chunk, memoryview):  # a view of immutable bytes: shared, not copied
            memo[id(chunk)] = chunk
    return copy.deepcopy(conn, memo)


def forget_held_fin(conn: Connection) -> None:
    """Drop a FIN held out of order, so that a probe copy can try the next FIN without
    the first one standing in its way. Nothing on the wire can undo a held FIN, and a
    fresh copy for each of the ~16,000 FINs a cost measurement takes would copy the
    connection's megabytes of buffers each time."""
    conn.receiver.fin_seq = None
