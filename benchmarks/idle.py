"""Many connections on one server: idle memory at 100,000 and the accept rate under a
connect storm, utcp beside asyncio TCP in the same run (issue #14 item 2).

    python -m benchmarks.idle                       # 100,000 idle, a storm of 10,000
    python -m benchmarks.idle --conns 20000 --storm 2000 --clients 2 --only utcp

- **idle**: one server process (asyncio's default loop, the request protocol and
  handler of `benchmarks.peers`, so each server connection is a StreamReader /
  StreamWriter and a handler task) holds `--conns` connections that each made one
  request and got a one-byte answer. KiB/conn = the server's RSS growth (after a gc)
  over the connections it holds. The clients are `--clients` processes, each opening
  its share 64 at a time from a source address of its own (127.0.0.10, .11, ...):
  every client connection is a UDP (or TCP) socket of its own, and one source address
  has only the ~28,000 ports of the ephemeral range.
- **storm**: a fresh server; every client process starts all of its share of
  `--storm` connects at once, at one signal. accepted/s = connections that got their
  answer / time from the signal to the last answer; failures (refused, timed out after
  `--storm-time`) are counted, not retried.

utcp's server: Config(mss=1400, pmtu_probing=False, max_connections above the count),
backlog 1024; TCP's: asyncio.start_server(backlog=1024) (the kernel caps it at
net.core.somaxconn). RLIMIT_NOFILE is raised to cover every socket (as root past the
hard limit). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import platform
import resource
import socket
import sys
import time
from typing import Any

from benchmarks.peers import HEADER, ServerState, handle, rss_bytes

CONCURRENCY = 64
TRANSPORTS = {"utcp": "utcp", "tcp": "asyncio TCP"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    for limits in ((want, max(hard, want)), (min(want, hard), hard)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


KEEPALIVE = os.environ.get("BENCH_IDLE_KEEPALIVE") == "1"


def _utcp_config(count: int) -> Any:
    import utcp
    # Keepalive off unless --keepalive: asyncio TCP sockets have none (SO_KEEPALIVE is
    # off by default, and Linux waits two hours when it is on), while utcp probes an
    # idle connection every 25 s: 8,000 datagrams a second at 100,000 connections.
    default = utcp.Config()
    return utcp.Config(mss=1400, pmtu_probing=False,
                       max_connections=max(default.max_connections, count + 1000),
                       keepalive_interval=default.keepalive_interval if KEEPALIVE else None)


# ------------------------------------------------------------------------ server

def server_main(pipe: Any, key: str, count: int) -> None:
    """Serve; answer "stats" with (RSS after a gc, idle streams open, errors); "stop"."""
    raise_nofile(count + 1000)
    rss_bytes()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if key == "utcp":
            import utcp
            server: Any = await utcp.start_server(handle, "127.0.0.1", 0,
                                                  config=_utcp_config(count), backlog=1024)
        else:
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        pipe.send(server.sockets[0].getsockname()[1])
        while True:
            msg = await loop.run_in_executor(None, pipe.recv)
            if msg != "stats":
                break
            gc.collect()
            await asyncio.sleep(0.05)
            pipe.send((rss_bytes(), ServerState.idle_open, ServerState.errors[:5]))

    try:
        asyncio.run(main())
    finally:
        os._exit(0)   # no teardown of 100,000 sockets and tasks


# ------------------------------------------------------------------------ clients

async def _connect(key: str, port: int, source: str, count: int) -> Any:
    if key == "utcp":
        import utcp
        # bound here, without the SO_REUSEADDR a local_addr bind gets, so that no two
        # sockets are given the same ephemeral port
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        return await utcp.open_connection("127.0.0.1", port, sock=sock,
                                          config=_utcp_config(count))
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def client_main(pipe: Any, key: str, port: int, source: str, count: int, mode: str,
                timeout: float) -> None:
    """Open `count` connections ("idle": CONCURRENCY at a time; "storm": all at once on
    the parent's "go"), report (answered, errors, wall-clock time of the last answer,
    RSS growth), then hold them until told to stop."""
    raise_nofile(count + 1000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        writers: list[asyncio.StreamWriter] = []
        errors: list[str] = []
        last = 0.0
        request = HEADER.pack(b"I", 0)
        gate = asyncio.Semaphore(CONCURRENCY if mode == "idle" else count)

        async def one() -> None:
            nonlocal last
            async with gate:
                try:
                    reader, writer = await asyncio.wait_for(
                        _connect(key, port, source, count), timeout)
                    writers.append(writer)
                    writer.write(request)
                    if await asyncio.wait_for(reader.readexactly(1), timeout) != b"i":
                        raise AssertionError("wrong answer")
                    last = time.time()
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        gc.collect()
        rss0 = rss_bytes()
        pipe.send("ready")
        await loop.run_in_executor(None, pipe.recv)   # "go"
        await asyncio.gather(*(one() for _ in range(count)))
        gc.collect()
        pipe.send((count - len(errors), errors[:3], len(errors), last, rss_bytes() - rss0))
        await loop.run_in_executor(None, pipe.recv)   # "stop"

    try:
        asyncio.run(main())
    finally:
        os._exit(0)


class Proc:
    def __init__(self, target: Any, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()

    def recv(self, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError("a benchmark process did not answer")
        return self.pipe.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)


def run_one(key: str, count: int, clients: int, mode: str, timeout: float
            ) -> dict[str, Any]:
    server = Proc(server_main, key, count)
    procs: list[Proc] = []
    try:
        port = server.recv(60)
        time.sleep(0.3)
        server.pipe.send("stats")
        rss0 = server.recv(60)[0]
        shares = [count // clients + (i < count % clients) for i in range(clients)]
        procs = [Proc(client_main, key, port, f"127.0.0.{10 + i}", n, mode, timeout)
                 for i, n in enumerate(shares)]
        for p in procs:
            p.recv(120)   # "ready"
        start = time.time()
        for p in procs:
            p.pipe.send("go")
        results = [p.recv(timeout + 3600) for p in procs]
        took = time.time() - start
        time.sleep(1.0)   # handshakes' last ACKs and timers settle
        server.pipe.send("stats")
        rss1, held, server_errors = server.recv(120)
        ok = sum(r[0] for r in results)
        errors = [e for r in results for e in r[1]] + list(server_errors)
        last = max((r[3] for r in results if r[0]), default=start)
        return {"ok": ok, "failed": sum(r[2] for r in results), "held": held,
                "kib": (rss1 - rss0) / 1024 / held if held else float("nan"),
                "client_kib": sum(r[4] for r in results) / 1024 / ok if ok else float("nan"),
                "rate": ok / (last - start) if ok and last > start else float("nan"),
                "seconds": took, "errors": errors[:5]}
    finally:
        for p in procs:
            p.stop()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=100_000, help="idle connections (100000)")
    ap.add_argument("--storm", type=int, default=10_000,
                    help="connects started at once in the storm (10000; 0 skips)")
    ap.add_argument("--clients", type=int, default=6, help="client processes (6)")
    ap.add_argument("--storm-time", type=float, default=60.0,
                    help="seconds a storm connect may take before it counts as failed (60)")
    ap.add_argument("--only", default="utcp,tcp", help="utcp,tcp")
    ap.add_argument("--keepalive", action="store_true",
                    help="utcp with its default keepalive (every 25 s idle) rather than none")
    args = ap.parse_args()
    if args.keepalive:
        os.environ["BENCH_IDLE_KEEPALIVE"] = "1"   # spawned processes inherit it
    global KEEPALIVE
    KEEPALIVE = args.keepalive
    nofile = raise_nofile(args.conns + 1000)
    per_process = min(28_000, nofile - 500)
    if -(-max(args.conns, args.storm) // args.clients) > per_process:
        ap.error(f"more than {per_process} connections per client process: raise --clients"
                 " (a socket each, one source address per process, RLIMIT_NOFILE"
                 f" {nofile}, ~28,000 ephemeral ports)")
    keys = [k for k in args.only.split(",") if k in TRANSPORTS]
    began = time.time()
    rows = []
    for key in keys:
        row: dict[str, Any] = {"key": key}
        # TCP's server needs a file descriptor per connection, utcp's one per server
        count = args.conns if key == "utcp" else min(args.conns, nofile - 500)
        if count:
            _log(f"{key}: opening {count} idle connections")
            row["idle"] = run_one(key, count, args.clients, "idle", 120.0)
            _log(f"{key}: idle {row['idle']}")
        if args.storm:
            _log(f"{key}: a storm of {args.storm} connects")
            row["storm"] = run_one(key, args.storm, args.clients, "storm", args.storm_time)
            _log(f"{key}: storm {row['storm']}")
        rows.append(row)
    import utcp
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))},"
          f" {time.time() - began:.0f} s; loopback, asyncio default loop, Python"
          f" {platform.python_version()}, {os.cpu_count()} CPUs, Linux {platform.release()};"
          f" utcp {getattr(utcp, '__version__', '?')}; {args.clients} client processes;"
          f" RLIMIT_NOFILE {nofile}; utcp keepalive {'25 s' if KEEPALIVE else 'off'}")
    print()
    print(f"| transport | idle connections held | server KiB/conn | client KiB/conn"
          f" | seconds to open | storm of {args.storm}: accepted/s | storm failures"
          f" | storm seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        i, s = row.get("idle"), row.get("storm")
        cells = [TRANSPORTS[row["key"]]]
        cells += ([f"{i['held']}", f"{i['kib']:.2f}", f"{i['client_kib']:.1f}",
                   f"{i['seconds']:.1f}"] if i else ["-"] * 4)
        cells += ([f"{s['rate']:.0f}", f"{s['failed']}", f"{s['seconds']:.1f}"]
                  if s else ["-"] * 3)
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        for what in ("idle", "storm"):
            r = row.get(what)
            if r and r["errors"]:
                print(f"\n{TRANSPORTS[row['key']]} {what}: {r['failed']} failed;"
                      f" first errors: {'; '.join(r['errors'])}")


if __name__ == "__main__":
    main()
