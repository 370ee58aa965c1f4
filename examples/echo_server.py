"""An echo server: asyncio's stream API, with `utcp.` where `asyncio.` was.

    python examples/echo_server.py [PORT]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import utcp


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    print(f"{peer}: done, {writer.get_extra_info('stats').bytes_received} bytes echoed")
    writer.close()
    await writer.wait_closed()


async def main(port: int) -> None:
    server = await utcp.start_server(handle, "127.0.0.1", port)  # was: asyncio.start_server
    print(f"utcp echo server on udp port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8888))
