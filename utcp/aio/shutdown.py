"""What a loop's shutdown does for the utcp connections still open in it.

asyncio.run, asyncio.Runner and uvloop.run call the loop's `shutdown_asyncgens` just before
`loop.close()`, and offer no other hook there. A port registers with `track`, which parks
one async generator on the running loop; closing it at shutdown resets or lingers the
loop's connections (`_loop_shutdown_sentinel`) as the kernel would for a process's TCP
sockets.

This module stays interpreted when the rest of `utcp/aio` is compiled: mypyc does not
compile async generators, and this runs once per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import weakref
from collections.abc import AsyncGenerator
from typing import Protocol

from utcp.endpoint import Endpoint
from utcp.state import State


class Held:
    """What stands for an open port wherever the port is held weakly: the loop's set of
    ports (below), the socket's `weakref.finalize` and the table of fixed ports in `api`.

    Compiled, `UdpPort` is a native class, which takes no weak reference; this class,
    interpreted in both builds, does. The port holds its `Held` and the `Held` the
    port, until `UdpPort.close` lets go (`port = None`): an open port dropped without
    a close is then freed by the cycle collector, whose collecting this object runs the
    finalizer that closes the socket. Ports of the library's own class make their
    method calls to one another in C, which an interpreted subclass taking weak
    references would turn into Python-level calls."""

    __slots__ = ("__weakref__", "port")

    def __init__(self, port: TrackedPort) -> None:
        self.port: TrackedPort | None = port


class TrackedPort(Protocol):
    """What this module needs of a `utcp.aio.port.UdpPort` (which imports this module)."""

    loop: asyncio.AbstractEventLoop
    endpoint: Endpoint
    closed: bool
    held: Held

    def reset_connections(self, *, closing_too: bool) -> None: ...


# The application closed, and its FIN waits for an ACK: what the kernel would go on
# sending as an orphan after the process is gone.
FIN_UNACKED = frozenset({State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})
SHUTDOWN_LINGER_IDLE = 1.0   # a loop shutting down waits for closing connections while
SHUTDOWN_LINGER_MAX = 10.0   # their ACKs keep coming, this long without one at most


# Ports per event loop, for the RSTs when the loop shuts down (below): an attribute of the
# loop where it takes one, found again by an attribute lookup (every client connection
# adds its port), the dictionary for a loop that refuses attributes.
_PORTS_ATTR = "_utcp_ports"
_loop_ports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                       weakref.WeakSet[Held]] = weakref.WeakKeyDictionary()
_SENTINEL_ATTR = "_utcp_shutdown_sentinel"


async def _loop_shutdown_sentinel(loop_ref: weakref.ref[asyncio.AbstractEventLoop],
                                  ) -> AsyncGenerator[None, None]:
    """An async generator the loop tracks: `shutdown_asyncgens` closes it, which runs
    the `finally` inside the still-running loop.

    asyncio.run, asyncio.Runner and uvloop.run call `shutdown_asyncgens` just before
    `loop.close()`, and neither loop offers any other hook there. Without it a program
    whose `asyncio.run` returns with connections open (or that is interrupted) leaves
    its peers waiting, since the sockets then close only when collected, if ever.
    """
    try:
        yield
    finally:
        loop = loop_ref()
        ports = _ports_of(loop) if loop is not None else []
        for port in ports:
            port.reset_connections(closing_too=False)
        if loop is not None and ports:
            await _linger_for_fins(loop, ports)
        for port in ports:
            port.reset_connections(closing_too=True)


async def _linger_for_fins(loop: asyncio.AbstractEventLoop, ports: list[TrackedPort]) -> None:
    """Let closed connections deliver what they still have and their FIN, while their
    peers keep acknowledging: `writer.write(data); writer.close()` at the end of
    `asyncio.run` delivers `data` with kernel TCP, whose orphan sockets outlive the
    process. Bounded, since a dead peer must not hold up the program's exit."""
    def progress() -> tuple[int, int] | None:
        closing = [conn for port in ports for conn in port.endpoint.connections.values()
                   if conn.state in FIN_UNACKED]
        return (len(closing), sum(c.counters.bytes_acked for c in closing)) if closing else None

    start = last_progress = loop.time()
    seen = progress()
    while seen is not None:
        now = loop.time()
        if now - last_progress > SHUTDOWN_LINGER_IDLE or now - start > SHUTDOWN_LINGER_MAX:
            return
        await asyncio.sleep(0.01)
        now_seen = progress()
        if now_seen != seen:
            seen, last_progress = now_seen, loop.time()


def _held_of(loop: asyncio.AbstractEventLoop) -> weakref.WeakSet[Held] | None:
    found: weakref.WeakSet[Held] | None = getattr(loop, _PORTS_ATTR, None)
    return found if found is not None else _loop_ports.get(loop)


def _ports_of(loop: asyncio.AbstractEventLoop) -> list[TrackedPort]:
    """The loop's ports still open."""
    return [port for held in list(_held_of(loop) or ())
            if (port := held.port) is not None and not port.closed]


def track(port: TrackedPort) -> None:
    """Have the running loop's shutdown reset (or linger for) `port`'s connections."""
    loop = port.loop
    ports = _held_of(loop)
    if ports is None:
        ports = weakref.WeakSet()
        try:
            setattr(loop, _PORTS_ATTR, ports)
        except AttributeError:
            _loop_ports[loop] = ports
    ports.add(port.held)
    if getattr(loop, _SENTINEL_ATTR, None) is not None:
        return
    # Only the running loop's own hook will do: then the loop holds the generator in its
    # set of live ones until shutdown_asyncgens. A port made outside the running loop
    # (or in a loop without the hooks) is reset by its finalizer alone.
    firstiter = sys.get_asyncgen_hooks().firstiter
    if getattr(firstiter, "__self__", None) is not loop:
        return
    agen = _loop_shutdown_sentinel(weakref.ref(loop))
    try:
        # On the loop itself, so it lives as long as the loop and no longer (the loop
        # and the generator's finalizer hook form a cycle the collector breaks). Set
        # before it starts: a started generator dropped at once would be closed at once.
        setattr(loop, _SENTINEL_ATTR, agen)
    except AttributeError:
        return
    with contextlib.suppress(StopIteration):
        agen.asend(None).send(None)  # runs the firstiter hook, stops at the yield
