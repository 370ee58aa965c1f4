"""`utcp` on the command line: perf (iperf3-like), tunnel (TCP over utcp), cat (netcat-like).

Every failure a user can cause (a bad address, a port in use, a peer that is gone)
prints one line on stderr and exits non-zero; a traceback means a bug in utcp.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import utcp
from utcp import log

PERF_MAGIC = b"UTCPPERF1 "
PERF_PORT = 5201
CHUNK = 128 * 1024


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def parse_hostport(text: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """'HOST:PORT', ':PORT', '[v6]:PORT' or 'PORT'."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise CliError(f"bad address {text!r}: the port must be a number") from None
    if not 0 <= number <= 65535:
        raise CliError(f"bad address {text!r}: the port must be 0-65535")
    return host, number


def _config(args: argparse.Namespace) -> utcp.Config:
    kwargs: dict[str, Any] = {}
    if getattr(args, "mss", None):
        kwargs["mss"] = args.mss
        kwargs["pmtu_probing"] = False  # an explicit size is pinned, not a starting point
    if getattr(args, "pcap", None):
        kwargs["pcap"] = args.pcap
    if getattr(args, "key", None):
        kwargs["secret_key"] = args.key
    if getattr(args, "server_key", None):
        kwargs["server_key"] = args.server_key
    if getattr(args, "allow", None):
        kwargs["allowed_keys"] = tuple(args.allow)
    try:
        return utcp.Config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


# ---------------------------------------------------------------------- perf

@dataclass
class Flow:
    """One perf connection as the client sees it."""

    ident: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    bytes: int = 0
    last_bytes: int = 0
    last_retrans: int = 0
    server_result: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> utcp.Stats:
        return self.writer.get_extra_info("stats")  # type: ignore[no-any-return]


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GBytes", 1 << 30), ("MBytes", 1 << 20), ("KBytes", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} Bytes"


def _fmt_rate(bits_per_s: float) -> str:
    for unit, scale in (("Gbits/sec", 1e9), ("Mbits/sec", 1e6), ("Kbits/sec", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:.2f} {unit}"
    return f"{bits_per_s:.0f} bits/sec"


async def _perf_serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        if not line.startswith(PERF_MAGIC):
            writer.close()
            return
        spec = json.loads(line[len(PERF_MAGIC):])
        start = time.monotonic()
        received = 0
        if spec.get("reverse"):
            await _perf_source(writer, spec.get("duration"), spec.get("bytes"))
            writer.write_eof()
            while data := await reader.read(CHUNK):
                received += len(data)
        else:
            while data := await reader.read(CHUNK):
                received += len(data)
        elapsed = time.monotonic() - start
        stats = writer.get_extra_info("stats")
        result = {"bytes_received": received, "seconds": elapsed,
                  "segments_retransmitted": stats.segments_retransmitted}
        if not spec.get("reverse"):
            writer.write(json.dumps(result).encode() + b"\n")
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        writer.transport.abort()


async def _perf_source(writer: asyncio.StreamWriter, duration: float | None,
                       nbytes: int | None, counter: Flow | None = None) -> int:
    block = os.urandom(CHUNK)
    view = memoryview(block)
    sent = 0
    deadline = time.monotonic() + (duration if duration else 1e18)
    while time.monotonic() < deadline:
        n = CHUNK if nbytes is None else min(CHUNK, nbytes - sent)
        if n <= 0:
            break
        writer.write(view[:n])
        sent += n
        if counter is not None:
            counter.bytes += n
        await writer.drain()
    return sent


async def perf_client(host: str, port: int, *, duration: float | None, nbytes: int | None,
                      parallel: int, reverse: bool, interval: float, as_json: bool,
                      config: utcp.Config, out: Any = None) -> dict[str, Any]:
    out = out or sys.stdout
    flows: list[Flow] = []
    try:
        for i in range(parallel):
            reader, writer = await utcp.open_connection(host, port, config=config)
            flows.append(Flow(i + 1, reader, writer))
    except OSError as exc:
        for flow in flows:
            flow.writer.transport.abort()
        raise CliError(f"cannot connect to {host}:{port}: {_describe(exc)}") from None
    # -n is the total: split it so the flows add up to exactly that many bytes
    share: list[int | None] = ([None] * parallel if nbytes is None else
                               [nbytes // parallel + (i < nbytes % parallel)
                                for i in range(parallel)])
    peer = flows[0].writer.get_extra_info("peername")
    if not as_json:
        print(f"Connecting to host {host}, port {port} over utcp"
              f"{' (reverse: server sends)' if reverse else ''}", file=out)
        for flow in flows:
            sock = flow.writer.get_extra_info("sockname")
            print(f"[{flow.ident:3d}] local {sock[0]} port {sock[1]} connected to "
                  f"{peer[0]} port {peer[1]}", file=out)
        print("[ ID] Interval           Transfer     Bitrate         Retr  Cwnd", file=out)

    async def run_flow(flow: Flow) -> None:
        flow_bytes = share[flow.ident - 1]
        spec = {"reverse": reverse, "duration": duration, "bytes": flow_bytes}
        flow.writer.write(PERF_MAGIC + json.dumps(spec).encode() + b"\n")
        if reverse:
            while data := await flow.reader.read(CHUNK):
                flow.bytes += len(data)
            flow.writer.write_eof()
        else:
            await _perf_source(flow.writer, duration, flow_bytes, flow)
            flow.writer.write_eof()
            line = await flow.reader.readline()
            if line:
                flow.server_result = json.loads(line)
        flow.writer.close()
        with contextlib.suppress(ConnectionError):
            await flow.writer.wait_closed()

    intervals: list[dict[str, Any]] = []
    start = time.monotonic()
    tasks = [asyncio.create_task(run_flow(f)) for f in flows]
    last = start
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=interval)
            now = time.monotonic()
            finished = all(t.done() for t in tasks)
            if (now - last < interval * 0.5 and not finished) or (
                    finished and now - last < interval * 0.05):
                continue  # a sliver of an interval at the end is noise, not a report
            intervals.append(_report_interval(flows, last - start, now - start, as_json, out))
            last = now
        for t in tasks:
            t.result()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        for t in tasks:
            t.cancel()
        for flow in flows:
            flow.writer.transport.abort()
        raise CliError(f"connection to {host}:{port} failed: {_describe(exc)}") from None
    elapsed = time.monotonic() - start
    total = sum(f.bytes for f in flows)
    retrans = sum(f.stats().segments_retransmitted for f in flows)
    received = (sum(f.server_result.get("bytes_received", 0) for f in flows)
                if not reverse else total)
    summary = {
        "start": {"host": host, "port": port, "parallel": parallel, "reverse": reverse,
                  "duration": duration, "bytes": nbytes},
        "intervals": intervals,
        "end": {"seconds": elapsed, "bytes": total, "bits_per_second": total * 8 / elapsed,
                "bytes_received": received, "retransmits": retrans,
                "streams": [_flow_summary(f, elapsed) for f in flows]},
    }
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        print("- - - - - - - - - - - - - - - - - - - - - - - - -", file=out)
        role = "receiver" if reverse else "sender"
        print(f"[SUM]   0.00-{elapsed:<6.2f} sec  {_fmt_bytes(total):>11}  "
              f"{_fmt_rate(total * 8 / elapsed):>15}  {retrans:4d}        {role}", file=out)
        if not reverse:
            print(f"[SUM]   0.00-{elapsed:<6.2f} sec  {_fmt_bytes(received):>11}  "
                  f"{_fmt_rate(received * 8 / elapsed):>15}              receiver", file=out)
        s = flows[0].stats()
        srtt = f"{s.srtt * 1e6:.0f} us" if s.srtt is not None else "-"
        print(f"stats (stream 1): mss {s.mss}, srtt {srtt}, rto {s.rto * 1e3:.0f} ms, "
              f"cwnd {s.cwnd}, ssthresh {s.ssthresh}, segments sent {s.segments_sent}, "
              f"received {s.segments_received}, retransmitted {s.segments_retransmitted}",
              file=out)
    return summary


def _flow_summary(flow: Flow, elapsed: float) -> dict[str, Any]:
    s = flow.stats()
    return {"id": flow.ident, "bytes": flow.bytes, "bits_per_second": flow.bytes * 8 / elapsed,
            "retransmits": s.segments_retransmitted, "srtt": s.srtt, "rto": s.rto,
            "cwnd": s.cwnd, "ssthresh": s.ssthresh, "mss": s.mss,
            "segments_sent": s.segments_sent, "segments_received": s.segments_received}


def _report_interval(flows: list[Flow], t0: float, t1: float, as_json: bool,
                     out: Any) -> dict[str, Any]:
    dt = max(t1 - t0, 1e-9)
    rows = []
    for flow in flows:
        s = flow.stats()
        delta = flow.bytes - flow.last_bytes
        retr = s.segments_retransmitted - flow.last_retrans
        flow.last_bytes, flow.last_retrans = flow.bytes, s.segments_retransmitted
        rows.append({"id": flow.ident, "start": t0, "end": t1, "bytes": delta,
                     "bits_per_second": delta * 8 / dt, "retransmits": retr, "cwnd": s.cwnd})
        if not as_json:
            print(f"[{flow.ident:3d}] {t0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(delta):>11}  "
                  f"{_fmt_rate(delta * 8 / dt):>15}  {retr:4d}  {_fmt_bytes(s.cwnd):>11}",
                  file=out)
    if len(flows) > 1 and not as_json:
        total = sum(r["bytes"] for r in rows)
        print(f"[SUM] {t0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(total):>11}  "
              f"{_fmt_rate(total * 8 / dt):>15}  {sum(r['retransmits'] for r in rows):4d}",
              file=out)
    return {"start": t0, "end": t1, "streams": rows}


async def perf_server(host: str, port: int, config: utcp.Config, *,
                      ready: asyncio.Future[int] | None = None, quiet: bool = False) -> None:
    try:
        server = await utcp.start_server(_perf_serve, host, port, config=config)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {_describe(exc)}") from None
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    if not quiet:
        print(f"Server listening on udp {host} port {bound} (utcp)", flush=True)
    async with server:
        await server.serve_forever()


async def _perf(args: argparse.Namespace) -> int:
    config = _config(args)
    duration = None if args.bytes is not None else args.time
    if args.server:
        await perf_server(args.bind or "0.0.0.0", args.port, config)
        return 0
    if args.client:
        await perf_client(args.client, args.port, duration=duration, nbytes=args.bytes,
                          parallel=args.parallel, reverse=args.reverse,
                          interval=args.interval, as_json=args.json, config=config)
        return 0
    # neither: a client against an in-process server on loopback
    server_config = client_config = config
    if args.secure:
        from utcp import crypto

        private, public = crypto.generate_keypair()
        server_config = config.replace(secret_key=private, server_key=None)
        client_config = config.replace(server_key=public)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[int] = loop.create_future()
    server_task = asyncio.create_task(perf_server("127.0.0.1", 0, server_config, ready=ready,
                                                  quiet=True))
    try:
        port = await ready
        await perf_client("127.0.0.1", port, duration=duration, nbytes=args.bytes,
                          parallel=args.parallel, reverse=args.reverse,
                          interval=args.interval, as_json=args.json, config=client_config)
    finally:
        server_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server_task
    return 0


# ---------------------------------------------------------------------- tunnel and cat

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side: half-close crosses the tunnel."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, TimeoutError):
        writer.transport.abort()


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter,
                  r2: asyncio.StreamReader, w2: asyncio.StreamWriter) -> None:
    try:
        await asyncio.gather(_pipe(r1, w2), _pipe(r2, w1))
    finally:
        for w in (w1, w2):
            w.close()
        for w in (w1, w2):
            with contextlib.suppress(ConnectionError, TimeoutError):
                await w.wait_closed()


async def _tunnel(args: argparse.Namespace) -> int:
    config = _config(args)
    host, port = parse_hostport(args.listen)
    if (args.remote is None) == (args.target is None):
        raise CliError("give exactly one of --remote (TCP in, utcp out) "
                       "or --target (utcp in, TCP out)")
    # TCP in, utcp out (--remote) or utcp in, TCP out (--target): the same splice
    if args.remote is not None:
        listen: Any = asyncio.start_server
        dial: Any = functools.partial(utcp.open_connection, config=config)
        target, kind, far = args.remote, "tcp", ""
    else:
        listen = functools.partial(utcp.start_server, config=config)
        dial = asyncio.open_connection
        target, kind, far = args.target, "udp (utcp)", "tcp "
    thost, tport = parse_hostport(target, default_host="127.0.0.1")

    # asyncio's StreamReaderProtocol keeps a server's handler task only until the
    # accepted connection is lost, and a client protocol holds its reader weakly: once
    # the near side has closed, a splice still waiting for the far side's EOF is a
    # cycle nothing else reaches, which the garbage collector destroyed mid-transfer.
    live: set[asyncio.Task[Any]] = set()

    async def on_connection(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            live.add(task)
            task.add_done_callback(live.discard)
        try:
            far_reader, far_writer = await dial(thost, tport)
        except OSError as exc:
            print(f"utcp tunnel: cannot reach {far}{thost}:{tport}: {_describe(exc)}",
                  file=sys.stderr)
            writer.transport.abort()
            return
        await _splice(reader, writer, far_reader, far_writer)

    try:
        server = await listen(on_connection, host, port)
    except OSError as exc:
        raise CliError(f"cannot listen on {kind} {host}:{port}: {_describe(exc)}") from None
    bound = server.sockets[0].getsockname()[1]
    print(f"utcp tunnel: listening on {kind} {host} port {bound}", flush=True)
    async with server:
        await server.serve_forever()
    return 0


async def _cat(args: argparse.Namespace) -> int:
    config = _config(args)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.gather(_stdin_to(writer), _to_stdout(reader))
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError) as exc:
            if not done.done():
                done.set_exception(CliError(f"connection lost: {_describe(exc)}"))
            return
        if not done.done():
            done.set_result(None)

    if args.listen:
        host, port = parse_hostport(args.listen)
        try:
            server = await utcp.start_server(session, host, port, config=config)
        except OSError as exc:
            raise CliError(f"cannot listen on udp {host}:{port}: {_describe(exc)}") from None
        if args.verbose:
            print(f"listening on udp {host} port {server.sockets[0].getsockname()[1]}",
                  file=sys.stderr, flush=True)
        try:
            await done  # one session, like nc -l
        finally:
            server.close()
        return 0
    if args.host is None or args.port is None:
        raise CliError("usage: utcp cat HOST PORT, or utcp cat -l [HOST:]PORT")
    try:
        reader, writer = await utcp.open_connection(args.host, args.port, config=config)
    except OSError as exc:
        raise CliError(f"cannot connect to {args.host}:{args.port}: {_describe(exc)}") from None
    await session(reader, writer)
    await done
    return 0


def _read_stdin(loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[bytes], fd: int) -> None:
    """Blocking reads in a daemon thread, handed over one chunk at a time (back-pressure).

    Not the loop's default executor: asyncio.run waits for that at exit, so a connection
    that fails while stdin stays open (a terminal, say) would hang the command.
    """
    try:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                data = b""
            asyncio.run_coroutine_threadsafe(chunks.put(data), loop).result()
            if not data:
                return
    except (RuntimeError, concurrent.futures.CancelledError):
        return  # the loop is closed or closing: the command is over


async def _stdin_to(writer: asyncio.StreamWriter) -> None:
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)
    threading.Thread(target=_read_stdin, daemon=True, name="utcp-stdin",
                     args=(asyncio.get_running_loop(), chunks, sys.stdin.fileno())).start()
    while data := await chunks.get():
        writer.write(data)
        await writer.drain()
    writer.write_eof()


async def _to_stdout(reader: asyncio.StreamReader) -> None:
    out = sys.stdout.buffer
    while data := await reader.read(CHUNK):
        out.write(data)
        out.flush()


# ---------------------------------------------------------------------- entry point

def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve address ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        if isinstance(exc.__cause__, ConnectionRefusedError):
            exc = exc.__cause__  # the reason under asyncio's "Connect call failed" wording
        # utcp's own refusals say why (port unreachable, a secure-mode mismatch); the OS's
        # errno-carrying ones ("[Errno 111] Connect call failed ...") do not
        return str(exc) if exc.errno is None and str(exc) else "connection refused"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utcp", description=(
        "TCP's reliable byte streams over UDP: measure, tunnel, and pipe."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events")
    parser.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mss", type=int,
                       help="pin the segment payload to this many bytes (no PMTU probing)")
        p.add_argument("--pcap", help="write every segment to this pcap file")
        p.add_argument("--key", metavar="PRIVATE", help="secure mode: our private key "
                       "(a server needs one; see utcp keygen)")
        p.add_argument("--server-key", metavar="PUBLIC",
                       help="secure mode: the server's public key, pinned by a client")
        p.add_argument("--allow", metavar="PUBLIC", action="append",
                       help="secure server: accept only this client key (repeatable)")
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log protocol events")
        p.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                       help="log events as JSON lines")

    perf = sub.add_parser("perf", help="iperf3-like throughput test",
                          description="With neither -s nor -c: a client against an "
                                      "in-process server on loopback.")
    mode = perf.add_mutually_exclusive_group()
    mode.add_argument("-s", "--server", action="store_true", help="run as server")
    mode.add_argument("-c", "--client", metavar="HOST", help="run as client to HOST")
    perf.add_argument("-p", "--port", type=int, default=PERF_PORT)
    perf.add_argument("-B", "--bind", help="server address to bind")
    perf.add_argument("-t", "--time", type=float, default=3.0, help="seconds (default 3)")
    perf.add_argument("-n", "--bytes", type=_size, help="bytes to send instead of -t")
    perf.add_argument("-P", "--parallel", type=int, default=1)
    perf.add_argument("-R", "--reverse", action="store_true", help="server sends")
    perf.add_argument("-i", "--interval", type=float, default=1.0)
    perf.add_argument("--json", action="store_true")
    perf.add_argument("--secure", action="store_true",
                      help="in-process run: secure mode with a fresh key pair")
    common(perf)

    tunnel = sub.add_parser("tunnel", help="forward TCP over utcp",
                            description="Client side: --listen 127.0.0.1:8080 --remote "
                                        "HOST:PORT. Server side: --listen :PORT --target "
                                        "127.0.0.1:80.")
    tunnel.add_argument("--listen", required=True, metavar="[HOST]:PORT")
    tunnel.add_argument("--remote", metavar="HOST:PORT", help="the utcp tunnel server")
    tunnel.add_argument("--target", metavar="HOST:PORT", help="the TCP service to reach")
    common(tunnel)

    sub.add_parser("keygen", help="print a new secure-mode key pair",
                   description="Prints 'private: ...' and 'public: ...'. Give the private "
                               "key to the server (--key), the public one to clients "
                               "(--server-key).")

    cat = sub.add_parser("cat", help="netcat over utcp")
    cat.add_argument("-l", "--listen", metavar="[HOST:]PORT", help="wait for one connection")
    cat.add_argument("host", nargs="?")
    cat.add_argument("port", nargs="?", type=int)
    common(cat)
    return parser


def _size(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1].upper() in scale:
            return int(float(text[:-1]) * scale[text[-1].upper()])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose or args.log_json:
        log.configure(json=args.log_json, level=logging.INFO)
    if args.command == "perf":
        if args.parallel < 1:
            print("utcp: -P must be at least 1", file=sys.stderr)
            return 1
        if not 0 <= args.port <= 65535:
            print("utcp: the port must be 0-65535", file=sys.stderr)
            return 1
    if args.command == "keygen":
        from utcp import crypto

        private, public = crypto.generate_keypair()
        print(f"private: {private}\npublic: {public}")
        return 0
    runner = {"perf": _perf, "tunnel": _tunnel, "cat": _cat}[args.command]
    try:
        return asyncio.run(runner(args))
    except CliError as exc:
        print(f"utcp {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
