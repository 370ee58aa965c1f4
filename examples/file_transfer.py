"""Send a file over utcp, with a progress bar and an end-to-end SHA-256 check.

    python examples/file_transfer.py recv [--host 0.0.0.0] [--port 9000] [--dir DIR] [--once]
    python examples/file_transfer.py send HOST PORT FILE

The sender writes one JSON header line ({"name", "size"}), then the bytes, then
half-closes; the receiver answers with the SHA-256 of what it stored, which the sender
compares with its own. The progress bar is plain text on stderr (pure stdlib): redrawn in
place on a terminal, a line per quarter otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import utcp

CHUNK = 256 * 1024


class Progress:
    """`[#########...........]  45%  4.5/10.0 MB  12.3 MB/s` on stderr."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr,
                 width: int = 30) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self._tty = stream.isatty()
        self._drawn = 0.0
        self._quarter = -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty:
            if now - self._drawn >= 0.1 or self.done >= self.total:
                self._drawn = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        else:
            quarter = self.done * 4 // self.total
            if quarter > self._quarter:
                self._quarter = quarter
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\r" + self._line(time.monotonic()) + "\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * self.width)
        rate = self.done / max(now - self.start, 1e-9) / 1e6
        bar = "#" * filled + "." * (self.width - filled)
        return (f"{self.label} [{bar}] {fraction * 100:3.0f}%  {self.done / 1e6:.1f}/"
                f"{self.total / 1e6:.1f} MB  {rate:.1f} MB/s")


# ---------------------------------------------------------------------- receiver

async def receive_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      directory: Path) -> str:
    header = json.loads(await reader.readline())
    name = Path(str(header["name"])).name or "unnamed"  # never a path outside `directory`
    size = int(header["size"])
    part = directory / (name + ".part")
    digest = hashlib.sha256()
    progress = Progress(size, f"recv {name}")
    got = 0
    with part.open("wb") as out:
        while chunk := await reader.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            got += len(chunk)
            progress.update(len(chunk))
    progress.finish()
    if got != size:
        writer.write(json.dumps({"error": f"got {got} of {size} bytes"}).encode() + b"\n")
        part.unlink()
        raise ValueError(f"{name}: got {got} of {size} bytes")
    os.replace(part, directory / name)
    writer.write(json.dumps({"sha256": digest.hexdigest(), "bytes": got}).encode() + b"\n")
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    print(f"received {name}: {got} bytes, sha256 {digest.hexdigest()}", flush=True)
    return name


async def recv_main(host: str, port: int, directory: Path, once: bool) -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await receive_one(reader, writer, directory)
        except (ConnectionError, TimeoutError, ValueError, KeyError) as exc:
            print(f"transfer failed: {exc}", file=sys.stderr, flush=True)
            writer.transport.abort()
        if once and not done.done():
            done.set_result(None)

    server = await utcp.start_server(handle, host, port)
    print(f"receiving into {directory} on udp {host} port "
          f"{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        if once:
            await done
        else:
            await server.serve_forever()


# ---------------------------------------------------------------------- sender

async def send_main(host: str, port: int, path: Path) -> bool:
    size = path.stat().st_size
    reader, writer = await utcp.open_connection(host, port)
    writer.write(json.dumps({"name": path.name, "size": size}).encode() + b"\n")
    digest = hashlib.sha256()
    progress = Progress(size, f"send {path.name}")
    start = time.monotonic()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            writer.write(chunk)
            digest.update(chunk)
            await writer.drain()
            progress.update(len(chunk))
    writer.write_eof()
    reply = json.loads(await reader.readline() or b"{}")
    elapsed = time.monotonic() - start  # until the receiver confirmed the last byte
    progress.finish()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    ok: bool = reply.get("sha256") == digest.hexdigest()
    stats = writer.get_extra_info("stats")
    print(f"sent {path.name}: {size} bytes in {elapsed:.2f} s "
          f"({size / max(elapsed, 1e-9) / 1e6:.1f} MB/s), "
          f"{stats.segments_retransmitted} segments retransmitted, "
          f"sha256 {'ok' if ok else 'MISMATCH ' + str(reply)}", flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    recv = sub.add_parser("recv", help="receive files")
    recv.add_argument("--host", default="0.0.0.0")
    recv.add_argument("--port", type=int, default=9000)
    recv.add_argument("--dir", type=Path, default=Path("."))
    recv.add_argument("--once", action="store_true", help="exit after one file")
    send = sub.add_parser("send", help="send one file")
    send.add_argument("host")
    send.add_argument("port", type=int)
    send.add_argument("file", type=Path)
    args = ap.parse_args()
    try:
        if args.command == "recv":
            asyncio.run(recv_main(args.host, args.port, args.dir, args.once))
        elif not asyncio.run(send_main(args.host, args.port, args.file)):
            sys.exit(1)
    except (OSError, TimeoutError) as exc:
        sys.exit(f"file_transfer: {exc}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
