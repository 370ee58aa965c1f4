"""`utcp` on the command line: perf (iperf3-like), tunnel (TCP over utcp), cat (netcat-like).

Every failure a user can cause prints one line on stderr and no traceback (a traceback
means a bug in utcp): exit status 2 for a bad command line (argparse's convention, which
iperf3 and netcat follow too: found before anything is sent), 1 for what goes wrong at
run time (a host that does not resolve, a refused connection, a port in use, a file that
cannot be written).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import utcp
from utcp import log, plotdata, workers
from utcp.config import CONGESTION_ALGORITHMS

PERF_MAGIC = b"UTCPPERF1 "
PERF_PORT = 5201
CHUNK = 128 * 1024
KEY_ENV = "UTCP_KEY"
MAX_PARALLEL = 128  # iperf3's limit too: more flows measure the scheduler, not the path


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class StdoutClosed(Exception):
    """The reader of our stdout has gone (`utcp keygen | head -1`): end quietly.

    Not a `BrokenPipeError`: that is a `ConnectionError`, which the commands read as a
    failure of the utcp connection.
    """


def _say(out: Any, text: str = "", *, end: str = "\n", flush: bool = False) -> None:
    try:
        print(text, file=out, end=end, flush=flush)
    except BrokenPipeError:
        raise StdoutClosed from None


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


class UsageError(Exception):
    """A bad command line found after parsing: argparse's one line and exit status 2."""


def _serves(args: argparse.Namespace) -> bool:
    """Whether this command accepts utcp connections (and so may take a server key)."""
    return bool((args.command == "perf" and args.server)
                or (args.command == "tunnel" and args.target is not None)
                or (args.command == "cat" and args.listen is not None))


def _private_key(args: argparse.Namespace) -> str | None:
    """--key, else --key-file, else $UTCP_KEY (only where a private key has a use).

    A key on the command line is visible to every local user (ps, /proc/PID/cmdline) and
    lands in shell history; a file readable by its owner only, or the environment
    (/proc/PID/environ is private to the user), keeps it out of sight.
    """
    if args.key is not None and args.key_file is not None:
        raise UsageError("give the private key once: --key or --key-file, not both")
    if args.key is not None:
        return str(args.key)
    if args.key_file is not None:
        try:
            with open(args.key_file, encoding="utf-8") as f:
                text = f.read(64 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
            raise CliError(f"cannot read key file {args.key_file!r}: {reason}") from None
        return _key_from_text(text, args.key_file)
    # the environment is everybody's, the shell's included: a client that pins no server
    # key has no use for a private key, and giving it one would turn secure mode on
    env = os.environ.get(KEY_ENV, "").strip()
    if env and (_serves(args) or args.server_key is not None):
        return env
    return None


def _key_from_text(text: str, name: str) -> str:
    """The key alone, or `utcp keygen`'s output (the 'private:' line; comments skipped)."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    for line in lines:
        label, sep, value = line.partition(":")
        if sep and label.strip().lower() == "private":
            return value.strip()
    if len(lines) == 1 and ":" not in lines[0]:
        return lines[0]
    raise CliError(f"key file {name!r}: expected one base64 private key, or the "
                   "'private: ...' line that utcp keygen prints")

def _as_server(config: utcp.Config) -> utcp.Config:
    """Secure mode's server footguns (Config.check_server) as a one-line error."""
    try:
        config.check_server()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return config


def _config(args: argparse.Namespace) -> utcp.Config:
    kwargs: dict[str, Any] = {}
    if args.mss is not None:
        kwargs["mss"] = args.mss
        kwargs["pmtu_probing"] = False  # an explicit size is pinned, not a starting point
    if args.pcap:
        kwargs["pcap"] = args.pcap
    if args.congestion is not None:
        kwargs["congestion"] = args.congestion
    key = _private_key(args)
    in_process_secure = args.command == "perf" and getattr(args, "secure", False) and \
        not args.server and not args.client
    if key is not None and not _serves(args) and args.server_key is None \
            and not in_process_secure:
        # a client proves who it is with its key only inside the handshake that pins the
        # server's: without --server-key the key has no use (and utcp would refuse it)
        raise UsageError("a client's private key (--key, --key-file) needs --server-key, "
                         "the server's public key")
    if key is not None:
        kwargs["secret_key"] = key
    if args.server_key is not None:
        kwargs["server_key"] = args.server_key
    if args.allow:
        kwargs["allowed_keys"] = tuple(args.allow)
    try:
        config = utcp.Config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if config.pcap:
        _check_writable(config.pcap)
    return config


def _check_writable(path: str) -> None:
    """Fail before the first packet: the capture is opened when the first socket is.

    That happens inside the server task of an in-process `perf` run, whose failure
    nothing awaited, so an unwritable path hung the command. Appending (not truncating)
    leaves an existing capture alone should the run fail before it starts.
    """
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise CliError(f"cannot write pcap file {path!r}: {exc.strerror or exc}") from None


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
                       nbytes: int | None, counter: Flow | None = None,
                       stop: asyncio.Event | None = None) -> int:
    """Send for `duration` seconds or `nbytes` bytes; neither: until `stop` (or forever)."""
    block = os.urandom(CHUNK)
    view = memoryview(block)
    sent = 0
    deadline = time.monotonic() + duration if duration else math.inf
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        n = CHUNK if nbytes is None else min(CHUNK, nbytes - sent)
        if n <= 0:
            break
        writer.write(view[:n])
        sent += n
        if counter is not None:
            counter.bytes += n
        await writer.drain()
    return sent


def _interrupt_handlers(stop: asyncio.Event) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C or SIGTERM ends an open-ended run (`-t 0`) with its report, as in iperf3.

    The handler goes at the first signal: a second Ctrl-C interrupts at once (exit 130)
    should the orderly end itself hang.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        stop.set()
        for sig in signals:
            loop.remove_signal_handler(sig)

    @contextlib.contextmanager
    def installed() -> Iterator[None]:
        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return installed()


async def perf_client(host: str, port: int, *, duration: float | None, nbytes: int | None,
                      parallel: int, reverse: bool, interval: float | None, as_json: bool,
                      config: utcp.Config, out: Any = None,
                      sampler: plotdata.StatsSampler | None = None) -> dict[str, Any]:
    """Run the client side; `duration` and `nbytes` both None: until SIGINT or SIGTERM.

    `interval` None (or 0) prints no interval reports, only the summary. `sampler`
    (--plot) is told of every flow, to sample its stats while it runs.
    """
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
    if sampler is not None:
        for flow in flows:
            sampler.watch(flow.ident, flow.stats, flow.writer.get_extra_info("sockname")[1])
    try:
        return await _perf_run(flows, host, port, duration=duration, nbytes=nbytes,
                               reverse=reverse, interval=interval or None, as_json=as_json,
                               out=out)
    except BaseException:
        for flow in flows:
            flow.writer.transport.abort()
        raise


async def _perf_run(flows: list[Flow], host: str, port: int, *, duration: float | None,
                    nbytes: int | None, reverse: bool, interval: float | None,
                    as_json: bool, out: Any) -> dict[str, Any]:
    parallel = len(flows)
    # -n is the total: split it so the flows add up to exactly that many bytes
    share: list[int | None] = ([None] * parallel if nbytes is None else
                               [nbytes // parallel + (i < nbytes % parallel)
                                for i in range(parallel)])
    open_ended = duration is None and nbytes is None
    stop = asyncio.Event()
    peer = flows[0].writer.get_extra_info("peername")
    if not as_json:
        _say(out, f"Connecting to host {host}, port {port} over utcp"
                  f"{' (reverse: server sends)' if reverse else ''}"
                  f"{' until interrupted' if open_ended else ''}")
        for flow in flows:
            sock = flow.writer.get_extra_info("sockname")
            _say(out, f"[{flow.ident:3d}] local {sock[0]} port {sock[1]} connected to "
                      f"{peer[0]} port {peer[1]}")
        _say(out, "[ ID] Interval           Transfer     Bitrate         Retr  Cwnd",
             flush=True)

    async def run_flow(flow: Flow) -> None:
        flow_bytes = share[flow.ident - 1]
        spec = {"reverse": reverse, "duration": duration, "bytes": flow_bytes}
        flow.writer.write(PERF_MAGIC + json.dumps(spec).encode() + b"\n")
        if reverse:
            while data := await flow.reader.read(CHUNK):
                flow.bytes += len(data)
            flow.writer.write_eof()
        else:
            await _perf_source(flow.writer, duration, flow_bytes, flow, stop)
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
    stopped = asyncio.create_task(stop.wait())
    last = start
    every = interval if interval is not None else math.inf
    try:
        with _interrupt_handlers(stop) if open_ended else contextlib.nullcontext():
            while not all(t.done() for t in tasks):
                await asyncio.wait([*tasks, stopped], timeout=interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() and reverse:
                    # the server sends until we go: what arrived so far is the result,
                    # and a reset (as iperf3 closes) stops the server's sending at once
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    for flow in flows:
                        flow.writer.transport.abort()
                now = time.monotonic()
                finished = all(t.done() for t in tasks)
                if interval is None or (now - last < every * 0.5 and not finished) or (
                        finished and now - last < every * 0.05):
                    continue  # a sliver of an interval at the end is noise, not a report
                intervals.append(_report_interval(flows, last - start, now - start,
                                                  as_json, out))
                last = now
        for t in tasks:
            if not t.cancelled():
                t.result()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        for t in tasks:
            t.cancel()
        raise CliError(f"connection to {host}:{port} failed: {_describe(exc)}") from None
    finally:
        stopped.cancel()
    elapsed = max(time.monotonic() - start, 1e-9)
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
                "interrupted": stop.is_set(),
                "streams": [_flow_summary(f, elapsed, reverse) for f in flows]},
    }
    if as_json:
        _say(out, json.dumps(summary, indent=2))
        return summary
    # as iperf3: each stream's sender and receiver rows, then their sums
    _say(out, "- - - - - - - - - - - - - - - - - - - - - - - - -")
    rows: list[tuple[str, int, int | None, str]] = []
    for flow in flows:
        s = flow.stats()
        if reverse:
            rows.append((f"[{flow.ident:3d}]", flow.bytes, None, "receiver"))
        else:
            rows.append((f"[{flow.ident:3d}]", flow.bytes, s.segments_retransmitted, "sender"))
            rows.append((f"[{flow.ident:3d}]", flow.server_result.get("bytes_received", 0),
                         None, "receiver"))
    if reverse:
        rows.append(("[SUM]", total, None, "receiver"))
    else:
        rows += [("[SUM]", total, retrans, "sender"), ("[SUM]", received, None, "receiver")]
    for label, nbytes_, retr, role in rows:
        column = f"{retr:4d}" if retr is not None else "    "
        _say(out, f"{label:5} {0:6.2f}-{elapsed:<6.2f} sec  {_fmt_bytes(nbytes_):>11}  "
                  f"{_fmt_rate(nbytes_ * 8 / elapsed):>15}  {column}        {role}")
    s = flows[0].stats()
    srtt = f"{s.srtt * 1e6:.0f} us" if s.srtt is not None else "-"
    _say(out, f"stats (stream 1): mss {s.mss}, srtt {srtt}, rto {s.rto * 1e3:.0f} ms, "
              f"cwnd {s.cwnd}, ssthresh {s.ssthresh}, segments sent {s.segments_sent}, "
              f"received {s.segments_received}, retransmitted {s.segments_retransmitted}",
         flush=True)
    return summary


def _flow_summary(flow: Flow, elapsed: float, reverse: bool) -> dict[str, Any]:
    s = flow.stats()
    received = flow.bytes if reverse else flow.server_result.get("bytes_received", 0)
    return {"id": flow.ident, "bytes": flow.bytes, "bits_per_second": flow.bytes * 8 / elapsed,
            "bytes_received": received,
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
            _say(out, f"[{flow.ident:3d}] {t0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(delta):>11}  "
                      f"{_fmt_rate(delta * 8 / dt):>15}  {retr:4d}  {_fmt_bytes(s.cwnd):>11}")
    if len(flows) > 1 and not as_json:
        total = sum(r["bytes"] for r in rows)
        _say(out, f"[SUM] {t0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(total):>11}  "
                  f"{_fmt_rate(total * 8 / dt):>15}  {sum(r['retransmits'] for r in rows):4d}")
    if not as_json:
        _say(out, end="", flush=True)  # a live report, also through a pipe
    return {"start": t0, "end": t1, "streams": rows}


async def perf_server(host: str, port: int, config: utcp.Config, *,
                      ready: asyncio.Future[int] | None = None, quiet: bool = False,
                      worker: workers.Worker | None = None) -> None:
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        await _perf_serve(reader, writer)

    try:
        server = await utcp.start_server(serve, host, port, config=config,
                                         reuse_port=worker is not None)
        if worker is not None:
            _join_group(server.sockets, worker)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {_describe(exc)}") from None
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    if not quiet and worker is None:
        _say(sys.stdout, f"Server listening on udp {host} port {bound} (utcp)", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        if worker is not None:
            worker.say(f"served {served} connections")


async def _perf(args: argparse.Namespace, config: utcp.Config) -> int:
    if args.plot and getattr(args, "sampler", None) is None:
        return await _perf_plotted(args, config)  # which comes back, with a sampler
    # -t 0: no deadline, as iperf3; the run ends at Ctrl-C, with its report
    duration = None if args.bytes is not None else (args.time or None)
    if args.server:
        await perf_server(args.bind or "0.0.0.0", args.port, _as_server(config))
        return 0
    if args.client:
        await perf_client(args.client, args.port, duration=duration, nbytes=args.bytes,
                          parallel=args.parallel, reverse=args.reverse,
                          interval=args.interval, as_json=args.json, config=config,
                          sampler=getattr(args, "sampler", None))
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
        # the server task may fail before it is ready (a socket it cannot open): that
        # error is the command's, where waiting for `ready` alone would wait forever
        waiting: list[asyncio.Future[Any]] = [ready, server_task]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            server_task.result()
            raise CliError("the in-process server ended before it was ready")
        port = ready.result()
        await perf_client("127.0.0.1", port, duration=duration, nbytes=args.bytes,
                          parallel=args.parallel, reverse=args.reverse,
                          interval=args.interval, as_json=args.json, config=client_config,
                          sampler=getattr(args, "sampler", None))
    finally:
        server_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server_task
    return 0


# ---------------------------------------------------------------------- pictures

async def _perf_plotted(args: argparse.Namespace, config: utcp.Config) -> int:
    """`perf --plot`: run with a capture (--pcap's, or a temporary one) and a stats
    sampler, then draw stream 1's connection from both."""
    with tempfile.TemporaryDirectory(prefix="utcp-plot-") as tmp:
        capture = config.pcap or os.path.join(tmp, "perf.pcap")
        sampler = args.sampler = plotdata.StatsSampler()
        task = asyncio.create_task(sampler.run())
        try:
            status = await _perf(args, config.replace(pcap=capture))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        plotdata.flush_pcap(capture)
        samples = [] if args.reverse else list(sampler.of(1))  # a receiver has no cwnd
        # drawing takes seconds for a long run: off the loop, which may still be closing
        await asyncio.to_thread(_draw, capture, args.plot, sampler.ports.get(1), samples)
    if not args.json:
        _say(sys.stdout, f"plot (stream 1) written to {args.plot}", flush=True)
    return status


def _draw(capture: str, output: str, port: int | None,
          samples: Sequence[plotdata.StatsSample] = ()) -> Any:
    from utcp import plot

    try:
        return plot.plot_capture(capture, output, port=port, samples=samples)
    except (plot.PlotUnavailable, plotdata.CaptureError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot draw {output!r}: {_describe(exc)}") from None


async def _plot(args: argparse.Namespace, config: utcp.Config) -> int:
    output = args.output or os.path.splitext(args.capture)[0] + ".png"
    series = await asyncio.to_thread(_draw, args.capture, output, args.port)
    _say(sys.stdout, f"{output}: {series.sender[0]} port {series.sender[1]} -> "
                     f"{series.receiver[0]} port {series.receiver[1]}, "
                     f"{len(series.segments)} segments, {series.retransmissions} "
                     f"retransmitted, {series.duration:.3f} s", flush=True)
    return 0


def _check_plot_output(args: argparse.Namespace) -> None:
    """Before any run: a run of minutes is not to end in 'matplotlib is missing'."""
    from utcp import plot

    output = args.plot if args.command == "perf" else args.output
    if output is None:
        return
    if args.command == "perf" and args.server:
        raise UsageError("--plot draws a client's run: give -c HOST, or neither -s nor -c")
    try:
        plot.check_output(output)
    except plot.PlotUnavailable as exc:
        raise CliError(str(exc)) from None

# ---------------------------------------------------------------------- --workers

def _join_group(sockets: Any, worker: workers.Worker, *, udp: bool = True) -> None:
    """A worker's server is bound: steer the group by the client's port (see
    utcp.workers: a secure connection that moves to a new address stays on its worker),
    then tell the parent."""
    if udp:
        try:
            workers.reuse_port_sockets(sockets, worker.count, steer=True)
        except OSError as exc:
            if worker.index == 0:
                print(f"utcp: cannot steer by client port ({_describe(exc)}); the kernel's "
                      "4-tuple hash spreads connections, and one that moves to a new "
                      "address may reach another worker", file=sys.stderr, flush=True)
    worker.ready(sockets[0].getsockname()[1])


def _serve_in_workers(args: argparse.Namespace, config: utcp.Config) -> int:
    """`perf -s` or `tunnel` in args.workers processes sharing the port (SO_REUSEPORT)."""
    if args.command == "perf":
        host, port = args.bind or "0.0.0.0", args.port
        what = f"Server listening on udp {host} port {{port}} (utcp"
    else:
        host, port = args.listen
        kind = "udp (utcp)" if args.target is not None else "tcp"
        what = f"utcp tunnel: listening on {kind} {host} port {{port}} ("
    server_config = _as_server(config) if _serves(args) else config

    async def main(worker: workers.Worker) -> None:
        try:
            if args.command == "perf":
                await perf_server(host, worker.port, server_config, worker=worker)
            else:
                await _tunnel(args, config, worker)
        except CliError as exc:
            print(f"utcp {args.command}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    def on_ready(bound: int, pids: list[int]) -> None:
        head = what.format(port=bound)
        _say(sys.stdout, f"{head}{', ' if args.command == 'perf' else ''}{args.workers} "
                         f"worker processes: pids {' '.join(map(str, pids))})", flush=True)

    return workers.run_workers(args.workers, main, host=host, port=port, on_ready=on_ready)


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


async def _tunnel(args: argparse.Namespace, config: utcp.Config,
                  worker: workers.Worker | None = None) -> int:
    host, port = args.listen
    if worker is not None:
        port = worker.port  # the group's, chosen by the parent when --listen says :0
    served = 0
    # TCP in, utcp out (--remote) or utcp in, TCP out (--target): the same splice
    if args.remote is not None:
        listen: Any = asyncio.start_server
        dial: Any = functools.partial(utcp.open_connection, config=config)
        (thost, tport), kind, far = args.remote, "tcp", ""
    else:
        listen = functools.partial(utcp.start_server, config=_as_server(config))
        dial = asyncio.open_connection
        (thost, tport), kind, far = args.target, "udp (utcp)", "tcp "

    # asyncio's StreamReaderProtocol keeps a server's handler task only until the
    # accepted connection is lost, and a client protocol holds its reader weakly: once
    # the near side has closed, a splice still waiting for the far side's EOF is a
    # cycle nothing else reaches, which the garbage collector destroyed mid-transfer.
    live: set[asyncio.Task[Any]] = set()

    async def on_connection(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
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
        if worker is None:
            server = await listen(on_connection, host, port)
        else:
            server = await listen(on_connection, host, port, reuse_port=True)
            # the TCP side (--remote) is the kernel's own: its 4-tuples never change
            _join_group(server.sockets, worker, udp=args.target is not None)
    except OSError as exc:
        raise CliError(f"cannot listen on {kind} {host}:{port}: {_describe(exc)}") from None
    bound = server.sockets[0].getsockname()[1]
    if worker is None:
        _say(sys.stdout, f"utcp tunnel: listening on {kind} {host} port {bound}", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        if worker is not None:
            worker.say(f"served {served} connections")
    return 0


async def _cat(args: argparse.Namespace, config: utcp.Config) -> int:
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
        except StdoutClosed as exc:
            # nobody reads what arrives any more: a reset tells the peer so at once
            writer.transport.abort()
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(None)

    if args.listen:
        host, port = args.listen
        try:
            server = await utcp.start_server(session, host, port, config=_as_server(config))
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
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:
            raise StdoutClosed from None


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


def _version() -> str:
    """The version of the code that runs: `utcp.__version__`, the one source the wheel's
    metadata is built from. The installed distribution's metadata can be stale (a checkout
    run with `python -m utcp`, an editable install made before the version changed)."""
    return utcp.__version__


def _type(convert: Any, check: Any, message: str, name: str) -> Any:
    """An argparse type: convert, then check; a failure is a usage error naming the value."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (ValueError, CliError):
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{message}, not {text!r}")
        return value
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_port = _type(int, lambda v: 0 <= v <= 65535, "the port must be 0-65535", "port")
_parallel = _type(int, lambda v: 1 <= v <= MAX_PARALLEL,
                  f"must be 1-{MAX_PARALLEL}", "int")
_seconds = _type(_finite_float, lambda v: v >= 0, "must be 0 or more seconds", "float")
# as iperf3: shorter intervals report the scheduler's jitter and flood the terminal
MIN_INTERVAL = 0.1
_interval = _type(_finite_float, lambda v: v == 0 or v >= MIN_INTERVAL,
                  f"must be 0 (no interval reports) or at least {MIN_INTERVAL} s", "float")
_workers = _type(int, lambda v: 1 <= v <= workers.MAX_WORKERS,
                 f"must be 1-{workers.MAX_WORKERS}", "int")
_bytes = _type(lambda text: _size(text), lambda v: v >= 1, "must be at least 1 byte", "size")


def _mss(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    try:
        utcp.Config(mss=value)  # the range is Config's, stated once
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _address(default_host: str) -> Any:
    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text, default_host=default_host)
        except CliError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "address"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utcp", description=(
        "TCP's reliable byte streams over UDP: measure, tunnel, and pipe."))
    parser.add_argument("--version", action="version", version=f"utcp {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events")
    parser.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.set_defaults(parser=p)
        p.add_argument("--mss", type=_mss,
                       help="pin the segment payload to this many bytes (no PMTU probing)")
        p.add_argument("-C", "--congestion", choices=CONGESTION_ALGORITHMS,
                       help="congestion control algorithm (default: newreno)")
        p.add_argument("--pcap", metavar="FILE", help="write every segment to this pcap file")
        p.add_argument("--key", metavar="PRIVATE", help="secure mode: our private key "
                       "(visible to other local users: prefer --key-file or $UTCP_KEY)")
        p.add_argument("--key-file", metavar="FILE",
                       help="secure mode: read our private key from FILE (the key alone, "
                            "or utcp keygen's output)")
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
                                      "in-process server on loopback.",
                          epilog=f"A server's private key may also come from ${KEY_ENV}.")
    mode = perf.add_mutually_exclusive_group()
    mode.add_argument("-s", "--server", action="store_true", help="run as server")
    mode.add_argument("-c", "--client", metavar="HOST", help="run as client to HOST")
    perf.add_argument("-p", "--port", type=_port, default=PERF_PORT,
                      help=f"server port (default {PERF_PORT})")
    perf.add_argument("-B", "--bind", help="server address to bind")
    perf.add_argument("-t", "--time", type=_seconds, default=3.0,
                      help="seconds to send (default 3; 0 = until interrupted)")
    perf.add_argument("-n", "--bytes", type=_bytes, help="bytes to send instead of -t "
                      "(suffixes K, M, G)")
    perf.add_argument("-P", "--parallel", type=_parallel, default=1,
                      help=f"parallel connections (default 1, at most {MAX_PARALLEL})")
    perf.add_argument("-R", "--reverse", action="store_true", help="server sends")
    perf.add_argument("-i", "--interval", type=_interval, default=1.0,
                      help="seconds between reports (default 1; 0 = none)")
    perf.add_argument("--json", action="store_true")
    perf.add_argument("--workers", type=_workers, default=1, metavar="N",
                      help="server: N processes share the port (SO_REUSEPORT), "
                           "one core each (default 1)")
    perf.add_argument("--secure", action="store_true",
                      help="in-process run: secure mode with a fresh key pair")
    perf.add_argument("--plot", metavar="FILE.png|svg",
                      help="draw stream 1 (time-sequence graph, cwnd, RTT, throughput); "
                           "needs matplotlib: pip install 'utcp[plot]'")
    common(perf)

    tunnel = sub.add_parser("tunnel", help="forward TCP over utcp",
                            description="Client side: --listen 127.0.0.1:8080 --remote "
                                        "HOST:PORT. Server side: --listen :PORT --target "
                                        "127.0.0.1:80.",
                            epilog=f"The exit side's private key may also come from "
                                   f"${KEY_ENV}.")
    tunnel.add_argument("--listen", required=True, metavar="[HOST]:PORT",
                        type=_address("0.0.0.0"))
    tunnel.add_argument("--remote", metavar="HOST:PORT", type=_address("127.0.0.1"),
                        help="the utcp tunnel server")
    tunnel.add_argument("--target", metavar="HOST:PORT", type=_address("127.0.0.1"),
                        help="the TCP service to reach")
    tunnel.add_argument("--workers", type=_workers, default=1, metavar="N",
                        help="N processes share the listening port (SO_REUSEPORT), "
                             "one core each (default 1)")
    common(tunnel)

    keygen = sub.add_parser("keygen", help="print a new secure-mode key pair",
                            description="Prints 'private: ...' and 'public: ...'. Give the "
                                        "private key to the server (--key-file, $UTCP_KEY "
                                        "or --key), the public one to clients "
                                        "(--server-key).")
    keygen.set_defaults(parser=keygen)

    cat = sub.add_parser("cat", help="netcat over utcp",
                         epilog=f"A listener's private key may also come from ${KEY_ENV}.")
    cat.add_argument("-l", "--listen", metavar="[HOST:]PORT", type=_address("0.0.0.0"),
                     help="wait for one connection")
    cat.add_argument("host", nargs="?")
    cat.add_argument("port", nargs="?", type=_port)
    common(cat)

    plot = sub.add_parser("plot", help="draw a pcap's connection (needs utcp[plot])",
                          description="The time-sequence graph of the capture's busiest TCP "
                                      "connection (tcptrace style: segments, ACK line, "
                                      "receive window, retransmissions marked), bytes in "
                                      "flight, RTT and throughput over time.")
    plot.set_defaults(parser=plot)
    plot.add_argument("capture", metavar="CAPTURE.pcap",
                      help="a pcap file, as written by --pcap or tcpdump")
    plot.add_argument("-o", "--output", metavar="FILE.png|svg",
                      help="where to draw (default: CAPTURE with .png)")
    plot.add_argument("-p", "--port", type=_port,
                      help="the connection using this port (default: the busiest)")
    return parser


def _size(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1].upper() in scale:
            return int(float(text[:-1]) * scale[text[-1].upper()])
        return int(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _check_usage(args: argparse.Namespace) -> None:
    """What argparse cannot say alone: options that only make sense together."""
    if args.command == "tunnel" and (args.remote is None) == (args.target is None):
        raise UsageError("give exactly one of --remote (TCP in, utcp out) "
                         "or --target (utcp in, TCP out)")
    if args.command == "cat" and args.listen is None and (args.host is None
                                                          or args.port is None):
        raise UsageError("give HOST PORT to connect, or -l [HOST:]PORT to listen")
    if args.command == "cat" and args.listen is not None and args.host is not None:
        raise UsageError("give either HOST PORT or -l [HOST:]PORT, not both")
    if args.command in ("perf", "plot"):
        _check_plot_output(args)
    if getattr(args, "workers", 1) > 1:
        if args.command == "perf" and not args.server:
            raise UsageError("--workers is for the server (-s)")
        if args.pcap:
            raise UsageError("--pcap with --workers: every worker would write the one file")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except (StdoutClosed, BrokenPipeError):
        # the reader of stdout is gone (`| head`): end quietly, as a C program killed by
        # SIGPIPE would, and keep the interpreter's final flush from raising again
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose or args.log_json:
        log.configure(json=args.log_json, level=logging.INFO)
    if args.command == "keygen":
        from utcp import crypto

        private, public = crypto.generate_keypair()
        _say(sys.stdout, f"private: {private}\npublic: {public}", flush=True)
        return 0
    try:
        _check_usage(args)
        config = _config(args) if args.command != "plot" else utcp.Config()
    except UsageError as exc:
        args.parser.error(str(exc))  # exits with status 2
    except CliError as exc:
        print(f"utcp {args.command}: {exc}", file=sys.stderr)
        return 1
    runner = {"perf": _perf, "tunnel": _tunnel, "cat": _cat, "plot": _plot}[args.command]
    if getattr(args, "workers", 1) > 1:
        # forked before any event loop exists: one loop, server and core per worker
        try:
            return _serve_in_workers(args, config)
        except CliError as exc:
            print(f"utcp {args.command}: {exc}", file=sys.stderr)
            return 1
    try:
        return asyncio.run(runner(args, config))
    except CliError as exc:
        print(f"utcp {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
