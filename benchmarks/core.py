"""The sans-IO core alone: payload MB/s between two endpoints in one process, no sockets.

Datagrams pass straight from one endpoint's `datagrams_to_send` to the other on a real
clock (`time.perf_counter`), as examples/loopback_demo.py does, so the figure is the
protocol's own per-segment Python work with nothing else in the way: an upper bound for
what any adapter can reach. Two ways, each a row: "glued", as the asyncio port hands
them over on Linux, where a UDP GSO send arrives as one UDP GRO read (runs of
equal-sized datagrams to one peer, as `utcp.aio.batch.gso_batches` cuts them, go to
`Endpoint.receive_glued` as one buffer), and "one by one" (`receive_datagram` each),
as on a system without GSO/GRO. Both sides' work counts (sender
and receiver share the one process); the SHA-256 of what arrived is checked afterwards,
outside the timed part.

    python -m benchmarks.core [--mib N] [--mss 1400 8960] [--reps N] [--glued|--one-by-one]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import sys
import time
from dataclasses import dataclass

from utcp.aio.batch import gso_batches
from utcp.config import Config
from utcp.endpoint import Endpoint
from utcp.state import State

SERVER = ("127.0.0.1", 5000)
CLIENT = ("127.0.0.1", 6000)


@dataclass
class Result:
    mss: int
    nbytes: int
    seconds: float
    segments: int  # datagrams, both directions

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def segments_per_s(self) -> float:
        return self.segments / self.seconds

    @property
    def us_per_segment(self) -> float:
        return self.seconds / self.segments * 1e6


def deliver(out: list[tuple[bytes, tuple[str, int]]], to: Endpoint, src: tuple[str, int],
            now: float, glued: bool) -> None:
    """Hand `out` to `to` as one endpoint's port hands it the other's datagrams."""
    if not glued:
        for datagram, _ in out:
            to.receive_datagram(datagram, src, now)
        return
    for begin, end, size in gso_batches(out):
        if size:  # a GSO send, one GRO read (the kernel's copy: the join)
            to.receive_glued(b"".join([d for d, _ in out[begin:end]]), size, src, now)
        else:
            to.receive_datagram(out[begin][0], src, now)


def transfer(mss: int, payload: bytes, glued: bool = False) -> Result:
    """Move `payload` client -> server with Config(mss=mss); verify it; time the transfer."""
    config = Config(mss=mss)
    server = Endpoint(config, SERVER[1], listening=True, rng=random.Random(1))
    client = Endpoint(config, CLIENT[1], rng=random.Random(2))
    start = time.perf_counter()
    conn = client.connect(SERVER, 0.0)
    peer = None
    chunks: list[bytes] = []
    segments = 0
    queued = False
    while True:
        now = time.perf_counter() - start
        out = client.datagrams_to_send(now)
        segments += len(out)
        deliver(out, server, CLIENT, now, glued)
        out = server.datagrams_to_send(now)
        segments += len(out)
        deliver(out, client, SERVER, now, glued)
        if not queued and conn.state == State.ESTABLISHED:
            conn.send(payload)
            conn.close()  # FIN after the data
            queued = True
        if peer is None:
            peer = server.accept()
        if peer is not None:
            while data := peer.read_pieces(1 << 20):  # as the asyncio transport reads
                chunks.append(data)
            if peer.eof_received and not peer.readable:
                break
        for ep in (client, server):
            deadline = ep.get_timer()
            if deadline is not None and deadline <= now:
                ep.handle_timer(now)
    elapsed = time.perf_counter() - start
    received = b"".join(chunks)
    if len(received) != len(payload) or (
            hashlib.sha256(received).digest() != hashlib.sha256(payload).digest()):
        raise AssertionError(f"MSS {mss}: the stream arrived corrupted")
    return Result(mss, len(payload), elapsed, segments)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB moved per run (default 64)")
    ap.add_argument("--mss", type=int, nargs="+", default=[1400, 8960])
    ap.add_argument("--reps", type=int, default=3, help="runs per MSS; the median is shown")
    way = ap.add_mutually_exclusive_group()
    way.add_argument("--glued", dest="ways", action="store_const", const=[True],
                     help="only as GSO/GRO glue the datagrams")
    way.add_argument("--one-by-one", dest="ways", action="store_const", const=[False],
                     help="only one datagram at a time")
    args = ap.parse_args(argv)
    ways: list[bool] = args.ways or [True, False]
    payload = random.Random(0).randbytes(args.mib << 20)
    print(f"utcp core, in-process, no sockets: {args.mib} MiB per run, median of {args.reps};"
          f" Python {platform.python_version()} ({platform.python_implementation()}),"
          f" {os.cpu_count()} CPUs\n")
    print("| MSS | datagrams | MB/s | segments/s | µs/segment | segments | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for mss in args.mss:
        for glued in ways:
            runs = sorted((transfer(mss, payload, glued) for _ in range(args.reps)),
                          key=lambda r: r.seconds)
            r = runs[len(runs) // 2]
            print(f"| {mss} | {'glued' if glued else 'one by one'} | {r.mb_per_s:.1f}"
                  f" | {r.segments_per_s:,.0f} | {r.us_per_segment:.2f} | {r.segments:,}"
                  f" | {r.seconds:.2f} |")
    print("\nsegments: datagrams in both directions (data and ACKs);"
          " µs/segment covers the work of both endpoints. MB = 10^6 bytes of payload.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
