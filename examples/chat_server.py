"""A line-based chat server over utcp: every line a client sends goes to all the others.

    python examples/chat_server.py [PORT]          # then: python examples/chat_client.py PORT NAME

The first line a client sends is its name. The code is asyncio's stream API throughout;
only `utcp.start_server` differs from a TCP chat server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import utcp

clients: dict[asyncio.StreamWriter, str] = {}


def broadcast(line: str, *, exclude: asyncio.StreamWriter | None = None) -> None:
    data = (line + "\n").encode()
    for writer in list(clients):
        if writer is not exclude and not writer.is_closing():
            writer.write(data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        name = (await reader.readline()).decode(errors="replace").strip() or f"{peer[1]}"
        others = ", ".join(sorted(clients.values())) or "nobody yet"
        writer.write(f"* welcome {name}; here: {others}\n".encode())
        broadcast(f"* {name} joined", exclude=writer)
        clients[writer] = name
        print(f"{name} joined from {peer[0]}:{peer[1]}", flush=True)
        while line := await reader.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            if text:
                broadcast(f"{name}: {text}", exclude=writer)
        # EOF: the client half-closed; say goodbye and close our side too
        del clients[writer]
        broadcast(f"* {name} left")
        print(f"{name} left", flush=True)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    except (ConnectionError, TimeoutError, ValueError) as exc:
        name = clients.pop(writer, "?")
        print(f"{name}: connection lost ({exc})", flush=True)
        writer.transport.abort()


async def main(port: int) -> None:
    server = await utcp.start_server(handle, "127.0.0.1", port)  # was: asyncio.start_server
    print(f"chat server on udp 127.0.0.1 port {server.sockets[0].getsockname()[1]}",
          flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7777))
