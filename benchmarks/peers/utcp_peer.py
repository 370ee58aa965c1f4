"""utcp: "1400" is Config(mss=1400) with path-MTU probing off, "max" the default Config."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import utcp

KEY = "utcp"
NAME = "utcp"
# Field names a path-MTU probing switch may have in utcp.Config (checked at run time)
_PMTU_FIELDS = ("pmtu_probing", "pmtud", "mtu_probing", "path_mtu_probing")


def missing() -> str | None:
    return None


def pmtu_field() -> str | None:
    names = {f.name for f in dataclasses.fields(utcp.Config)}
    return next((n for n in _PMTU_FIELDS if n in names), None)


@functools.cache  # built once per profile, as an application builds its Config once
def config(profile: str) -> utcp.Config:
    if profile == "max":
        return utcp.Config()
    off = {name: False for name in [pmtu_field()] if name is not None}
    return utcp.Config(mss=1400, **off)  # type: ignore[arg-type]


def settings(profile: str) -> str | None:
    if profile == "max":
        field = pmtu_field()
        if field is None:
            return ("default Config() (mss=1400): this utcp has no path-MTU probing,"
                    " so both bulk columns run the same settings")
        return f"default Config() ({field}={getattr(utcp.Config(), field)!r})"
    field = pmtu_field()
    return f"Config(mss=1400{f', {field}=False' if field else ''})"


async def serve(handler: Any, profile: str, ctx: dict[str, Any]
                ) -> tuple[int, Callable[[], None]]:
    server = await utcp.start_server(handler, "127.0.0.1", 0, config=config(profile),
                                     backlog=1024)
    return server.sockets[0].getsockname()[1], server.close


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
        s = self.writer.get_extra_info("stats")
        return (f"mss {s.mss}, {s.segments_sent} segments sent,"
                f" {s.segments_retransmitted} retransmitted, {s.timeouts} RTOs")


async def connect(port: int, profile: str, ctx: dict[str, Any]) -> Conn:
    reader, writer = await utcp.open_connection("127.0.0.1", port, config=config(profile))
    return Conn(reader, writer)
