"""The transports `python -m benchmarks` compares, one module each, behind one interface.

Every peer module defines:

- `KEY` (the `--only` name) and `NAME` (the table row);
- `missing() -> str | None`: why the peer cannot run here (not installed), or None;
- `settings(profile) -> str | None`: what the profile means for this peer, printed under
  the table; None when the peer has no such mode (the cell shows "n/a");
- `async serve(handler, profile, ctx) -> (port, close)`: start a server on 127.0.0.1
  (an ephemeral port) whose every stream runs `handler`;
- `async connect(port, profile, ctx) -> Conn`: one client connection with one stream.

A profile is "1400" (1400-byte datagrams, path-MTU probing off) or "max" (the largest
datagrams the transport uses on loopback by itself or can be told to use). Everything but
the second bulk column runs the "1400" profile.

Every transport carries the same tiny request protocol (`handle` below), so the client
side is one piece of code: a 9-byte header (an opcode and a big-endian count), then

- `B n`: the client sends n bytes, the server answers their SHA-256 (bulk, one way);
- `P n`: n round trips of a 64-byte message, echoed (ping-pong);
- `C 0`: the server answers one byte (connect + small exchange + close);
- `I 0`: the server answers one byte and keeps the stream open (idle connections).

Lengths are explicit because KCP has no end-of-stream. After answering, the server waits
for the client's end of stream (or the connection's end) and closes its side; a KCP
server closes as soon as it has answered.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import importlib
import os
import resource
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

HEADER = struct.Struct("!cQ")
CHUNK = 256 * 1024
PING_SIZE = 64
PROFILES = ("1400", "max")
ORDER = ("utcp", "tcp", "aioquic", "qh3", "kcp")   # table order; utcp first
MODULES = {"utcp": "utcp_peer", "tcp": "tcp", "aioquic": "aioquic_peer", "qh3": "qh3_peer",
           "kcp": "kcp"}


class Conn(Protocol):
    """One client connection with one bidirectional stream."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def write(self, data: bytes | memoryview) -> None: ...
    async def drain(self) -> None: ...
    async def close(self) -> None: ...   # graceful; waits as the transport's close does
    def abort(self) -> None: ...         # drop at once (cleanup of idle connections)
    def wire_note(self) -> str | None: ...  # what went on the wire (sizes, retransmits)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bool, bool], Awaitable[None]]


class Peer(Protocol):
    KEY: str
    NAME: str

    def missing(self) -> str | None: ...
    def settings(self, profile: str) -> str | None: ...
    async def serve(self, handler: Handler, profile: str, ctx: dict[str, Any]
                    ) -> tuple[int, Callable[[], None]]: ...
    async def connect(self, port: int, profile: str, ctx: dict[str, Any]) -> Conn: ...


def load(key: str) -> Peer:
    """The peer module for `key` (an optional package is imported only when used)."""
    return importlib.import_module(f"benchmarks.peers.{MODULES[key]}")


def raise_fd_limit() -> int:
    """RLIMIT_NOFILE up to the hard limit: 10,000 idle connections need as many fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


# What utcp asks for on its own sockets (utcp/aio/port.py). Copied, not imported: this
# package must not import utcp before the harness has snapshotted it.
UDP_BUFFER = 4 << 20


def set_socket_buffers(sock: Any, size: int = UDP_BUFFER) -> None:
    """Give a peer's UDP socket the kernel buffers utcp gives its own: SO_RCVBUF and
    SO_SNDBUF of 4 MiB (the FORCE variants as root, past net.core.rmem_max)."""
    for opt, force in ((socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None)),
                       (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None))):
        for name in (force, opt):
            if name is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, name, size)
                break
            except OSError:
                continue


_statm: list[int] = []   # an fd on /proc/self/statm, opened before fds can run out


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc), in bytes.

    The file stays open, so the figure can still be read once a test of many
    connections has used every file descriptor.
    """
    if not _statm:
        _statm.append(os.open("/proc/self/statm", os.O_RDONLY))
    fields = os.pread(_statm[0], 256, 0).split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------- server side

class ServerState:
    idle_open = 0          # streams that answered "I" and are still open
    errors: list[str] = []  # one server per process


async def _drain(writer: asyncio.StreamWriter, can_drain: bool) -> None:
    if can_drain:
        await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 can_drain: bool = True, has_eof: bool = True) -> None:
    """The server half of the request protocol, for every transport alike.

    `can_drain`: the writer supports drain(); `has_eof`: the transport signals the end of
    a stream (KCP does not, so its server closes as soon as it has answered).
    """
    idle = False
    try:
        try:
            header = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return   # a stream with no request: KCP makes one of a stray late datagram
        op, n = HEADER.unpack(header)
        if op == b"B":
            digest = hashlib.sha256()
            left = n
            while left:
                data = await reader.read(min(CHUNK, left))
                if not data:
                    raise ConnectionError(f"bulk: EOF with {left} of {n} bytes missing")
                digest.update(data)
                left -= len(data)
            writer.write(digest.digest())
        elif op == b"P":
            for _ in range(n):
                try:
                    msg = await reader.readexactly(PING_SIZE)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    return   # the client stopped early (its time budget ran out)
                writer.write(msg)
                await _drain(writer, can_drain)
        elif op in (b"C", b"I"):
            writer.write(op.lower())
            if op == b"I":
                idle = True
                ServerState.idle_open += 1
        else:
            raise ValueError(f"unknown request {op!r}")
        await _drain(writer, can_drain)
        if has_eof or idle:
            while await reader.read(CHUNK):   # until the client's end of stream
                pass
    except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        if not idle:
            ServerState.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if idle:
            ServerState.idle_open -= 1
        writer.close()


def run(coro: Awaitable[Any], use_uvloop: bool) -> Any:
    if use_uvloop:
        import uvloop
        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def server_process(pipe: Any, key: str, profile: str, use_uvloop: bool,
                   ctx: dict[str, Any]) -> None:
    """Body of a spawned server process: serve, answer the parent's queries, stop.

    Queries on `pipe`: "stats" -> (RSS bytes after a full gc, idle streams open, errors);
    "stop" -> exit. The port (or an error string) is sent first.
    """
    raise_fd_limit()
    rss_bytes()
    peer = load(key)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        try:
            port, close = await peer.serve(handle, profile, ctx)
        except Exception as exc:
            pipe.send(f"error: {type(exc).__name__}: {exc}")
            return
        pipe.send(port)
        while True:
            msg = await loop.run_in_executor(None, pipe.recv)
            if msg == "stats":
                gc.collect()
                await asyncio.sleep(0.05)
                pipe.send((rss_bytes(), ServerState.idle_open, ServerState.errors[:5]))
            else:
                close()
                os._exit(0)  # no teardown of thousands of sockets and tasks

    try:
        run(main(), use_uvloop)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no interpreter teardown of thousands of sockets and tasks
