"""A chat client for examples/chat_server.py: stdin lines out, other people's lines in.

    python examples/chat_client.py PORT NAME [HOST]

End with Ctrl-D (EOF): the client half-closes, the server says goodbye and closes, and
the client exits once the server's FIN arrives, as a TCP client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading

import utcp


def read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[bytes]) -> None:
    """A daemon thread: blocking reads work for a terminal, a pipe and a file alike.

    It reads the file descriptor with os.read, not sys.stdin.buffer: when the server
    goes away first, the program exits with this thread still blocked in a read, and a
    thread blocked inside a buffered reader holds its lock, which the interpreter's
    shutdown then needs ("Fatal Python error: _enter_buffered_busy", an abort).
    """
    while chunk := os.read(sys.stdin.fileno(), 65536):
        loop.call_soon_threadsafe(lines.put_nowait, chunk)
    loop.call_soon_threadsafe(lines.put_nowait, b"")  # EOF


async def send_lines(writer: asyncio.StreamWriter, lines: asyncio.Queue[bytes]) -> None:
    while line := await lines.get():
        writer.write(line)
        await writer.drain()
    writer.write_eof()


async def main(host: str, port: int, name: str) -> None:
    reader, writer = await utcp.open_connection(host, port)  # was: asyncio.open_connection
    print(f"connected to {host}:{port} as {name}; Ctrl-D leaves", file=sys.stderr)
    writer.write(f"{name}\n".encode())
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    threading.Thread(target=read_stdin, args=(asyncio.get_running_loop(), lines),
                     daemon=True).start()
    sender = asyncio.create_task(send_lines(writer, lines))
    while line := await reader.readline():
        print(line.decode(errors="replace").rstrip("\n"), flush=True)
    sender.cancel()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: chat_client.py PORT NAME [HOST]")
    try:
        asyncio.run(main(sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1",
                         int(sys.argv[1]), sys.argv[2]))
    except (ConnectionError, TimeoutError) as exc:
        sys.exit(f"chat_client: {exc}")
    except KeyboardInterrupt:
        pass
