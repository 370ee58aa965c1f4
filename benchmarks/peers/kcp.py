"""KCP through aiokcp, in "tuned fast mode": nodelay=1, interval=10 ms, resend=2, nc=1.

KCP has no handshake, no end of stream and no close: a server-side "connection" is born
with the first datagram from a new address and dies when it has been silent for the
server's timeout. So the request protocol's lengths do the framing, the server closes
its side once it has answered (`has_eof=False`), and a client's close does not wait out
aiokcp's fixed 100 ms linger (it runs in the background, like TCP's TIME_WAIT).

aiokcp hands each `write()` to `ikcp_send` whole, which refuses (or, in stream mode,
silently truncates) a write of 128 segments or more: writes are cut to 64 segments here.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any

from benchmarks.peers import UDP_BUFFER, set_socket_buffers

KEY = "kcp"
NAME = "KCP (aiokcp)"
WINDOW = 1024            # segments, both ways (aiokcp's defaults: 32 send, 128 receive)
INTERVAL_MS = 10
LARGEST_MTU = 65507  # the largest UDP payload over IPv4; KCP has no MTU probing
SERVER_TIMEOUT = 10.0    # s of silence before the server forgets a connection
IKCP_OVERHEAD = 24


def missing() -> str | None:
    try:
        importlib.import_module("aiokcp")
    except ImportError as exc:
        return f"{exc.name or 'aiokcp'} not installed (pip install -e '.[bench]')"
    return None


def mtu(profile: str) -> int:
    return 1400 if profile == "1400" else LARGEST_MTU


def kcp_kwargs(profile: str) -> dict[str, Any]:
    return {"max_transmission": mtu(profile), "no_delay": True,
            "update_interval": INTERVAL_MS, "resend_count": 2, "no_congestion_control": True,
            "send_window_size": WINDOW, "receive_window_size": WINDOW, "stream": 1}


def settings(profile: str) -> str | None:
    size = ("mtu 1400" if profile == "1400"
            else f"mtu {LARGEST_MTU} (no path-MTU probing: the largest size set by hand)")
    return (f"{size}, nodelay=1, interval={INTERVAL_MS}, resend=2, nc=1,"
            f" windows {WINDOW}/{WINDOW} segments, stream mode, UDP socket buffers"
            f" {UDP_BUFFER >> 20} MiB as utcp's")


async def serve(handler: Any, profile: str, ctx: dict[str, Any]
                ) -> tuple[int, Callable[[], None]]:
    aiokcp = importlib.import_module("aiokcp")
    timeout = ctx.get("kcp_server_timeout", SERVER_TIMEOUT)

    async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handler(reader, writer, True, False)

    server = await aiokcp.start_server(on_stream, "127.0.0.1", 0,
                                       kcp_kwargs=kcp_kwargs(profile), timeout=timeout)
    await server.start_serving()   # the task that ticks every connection's KCP clock
    udp = server._inner_protocol._transport
    set_socket_buffers(udp.get_extra_info("socket"))
    port = udp.get_extra_info("sockname")[1]
    return port, server.close


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 profile: str) -> None:
        self.reader, self.writer = reader, writer
        self.piece = 64 * (mtu(profile) - IKCP_OVERHEAD)
        self.largest = 0
        transport = writer.transport
        kcp = transport.kcp     # type: ignore[attr-defined]
        send = transport._send_to  # type: ignore[attr-defined]

        def traced(handle: Any, data: bytes) -> None:
            if len(data) > self.largest:
                self.largest = len(data)
            send(handle, data)

        kcp.set_output_handler(traced)

    def write(self, data: bytes | memoryview) -> None:
        for i in range(0, len(data), self.piece):
            self.writer.write(data[i:i + self.piece])

    async def drain(self) -> None:
        await asyncio.sleep(0)  # aiokcp never applies back-pressure: let the loop run

    async def close(self) -> None:
        self.writer.close()      # flushes, then lingers 100 ms in a task of aiokcp's own

    def abort(self) -> None:
        transport = self.writer.transport
        transport._KCPStreamTransport__is_closing = True  # type: ignore[attr-defined]
        transport.transport.close()  # type: ignore[attr-defined]

    def wire_note(self) -> str | None:
        return f"largest datagram sent {self.largest} B" if self.largest else None


async def connect(port: int, profile: str, ctx: dict[str, Any]) -> Conn:
    aiokcp = importlib.import_module("aiokcp")
    reader, writer = await aiokcp.open_connection("127.0.0.1", port,
                                                  kcp_kwargs=kcp_kwargs(profile))
    set_socket_buffers(writer.transport.transport.get_extra_info("socket"))
    return Conn(reader, writer, profile)
