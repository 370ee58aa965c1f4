"""Aggregate throughput of `utcp perf -s --workers N` on loopback, for N = 1, 2, ...

    python -m benchmarks.workers [--workers 1,2] [--clients 2] [-P 4] [-t 3] [--reps 3]

For each N a fresh server (`python -m utcp perf -s --workers N`) serves `--clients`
client processes started together (`python -m utcp perf -c ... -P P -t T --json`), so
the clients are not one core's worth of Python either; the aggregate is the sum of what
each client's server side received, over its run. "server CPU" is the CPU time of the
server and its workers over the run's wall time: how many cores the server kept busy.
Runs are interleaved (N = 1, 2, 1, 2, ...) so machine noise hits all alike; the table
gives medians and the ratio to N = 1.

Every process of the run shares the machine's cores: with C cores, servers and clients
together can use no more than C, so the ratio says how the server scales only while
N + clients <= C; past that it says how the cores were shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _start_server(workers: int, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "utcp", "perf", "-s", "-B", "127.0.0.1",
                             "-p", "0", "--workers", str(workers), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" port (\d+) ", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.communicate()[1]!r}")
    return proc, int(match[1])


def _measure(workers: int, clients: int, parallel: int, seconds: float,
             reverse: bool, mss: int | None) -> dict[str, Any]:
    extra = ["--mss", str(mss)] if mss else []
    server, port = _start_server(workers, extra)
    start = time.monotonic()
    try:
        command = [sys.executable, "-m", "utcp", "perf", "-c", "127.0.0.1", "-p", str(port),
                   "-P", str(parallel), "-t", str(seconds), "--json", *extra]
        if reverse:
            command.append("-R")
        procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(clients)]
        total = 0.0
        for p in procs:
            out, err = p.communicate(timeout=seconds + 120)
            if p.returncode != 0:
                raise RuntimeError(f"client failed: {err.strip()}")
            end = json.loads(out)["end"]
            if not reverse and end["bytes_received"] != end["bytes"]:
                raise RuntimeError(f"the server read {end['bytes_received']} of the "
                                   f"{end['bytes']} bytes sent")
            total += end["bytes_received"] * 8 / end["seconds"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.stdout is not None
        out = server.stdout.read()  # to EOF: the parent and every worker have ended
        # wait4, not Popen.wait: its rusage counts the workers the server reaped
        _, _, usage = os.wait4(server.pid, 0)
        server.returncode = 0
        wall = time.monotonic() - start
    counts = [int(n) for n in re.findall(r"served (\d+) connections", out)]
    return {"bits_per_second": total, "per_worker": counts,
            "server_cores": (usage.ru_utime + usage.ru_stime) / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("-P", "--parallel", type=int, default=4,
                        help="connections per client process (default 4)")
    parser.add_argument("-t", "--time", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("-R", "--reverse", action="store_true",
                        help="the server sends (its workers do the costlier side)")
    parser.add_argument("--mss", type=int, help="pin the segment size on both sides "
                        "(1400: a datagram per internet-sized packet, no GSO-sized ones)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for rep in range(args.reps):
        for n in counts:
            r = _measure(n, args.clients, args.parallel, args.time, args.reverse,
                         args.mss)
            results[n].append(r)
            print(f"rep {rep + 1}: {n} worker(s): {r['bits_per_second'] / 1e9:.2f} Gbit/s,"
                  f" server busy {r['server_cores']:.2f} cores, connections per worker "
                  f"{r['per_worker'] or '-'}", file=sys.stderr, flush=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{when}, loopback; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"Linux {platform.release()}; {args.clients} client processes x -P "
          f"{args.parallel}{' -R' if args.reverse else ''}"
          f"{f' --mss {args.mss}' if args.mss else ''}, {args.time:g} s per run, "
          f"median of {args.reps}")
    print()
    print("| workers | aggregate Gbit/s | ratio to 1 worker | server CPU (cores) "
          "| connections per worker (last run) |")
    print("|---:|---:|---:|---:|---|")
    base = statistics.median(r["bits_per_second"] for r in results[counts[0]])
    for n in counts:
        med = statistics.median(r["bits_per_second"] for r in results[n])
        cores = statistics.median(r["server_cores"] for r in results[n])
        spread = results[n][-1]["per_worker"] or "-"
        print(f"| {n} | {med / 1e9:.2f} | {med / base:.2f}x | {cores:.2f} | {spread} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
