"""A tiny HTTP/1.1 client over utcp (stdlib only), for examples/http_server.py.

    python examples/http_get.py PORT [PATH] [--host HOST] [--data TEXT]

Prints the status line and headers on stderr and the body on stdout; with --data it
POSTs. It exits 0 for a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import utcp


async def request(host: str, port: int, path: str, data: bytes | None) -> tuple[int, bytes]:
    reader, writer = await utcp.open_connection(host, port)
    method = "GET" if data is None else "POST"
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            "User-Agent: utcp-example"]
    if data is not None:
        head += ["Content-Type: application/octet-stream", f"Content-Length: {len(data)}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (data or b""))
    status_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
    print(status_line, file=sys.stderr)
    length: int | None = None
    while (line := (await reader.readline()).decode("latin-1").rstrip("\r\n")):
        print(line, file=sys.stderr)
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await (reader.readexactly(length) if length is not None else reader.read())
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    parts = status_line.split()
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("path", nargs="?", default="/")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--data", help="POST this text")
    args = ap.parse_args()
    data = None if args.data is None else args.data.encode()
    try:
        status, body = asyncio.run(request(args.host, args.port, args.path, data))
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        sys.exit(f"http_get: {exc}")
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    sys.exit(0 if 200 <= status < 300 else 1)


if __name__ == "__main__":
    main()
