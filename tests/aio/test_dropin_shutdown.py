"""Issue #11 item 3: Ctrl-C and shutdown behave as asyncio's do.

- `async with server: await server.serve_forever()` with a client connected stops on the
  first SIGINT under asyncio.run (asyncio 3.11 does; 3.12 waits: CPython gh-123720);
- `Server.close_clients()` / `Server.abort_clients()` as in asyncio 3.13;
- a start_server handler that is cancelled (asyncio.run cancels every task on the way
  out) or fails has its connection closed, as asyncio 3.12 does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import textwrap
from pathlib import Path

import pytest

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, close_writer, port_of

ROOT = Path(__file__).resolve().parents[2]

# The server starts with Ctrl-C as a terminal delivers it: a suite run as a background job
# of a script (`pytest ... &` without job control) hands its children SIGINT ignored; Python
# then installs no KeyboardInterrupt handler, nor asyncio.Runner its own, and the SIGINT
# below did nothing until the test timed out (on the asyncio loop; uvloop's runs anyway).
SERVER = textwrap.dedent("""
    import asyncio, signal, sys
    import uvloop
    import utcp

    signal.signal(signal.SIGINT, signal.default_int_handler)

    async def handle(reader, writer):
        print("connected", flush=True)
        await reader.read()  # a client that says nothing keeps this waiting

    async def main():
        server = await utcp.start_server(handle, "127.0.0.1", 0,
                                         config=utcp.Config(msl=0.2))
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
""")


def loop_name() -> str:
    import uvloop

    return "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"


async def test_first_ctrl_c_stops_a_server_with_a_client_connected() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, loop_name(), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    writer: asyncio.StreamWriter | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            port = int(await proc.stdout.readline())
            reader, writer = await utcp.open_connection(HOST, port, config=FAST)
            assert await proc.stdout.readline() == b"connected\n"
            proc.send_signal(signal.SIGINT)
            returncode = await proc.wait()
        assert returncode == -signal.SIGINT  # KeyboardInterrupt, as asyncio.run's
        # The handler was cancelled on the way out, and its connection closed with it.
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if writer is not None:
            writer.transport.abort()


class Accepted:
    """A start_server callback that only notes each connection (and keeps it open)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.event.set()


async def test_cancelling_serve_forever_does_not_wait_for_clients() -> None:
    accepted = Accepted()
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(accepted, HOST, 0, config=FAST,
                                         start_serving=False)
        forever = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        _, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        await accepted.event.wait()
        forever.cancel()
    # asyncio 3.11 closes the server and returns; the connection is left as it is
    done, _ = await asyncio.wait([forever], timeout=TIMEOUT)
    assert done, "serve_forever() waited for the connected client"
    assert forever.cancelled()
    assert not server.is_serving()
    assert not writer.is_closing()
    writer.transport.abort()
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()


async def test_async_with_exits_at_once_when_cancelled() -> None:
    accepted = Accepted()
    server = await utcp.start_server(accepted, HOST, 0, config=FAST)
    entered = asyncio.Event()

    async def body() -> None:
        async with server:
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    async with asyncio.timeout(TIMEOUT):
        await entered.wait()
        _, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        await accepted.event.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=TIMEOUT)
    assert done, "async with server waited for the client after a cancel"
    writer.transport.abort()
    async with asyncio.timeout(TIMEOUT):
        await server.wait_closed()


async def _connected_pair(server: utcp.Server) -> tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]:
    reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"  # the server side exists now
    return reader, writer


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1024):
            writer.write(data)
        await asyncio.sleep(3600)  # keeps the connection: only close_clients ends it


@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
async def test_close_clients_and_abort_clients(how: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(_echo, HOST, 0, config=FAST)
        pairs = [await _connected_pair(server) for _ in range(2)]
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        assert not waiting.done()
        getattr(server, how)()
        for reader, writer in pairs:
            if how == "close_clients":
                assert await reader.read() == b""  # FIN
                await close_writer(writer)
            else:
                with pytest.raises(ConnectionResetError):
                    await reader.read()
                writer.transport.abort()
        await waiting


async def test_a_cancelled_handler_closes_its_connection() -> None:
    """...and nothing is logged: 3.11's StreamReaderProtocol reported the cancellation
    as an error in its done-callback."""
    tasks: list[asyncio.Task[None]] = []
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await asyncio.sleep(3600)

    try:
        async with asyncio.timeout(TIMEOUT):
            server = await utcp.start_server(handler, HOST, 0, config=FAST)
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            while not tasks:
                await asyncio.sleep(0.005)
            tasks[0].cancel()
            assert await reader.read() == b""
            await close_writer(writer)
            server.close()
            await server.wait_closed()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_failed_handler_closes_its_connection() -> None:
    """As asyncio's StreamReaderProtocol does already: the wrapper keeps it so."""
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise ValueError("handler bug")

    try:
        async with asyncio.timeout(TIMEOUT):
            server = await utcp.start_server(handler, HOST, 0, config=FAST)
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            assert await reader.read() == b""
            await close_writer(writer)
            server.close()
            await server.wait_closed()
    finally:
        loop.set_exception_handler(None)
    assert [type(c.get("exception")) for c in reported] == [ValueError]

