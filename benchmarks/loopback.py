"""utcp against asyncio TCP on loopback, measured in one run: bulk MB/s and ping-pong RTT.

The server runs in a separate process (both transports, one port each), the client in
this one, so the two cores of the machine are both used as a real deployment would.
The transports are interleaved, repetition by repetition, so machine noise hits both
alike; the table reports medians and the ratio utcp / asyncio.

    python -m benchmarks.loopback [--bytes N] [--pings N] [--reps N] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import utcp

StreamOpener = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
CHUNK = 256 * 1024


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One byte of command: 'B' = sink everything, answer with its SHA-256; 'P' = echo."""
    mode = await reader.readexactly(1)
    if mode == b"B":
        digest = hashlib.sha256()
        while data := await reader.read(CHUNK):
            digest.update(data)
        writer.write(digest.digest())
    else:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    await writer.drain()
    writer.close()


def _server_main(conn: Any, use_uvloop: bool) -> None:
    async def run() -> None:
        tcp = await asyncio.start_server(_serve, "127.0.0.1", 0)
        u = await utcp.start_server(_serve, "127.0.0.1", 0)
        conn.send((tcp.sockets[0].getsockname()[1], u.sockets[0].getsockname()[1]))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told
        tcp.close()
        u.close()

    _run(run(), use_uvloop)


def _run(coro: Awaitable[None], use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop
        uvloop.run(coro)  # type: ignore[arg-type]
    else:
        asyncio.run(coro)  # type: ignore[arg-type]


async def bulk(opener: StreamOpener, port: int, payload: bytes) -> float:
    reader, writer = await opener("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(b"B")
    view = memoryview(payload)
    for i in range(0, len(payload), CHUNK):
        writer.write(view[i:i + CHUNK])
        await writer.drain()
    writer.write_eof()
    digest = await reader.readexactly(32)
    elapsed = time.perf_counter() - start
    if digest != hashlib.sha256(payload).digest():
        raise AssertionError("bulk transfer corrupted")
    writer.close()
    await writer.wait_closed()
    return len(payload) / elapsed / 1e6


async def pingpong(opener: StreamOpener, port: int, count: int) -> list[float]:
    reader, writer = await opener("127.0.0.1", port)
    writer.write(b"P")
    msg = os.urandom(64)
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        writer.write(msg)
        await reader.readexactly(64)
        samples.append((time.perf_counter() - t) * 1e6)
    writer.close()
    await writer.wait_closed()
    return samples


async def measure(ports: tuple[int, int], nbytes: int, pings: int, reps: int
                  ) -> dict[str, dict[str, list[float]]]:
    payload = os.urandom(nbytes)
    openers: dict[str, tuple[StreamOpener, int]] = {
        "asyncio TCP": (asyncio.open_connection, ports[0]),
        "utcp": (utcp.open_connection, ports[1]),
    }
    results: dict[str, dict[str, list[float]]] = {
        name: {"bulk": [], "rtt_median": [], "rtt_p99": []} for name in openers}
    for _ in range(reps):
        for name, (opener, port) in openers.items():  # interleaved
            results[name]["bulk"].append(await bulk(opener, port, payload))
            samples = sorted(await pingpong(opener, port, pings))
            results[name]["rtt_median"].append(statistics.median(samples))
            results[name]["rtt_p99"].append(samples[int(len(samples) * 0.99) - 1])
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=64 << 20)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(child, args.uvloop), daemon=True)
    server.start()
    try:
        ports = parent.recv()
        out: dict[str, Any] = {}

        async def client() -> None:
            out.update(await measure(ports, args.bytes, args.pings, args.reps))

        _run(client(), args.uvloop)
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in out.items()}
    loop_name = "uvloop" if args.uvloop else "asyncio default loop"
    print(f"loopback, {loop_name}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.bytes >> 20} MiB bulk, {args.pings} pings x 64 B, median of {args.reps}\n")
    print("| transport | bulk MB/s | RTT median µs | RTT p99 µs |")
    print("|---|---:|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m['bulk']:.1f} | {m['rtt_median']:.0f} | {m['rtt_p99']:.0f} |")
    u, t = med["utcp"], med["asyncio TCP"]
    print(f"| ratio utcp / asyncio TCP | {u['bulk'] / t['bulk']:.2f}x |"
          f" {u['rtt_median'] / t['rtt_median']:.2f}x | {u['rtt_p99'] / t['rtt_p99']:.2f}x |")


if __name__ == "__main__":
    main()
