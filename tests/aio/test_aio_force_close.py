"""Every abnormal end of a UtcpTransport goes through one `_force_close(exc)` path, as
CPython's selector transports do (issue #13): here the two that had none, a port whose
socket closes under a live connection and a loop shutting down with one open (its
RST was sent, but the protocol never heard)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, echo_server, port_of

ROOT = Path(__file__).resolve().parents[2]


class Lost(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def test_port_closed_under_a_connection_ends_it_with_connection_lost() -> None:
    async with echo_server() as server:
        protocol = Lost()
        transport, _ = await utcp.create_connection(lambda: protocol, HOST, port_of(server),
                                                    config=FAST)
        assert isinstance(transport, utcp.UtcpTransport)
        transport._port.close()  # type: ignore[attr-defined]
        async with asyncio.timeout(TIMEOUT):
            exc = await protocol.lost
        assert isinstance(exc, ConnectionAbortedError)
        assert transport.is_closing()
        # the server's side heard the RST sent before the socket closed
        async with asyncio.timeout(TIMEOUT):
            while server._ports[0].endpoint.connections:  # type: ignore[attr-defined]
                await asyncio.sleep(0.005)


SHUTDOWN = textwrap.dedent("""
    import asyncio, sys
    import uvloop
    import utcp

    class Told(asyncio.Protocol):
        def connection_lost(self, exc):
            print("lost", type(exc).__name__, flush=True)

    async def main():
        server = await utcp.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await utcp.create_connection(Told, "127.0.0.1", port)
        print("connected", flush=True)
        # returns with the connection open: asyncio.run's shutdown resets it

    (uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main())
    print("done", flush=True)
""")


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_loop_shutdown_ends_an_open_connection_with_connection_lost(runner: str) -> None:
    done = subprocess.run([sys.executable, "-c", SHUTDOWN, runner], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["connected", "lost ConnectionAbortedError", "done", ""]
