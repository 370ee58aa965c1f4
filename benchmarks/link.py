"""Goodput of utcp and of Linux TCP over the same emulated lossy links, in one run.

The link is tests/interop/link.py's: two network namespaces joined by a veth pair,
each end rate-limited by tbf and dropping a random N % of what it receives with
nftables (offloads off, so every packet is dropped or not on its own). No netem on this
machine, so there is no propagation delay: the round trip is tbf's queue plus the stack.

The receiver (a sink) runs in its own process in namespace A, the sender in this one in
namespace B, so each has a core. Every measurement sends for `--seconds`, then EOF; the
sink reports the bytes it got, the time from the first byte to EOF and their SHA-256,
which the sender checks. Goodput = bytes / that time. Transports are interleaved
repetition by repetition, and the table reports medians:

- utcp with its defaults (RTO floor 200 ms, as Linux), and with rto_min = 50 ms;
- Linux TCP with cubic and with bbr (TCP_CONGESTION on the sender; bbr is reported as
  unavailable when the kernel lacks it and `modprobe tcp_bbr` fails);
- Linux TCP with reno and SACK and timestamps off (sysctls of the sender's namespace):
  textbook NewReno, the baseline any TCP over such a link should at least reach.

    python -m benchmarks.link [--rate 100mbit] [--loss 0,1,5] [--seconds 4] [--reps 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import utcp
from tests.interop.link import A_IP, Link
from tests.interop.netns import Netns, missing_prerequisite

CHUNK = 256 * 1024
MSL = 0.5
UTCP_DEFAULT = utcp.Config(msl=MSL)
UTCP_FAST_RTO = utcp.Config(msl=MSL, rto_min=0.05)
NOT_AVAILABLE = "unavailable"

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# ---------------------------------------------------------------------- the sink (ns A)

async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    n = 0
    first: float | None = None
    while data := await reader.read(CHUNK):
        if first is None:
            first = time.perf_counter()
        digest.update(data)
        n += len(data)
    elapsed = time.perf_counter() - first if first is not None else 0.0
    writer.write(json.dumps({"bytes": n, "seconds": elapsed,
                             "sha256": digest.hexdigest()}).encode() + b"\n")
    await writer.drain()
    writer.close()


def _sink_main(ns_name: str, conn: Any) -> None:
    Netns(ns_name).enter_for_good()  # this process lives in namespace A

    async def run() -> None:
        tcp = await asyncio.start_server(_sink, A_IP, 0)
        servers = [await utcp.start_server(_sink, A_IP, 0, config=cfg)
                   for cfg in (UTCP_DEFAULT, UTCP_FAST_RTO)]
        conn.send([tcp.sockets[0].getsockname()[1],
                   *(s.sockets[0].getsockname()[1] for s in servers)])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told
        tcp.close()
        for s in servers:
            s.close()

    asyncio.run(run())


# ---------------------------------------------------------------------- the sender (ns B)

@dataclass
class Result:
    bytes: int
    seconds: float
    rtos: int | None = None

    @property
    def mbit(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds else 0.0


async def _send_for(pair: StreamPair, seconds: float) -> Result:
    reader, writer = pair
    block = os.urandom(CHUNK)
    digest = hashlib.sha256()
    sent = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        writer.write(block)
        digest.update(block)
        sent += CHUNK
        await writer.drain()
    writer.write_eof()
    report = json.loads(await reader.readline())
    if report["bytes"] != sent or report["sha256"] != digest.hexdigest():
        raise AssertionError(f"corrupted transfer: sent {sent} bytes, sink got {report}")
    stats = writer.get_extra_info("stats")
    writer.close()
    return Result(report["bytes"], report["seconds"],
                  stats.timeouts if stats is not None else None)


async def _utcp_pair(link: Link, port: int, config: utcp.Config) -> StreamPair:
    with link.b.inside():
        return await utcp.open_connection(A_IP, port, config=config)


async def _kernel_pair(link: Link, port: int, congestion: str) -> StreamPair:
    with link.b.inside():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (A_IP, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def _available_congestion(ns: Netns) -> set[str]:
    return set(ns.sysctl("net.ipv4.tcp_available_congestion_control").split())


def _ensure_bbr(ns: Netns) -> bool:
    if "bbr" in _available_congestion(ns):
        return True
    subprocess.run(["modprobe", "tcp_bbr"], capture_output=True, check=False)
    return "bbr" in _available_congestion(ns)


class NoSack:
    """Sender's namespace without SACK and timestamps while a connection opens."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns

    def __enter__(self) -> None:
        self.saved = [self.ns.sysctl(k) for k in ("net.ipv4.tcp_sack", "net.ipv4.tcp_timestamps")]
        self.ns.exec("sysctl", "-q", "-w", "net.ipv4.tcp_sack=0", "net.ipv4.tcp_timestamps=0")

    def __exit__(self, *exc: object) -> None:
        self.ns.exec("sysctl", "-q", "-w", f"net.ipv4.tcp_sack={self.saved[0]}",
                     f"net.ipv4.tcp_timestamps={self.saved[1]}")


# ---------------------------------------------------------------------- the run

COLUMNS = ("utcp", "utcp rto_min 50 ms", "Linux cubic", "Linux bbr",
           "Linux reno, no SACK/TS")


async def measure(link: Link, ports: list[int], losses: list[int], seconds: float,
                  reps: int, bbr: bool) -> dict[tuple[int, str], list[Result]]:
    kport, uport_default, uport_fast = ports
    results: dict[tuple[int, str], list[Result]] = {}

    async def kernel_nosack() -> StreamPair:
        with NoSack(link.b):
            return await _kernel_pair(link, kport, "reno")

    openers: dict[str, Callable[[], Awaitable[StreamPair]]] = {
        "utcp": lambda: _utcp_pair(link, uport_default, UTCP_DEFAULT),
        "utcp rto_min 50 ms": lambda: _utcp_pair(link, uport_fast, UTCP_FAST_RTO),
        "Linux cubic": lambda: _kernel_pair(link, kport, "cubic"),
        "Linux reno, no SACK/TS": kernel_nosack,
    }
    if bbr:
        openers["Linux bbr"] = lambda: _kernel_pair(link, kport, "bbr")
    for loss in losses:
        link.set_loss(loss)
        for rep in range(reps):
            for name in COLUMNS:
                if name not in openers:
                    continue
                pair = await asyncio.wait_for(openers[name](), 60)
                res = await asyncio.wait_for(_send_for(pair, seconds), seconds * 20 + 60)
                results.setdefault((loss, name), []).append(res)
                print(f"  loss {loss:>2} %  rep {rep + 1}  {name:<24} {res.mbit:7.2f} Mbit/s",
                      file=sys.stderr, flush=True)
                await asyncio.sleep(0.2)
    return results


def table(results: dict[tuple[int, str], list[Result]], losses: list[int], bbr: bool) -> str:
    def med(loss: int, name: str) -> float | None:
        rs = results.get((loss, name))
        return statistics.median(r.mbit for r in rs) if rs else None

    def cell(v: float | None) -> str:
        return NOT_AVAILABLE if v is None else f"{v:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None or not b else f"{a / b:.2f}x"

    lines = ["| loss | " + " | ".join(f"{c} Mbit/s" for c in COLUMNS)
             + " | utcp / cubic | utcp / bbr | utcp / reno no SACK | utcp RTOs |",
             "|---:|" + "---:|" * (len(COLUMNS) + 4)]
    for loss in losses:
        vals = {c: med(loss, c) for c in COLUMNS}
        best_utcp = vals["utcp"]
        rtos = [r.rtos for r in results.get((loss, "utcp"), []) if r.rtos is not None]
        lines.append(
            f"| {loss} % | " + " | ".join(cell(vals[c]) for c in COLUMNS)
            + f" | {ratio(best_utcp, vals['Linux cubic'])}"
            + f" | {ratio(best_utcp, vals['Linux bbr']) if bbr else NOT_AVAILABLE}"
            + f" | {ratio(best_utcp, vals['Linux reno, no SACK/TS'])}"
            + f" | {f'{statistics.median(rtos):g}' if rtos else '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", default="100mbit", help="tbf rate of each direction")
    ap.add_argument("--loss", default="0,1,5", help="comma-separated loss percentages")
    ap.add_argument("--seconds", type=float, default=4.0, help="sending time per measurement")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    losses = [int(x) for x in args.loss.split(",")]
    reason = missing_prerequisite("tc", "nft")
    if reason:
        print(f"benchmarks.link cannot run here: {reason}", file=sys.stderr)
        return 1
    ctx = mp.get_context("spawn")
    with Link.create(rate=args.rate) as link:
        bbr = _ensure_bbr(link.b)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_sink_main, args=(link.a.name, child), daemon=True)
        proc.start()
        try:
            ports = parent.recv()
            with link.b.inside():  # this (sending) process's thread lives in namespace B
                results = asyncio.run(measure(link, ports, losses, args.seconds, args.reps,
                                              bbr))
        finally:
            parent.send("stop")
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"{when}, veth between two namespaces at {args.rate} each way (tbf), random loss "
          f"each way (nftables), no added delay; {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, Linux {platform.release()}; {args.seconds:g} s of "
          f"sending per measurement, median of {args.reps}\n")
    print(table(results, losses, bbr))
    if not bbr:
        print("\nbbr: unavailable (not in tcp_available_congestion_control, modprobe failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
