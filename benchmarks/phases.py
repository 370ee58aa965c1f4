"""Connect+close in its three phases, utcp against asyncio TCP, alternated in one run.

`python -m benchmarks` gives one connect+close rate; this says where the time goes: the
connect (utcp's handshake needs the server process, TCP's is the kernel's), a one-byte
request and its answer, and close + `wait_closed()` (utcp's returns once the FIN is
acknowledged, TCP's at once). The server runs in another process, as in the main
harness; the transports alternate repetition by repetition so that machine noise hits
both alike. Medians in µs.

    python -m benchmarks.phases [--conns N] [--reps N] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from typing import Any

import utcp

CONFIG = utcp.Config(mss=1400, pmtu_probing=False)
PHASES = ("connect", "request", "close")


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(1)
    writer.write(b"a")
    while await reader.read(1024):
        pass
    writer.close()


def _server(pipe: Any, use_uvloop: bool) -> None:
    async def main() -> None:
        tcp = await asyncio.start_server(_answer, "127.0.0.1", 0, backlog=1024)
        u = await utcp.start_server(_answer, "127.0.0.1", 0, backlog=1024, config=CONFIG)
        pipe.send((tcp.sockets[0].getsockname()[1], u.sockets[0].getsockname()[1]))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told
        tcp.close()
        u.close()

    _run(main(), use_uvloop)


def _run(coro: Any, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop
        uvloop.run(coro)
    else:
        asyncio.run(coro)


async def _phases(kind: str, port: int, count: int) -> list[list[float]]:
    """Seconds per phase of `count` sequential connections."""
    samples: list[list[float]] = [[], [], []]
    for _ in range(count):
        t0 = time.perf_counter()
        if kind == "tcp":
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            reader, writer = await utcp.open_connection("127.0.0.1", port, config=CONFIG)
        t1 = time.perf_counter()
        writer.write(b"q")
        if await reader.readexactly(1) != b"a":
            raise AssertionError("wrong answer")
        t2 = time.perf_counter()
        writer.close()
        await writer.wait_closed()
        t3 = time.perf_counter()
        for phase, took in zip(samples, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phase.append(took)
    return samples


def measure(conns: int, reps: int, use_uvloop: bool) -> dict[str, list[list[float]]]:
    """Per transport, per phase: the median of each repetition, in µs."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server, args=(child, use_uvloop), daemon=True)
    proc.start()
    try:
        tcp_port, utcp_port = parent.recv()
        ports = {"tcp": tcp_port, "utcp": utcp_port}
        medians: dict[str, list[list[float]]] = {"tcp": [[], [], []], "utcp": [[], [], []]}

        async def client() -> None:
            for _ in range(reps):
                for kind in ("tcp", "utcp"):
                    samples = await _phases(kind, ports[kind], conns)
                    for phase, taken in zip(medians[kind], samples, strict=True):
                        phase.append(statistics.median(taken) * 1e6)

        _run(client(), use_uvloop)
        parent.send("stop")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return medians


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=300, help="connections per repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, transports alternated")
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args(argv)
    medians = measure(args.conns, args.reps, args.uvloop)
    loop = "uvloop" if args.uvloop else "asyncio default loop"
    build = "compiled" if utcp.compiled else "pure Python"
    print(f"connect+close by phase, {loop}, utcp {build}, {args.conns} connections x"
          f" {args.reps} repetitions, median of the repetitions' medians, µs")
    print("| transport | " + " | ".join(PHASES) + " | sum |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    totals = {}
    for kind, name in (("utcp", "utcp"), ("tcp", "asyncio TCP")):
        cells = [statistics.median(phase) for phase in medians[kind]]
        totals[kind] = cells
        print(f"| {name} | " + " | ".join(f"{c:.0f}" for c in cells) + f" | {sum(cells):.0f} |")
    ratios = [u / t for u, t in zip(totals["utcp"], totals["tcp"], strict=True)]
    print("| utcp / asyncio TCP | " + " | ".join(f"{r:.2f}x" for r in ratios)
          + f" | {sum(totals['utcp']) / sum(totals['tcp']):.2f}x |")


if __name__ == "__main__":
    main()
