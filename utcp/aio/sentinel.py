"""The loop-shutdown hook of port.py, apart: an async generator, which mypyc cannot compile."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any


async def loop_shutdown_sentinel(
        loop_ref: weakref.ref[asyncio.AbstractEventLoop],
        ports_of: Callable[[asyncio.AbstractEventLoop | None], list[Any]],
        linger: Callable[[asyncio.AbstractEventLoop, list[Any]], Awaitable[None]],
) -> AsyncGenerator[None, None]:
    """An async generator the loop tracks: `shutdown_asyncgens` closes it, which runs
    the `finally` inside the still-running loop (port._track starts it).

    asyncio.run, asyncio.Runner and uvloop.run call `shutdown_asyncgens` just before
    `loop.close()`, and neither loop offers any other hook there. Without it a program
    whose `asyncio.run` returns with connections open (or that is interrupted) leaves
    its peers waiting, since the sockets then close only when collected, if ever.
    """
    try:
        yield
    finally:
        loop = loop_ref()
        ports = ports_of(loop)
        for port in ports:
            port.reset_connections(closing_too=False)
        if loop is not None and ports:
            await linger(loop, ports)
        for port in ports:
            port.reset_connections(closing_too=True)
