"""asyncio TCP (the kernel's): "1400" clamps the MSS with TCP_MAXSEG, "max" is as is."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

KEY = "tcp"
NAME = "asyncio TCP"
MSS_1400 = 1400


def missing() -> str | None:
    return None


def settings(profile: str) -> str | None:
    if profile == "max":
        return "kernel defaults (loopback MSS about 65483, TSO/GRO as the kernel does)"
    return "TCP_MAXSEG 1400 on both sockets (the closest to 1400-byte datagrams)"


def _socket(profile: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if profile == "1400":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS_1400)
    return sock


async def serve(handler: Any, profile: str, ctx: dict[str, Any]
                ) -> tuple[int, Callable[[], None]]:
    sock = _socket(profile)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handler, sock=sock, backlog=1024)
    return sock.getsockname()[1], server.close


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def write(self, data: bytes | memoryview) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()

    def wire_note(self) -> str | None:
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return None
        return f"MSS {sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)}"


async def connect(port: int, profile: str, ctx: dict[str, Any]) -> Conn:
    loop = asyncio.get_running_loop()
    sock = _socket(profile)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    return Conn(reader, writer)
