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
from collections.abc import Callable, Iterator, Sequence
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
    if getattr(args, "window", None) is not None:
        # iperf3's -w sets SO_SNDBUF and SO_RCVBUF: utcp's two buffers are the same bounds
        kwargs["recv_buffer"] = kwargs["send_buffer"] = args.window
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
    """One perf connection as the client (or, counting what it serves, the server) sees it."""

    ident: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    bytes: int = 0
    last_bytes: int = 0
    last_retrans: int = 0
    # what the omitted start (-O) had moved by its end: the totals leave it out
    omit_bytes: int = 0
    omit_retrans: int = 0
    server_result: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> utcp.Stats:
        return self.writer.get_extra_info("stats")  # type: ignore[no-any-return]

    omit_marked: bool = False

    def mark_omitted(self) -> None:
        """The end of -O's period; once: the sender and the reporter both mark it."""
        if not self.omit_marked:
            self.omit_marked = True
            self.omit_bytes = self.bytes
            self.omit_retrans = self.stats().segments_retransmitted


@dataclass(frozen=True)
class PerfOptions:
    """The iperf3-style knobs of a client run, beside where and how much."""

    rate: float | None = None       # -b: bits/s per stream, paced by the writer
    omit: float = 0.0               # -O: seconds at the start left out of the totals
    server_output: bool = False     # --get-server-output
    cport: int | None = None        # --cport: the first stream's local port


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


def _summary_row(label: str, t1: float, nbytes: int, retr: int | None, role: str) -> str:
    column = f"{retr:4d}" if retr is not None else "    "
    return (f"{label:5} {0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(nbytes):>11}  "
            f"{_fmt_rate(nbytes * 8 / max(t1, 1e-9)):>15}  {column}        {role}")


@dataclass
class _ClientTest:
    """The streams of one client's test on the server, grouped by the client's cookie.

    There is no control connection as in iperf3: each stream names its test (a random
    cookie) and how many streams it has, so that the server can print one report per
    client and hand it to a `--get-server-output` client when the last stream ends.
    """

    streams: int
    results: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    report: dict[str, Any] = field(default_factory=dict)


class _PerfServerState:
    # finished tests are kept a while for a report connection that arrives late (its
    # datagrams may lose a race with the streams'); bounded, so a client cannot grow it
    KEEP_FINISHED = 256

    def __init__(self, out: Any, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tests: dict[str, _ClientTest] = {}
        self.finished: dict[str, _ClientTest] = {}

    # tests under way: a client that names streams it never opens leaves one behind
    KEEP_OPEN = 4096

    def test(self, cookie: str, streams: int) -> _ClientTest:
        found = self.tests.get(cookie) or self.finished.get(cookie)
        if found is None:
            found = self.tests[cookie] = _ClientTest(max(1, min(streams, MAX_PARALLEL)))
            while len(self.tests) > self.KEEP_OPEN:
                del self.tests[next(iter(self.tests))]
        return found

    def add(self, cookie: str, streams: int, result: dict[str, Any]) -> None:
        test = self.test(cookie, streams)
        if test.done.is_set():
            return
        test.results.append(result)
        if len(test.results) < test.streams:
            return
        test.report = self._report(test.results)
        test.done.set()
        self.tests.pop(cookie, None)
        self.finished[cookie] = test
        while len(self.finished) > self.KEEP_FINISHED:
            del self.finished[next(iter(self.finished))]
        if not self.quiet:
            try:
                _say(self.out, test.report["text"], flush=True)
            except StdoutClosed:
                # `utcp perf -s | head`: the reader is gone, not the clients; serving
                # goes on, the reports (and --get-server-output) with it
                self.quiet = True

    @staticmethod
    def _report(results: list[dict[str, Any]]) -> dict[str, Any]:
        """The server's per-client report, as iperf3's server prints after each test."""
        results = sorted(results, key=lambda r: r["id"])
        first = results[0]
        lines = [f"Accepted connection from {first['remote_host']}, port "
                 f"{first['remote_port']}"]
        for r in results:
            lines.append(f"[{r['id']:3d}] local {r['local_host']} port {r['local_port']} "
                         f"connected to {r['remote_host']} port {r['remote_port']}")
        lines.append("[ ID] Interval           Transfer     Bitrate         Retr")
        seconds = max(r["seconds"] for r in results)
        for r in results:
            role = "sender" if r["sender"] else "receiver"
            lines.append(_summary_row(f"[{r['id']:3d}]", r["seconds"], r["bytes"],
                                      r["retransmits"] if r["sender"] else None, role))
        if len(results) > 1:
            role = "sender" if first["sender"] else "receiver"
            retr = sum(r["retransmits"] for r in results) if first["sender"] else None
            lines.append(_summary_row("[SUM]", seconds, sum(r["bytes"] for r in results),
                                      retr, role))
        return {"text": "\n".join(lines), "streams": results}


def _spec_number(value: Any) -> float:
    """A number from a client's request, or 0: the request is the peer's, not ours."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value > 0 else 0.0


async def _perf_serve(state: _PerfServerState, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    flow: Flow | None = None
    try:
        line = await reader.readline()
        if not line.startswith(PERF_MAGIC):
            writer.close()
            return
        spec = json.loads(line[len(PERF_MAGIC):])
        if not isinstance(spec, dict):
            raise ValueError("not a perf request")
        cookie = str(spec.get("cookie") or id(writer))
        streams = int(_spec_number(spec.get("streams")) or 1)
        if spec.get("report"):
            await _perf_send_report(state.test(cookie, streams), reader, writer)
            return
        omit = _spec_number(spec.get("omit"))
        rate = _spec_number(spec.get("rate")) or None
        reverse = bool(spec.get("reverse"))
        flow = Flow(int(_spec_number(spec.get("stream")) or 1), reader, writer)
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        omitted = loop.call_later(omit, flow.mark_omitted) if omit > 0 else None
        start = time.monotonic()

        def result() -> dict[str, Any]:
            if omitted is not None:
                omitted.cancel()
            assert flow is not None
            return {"id": flow.ident, "sender": reverse, "bytes": flow.bytes - flow.omit_bytes,
                    "seconds": max(time.monotonic() - start - omit, 0.0),
                    "retransmits": flow.stats().segments_retransmitted - flow.omit_retrans,
                    "local_host": local[0], "local_port": local[1],
                    "remote_host": peer[0], "remote_port": peer[1]}

        try:
            await _perf_serve_stream(reader, writer, flow, spec, reverse=reverse, rate=rate,
                                     omit=omit)
        except (ConnectionError, TimeoutError):
            # a client ended by Ctrl-C resets its streams (-R): what moved until then
            # is still this client's report, which its report connection waits for
            state.add(cookie, streams, result())
            raise
        mine = result()
        if not reverse:
            writer.write(json.dumps({"bytes_received": mine["bytes"],
                                     "seconds": mine["seconds"],
                                     "segments_retransmitted": mine["retransmits"],
                                     }).encode() + b"\n")
        state.add(cookie, streams, mine)
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError,
            TypeError):
        writer.transport.abort()


async def _perf_serve_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            flow: Flow, spec: dict[str, Any], *, reverse: bool,
                            rate: float | None, omit: float) -> None:
    """The server's half of one stream: with -R it sends for the request's time or
    bytes, then drains to the client's FIN; otherwise it counts what arrives."""
    if reverse:
        await _perf_source(writer, spec.get("duration"), spec.get("bytes"), flow,
                           rate=rate, omit=omit)
        writer.write_eof()
        while await reader.read(CHUNK):
            pass
    else:
        while data := await reader.read(CHUNK):
            flow.bytes += len(data)


async def _perf_send_report(test: _ClientTest, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    """--get-server-output: the report once the client's streams are done.

    The client keeps this connection open until it has the report: its end (EOF or a
    reset) means nobody waits any more, so no timer bounds the wait.
    """
    ready = asyncio.create_task(test.done.wait())
    gone = asyncio.create_task(reader.read(1))
    try:
        await asyncio.wait([ready, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        gone.cancel()
    if test.done.is_set():
        writer.write(json.dumps(test.report).encode() + b"\n")
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await writer.wait_closed()


async def _perf_source(writer: asyncio.StreamWriter, duration: float | None,
                       nbytes: int | None, counter: Flow | None = None,
                       stop: asyncio.Event | None = None, *,
                       rate: float | None = None, omit: float = 0.0) -> int:
    """Send for `duration` seconds or `nbytes` bytes; neither: until `stop` (or forever).

    `rate` (bits/s) paces the writes as iperf3's -b does for TCP: the application holds
    back, the transport's own pacing and congestion control are untouched. Writes are
    cut to about 10 ms of data so that a low rate is smooth rather than bursty.
    `omit` seconds at the start do not count toward `nbytes` (iperf3 resets its
    counters after -O), so -n still measures that many bytes.
    """
    chunk = CHUNK if not rate else int(min(CHUNK, max(1024, rate / 8 / 100)))
    block = os.urandom(chunk)
    view = memoryview(block)
    sent = 0
    begin = time.monotonic()
    deadline = begin + duration if duration else math.inf
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        if rate:
            ahead = begin + sent * 8 / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(min(ahead, max(deadline - time.monotonic(), 0.0)))
                continue
        if nbytes is None:
            n = chunk
        elif counter is None or not omit:
            n = min(chunk, nbytes - sent)
        elif time.monotonic() < begin + omit:
            n = chunk  # the omitted start: -n counts from its end
        else:
            counter.mark_omitted()
            n = min(chunk, nbytes - (counter.bytes - counter.omit_bytes))
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


def _any_address(host: str) -> str:
    return "::" if ":" in host else "0.0.0.0"


async def perf_client(host: str, port: int, *, duration: float | None, nbytes: int | None,
                      parallel: int, reverse: bool, interval: float | None, as_json: bool,
                      config: utcp.Config, out: Any = None,
                      sampler: plotdata.StatsSampler | None = None,
                      options: PerfOptions = PerfOptions()) -> dict[str, Any]:
    """Run the client side; `duration` and `nbytes` both None: until SIGINT or SIGTERM.

    `interval` None (or 0) prints no interval reports, only the summary. `sampler`
    (--plot) is told of every flow, to sample its stats while it runs.
    """
    out = out or sys.stdout
    flows: list[Flow] = []
    control: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    cookie = os.urandom(12).hex()
    try:
        if options.server_output:
            # opened first, so the server knows of the test before its streams end
            control = await utcp.open_connection(host, port, config=config)
            control[1].write(PERF_MAGIC + json.dumps(
                {"cookie": cookie, "streams": parallel, "report": True}).encode() + b"\n")
        for i in range(parallel):
            local = None
            if options.cport is not None:
                # iperf3 gives the streams consecutive ports from --cport
                local = (_any_address(host), options.cport + i)
            reader, writer = await utcp.open_connection(host, port, config=config,
                                                        local_addr=local)
            flows.append(Flow(i + 1, reader, writer))
    except (OSError, OverflowError) as exc:
        for flow in flows:
            flow.writer.transport.abort()
        if control is not None:
            control[1].transport.abort()
        raise CliError(f"cannot connect to {host}:{port}: {_describe(exc)}") from None
    if sampler is not None:
        for flow in flows:
            sampler.watch(flow.ident, flow.stats, flow.writer.get_extra_info("sockname")[1])
    try:
        return await _perf_run(flows, host, port, duration=duration, nbytes=nbytes,
                               reverse=reverse, interval=interval or None, as_json=as_json,
                               out=out, options=options, cookie=cookie, control=control,
                               config=config)
    except BaseException:
        for flow in flows:
            flow.writer.transport.abort()
        if control is not None:
            control[1].transport.abort()
        raise


async def _server_output(control: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
                         ) -> dict[str, Any] | None:
    if control is None:
        return None
    reader, writer = control
    try:
        # the server answers when its side of every stream has ended; a server that
        # does not know the request (an older utcp) never answers
        line = await asyncio.wait_for(reader.readline(), 30.0)
        report = json.loads(line) if line else None
    except (ConnectionError, TimeoutError, ValueError):
        report = None
    writer.transport.abort() if report is None else writer.close()
    if not isinstance(report, dict):
        print("utcp perf: the server sent no report (--get-server-output)", file=sys.stderr)
        return None
    return report


async def _perf_run(flows: list[Flow], host: str, port: int, *, duration: float | None,
                    nbytes: int | None, reverse: bool, interval: float | None,
                    as_json: bool, out: Any, options: PerfOptions = PerfOptions(),
                    cookie: str = "", config: utcp.Config | None = None,
                    control: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
                    ) -> dict[str, Any]:
    parallel = len(flows)
    omit = options.omit
    # -n is the total: split it so the flows add up to exactly that many bytes
    share: list[int | None] = ([None] * parallel if nbytes is None else
                               [nbytes // parallel + (i < nbytes % parallel)
                                for i in range(parallel)])
    open_ended = duration is None and nbytes is None
    # as iperf3, -O comes before -t: the run lasts both, the totals cover -t only
    send_for = duration + omit if duration is not None else None
    stop = asyncio.Event()
    connected = _connected_addresses(flows)
    if not as_json:
        _say_perf_header(out, flows, host, port, reverse=reverse, open_ended=open_ended,
                         omit=omit)
    cpu_start = os.times()
    start = time.monotonic()
    tasks = [asyncio.create_task(_run_flow(
        flow, {"reverse": reverse, "duration": send_for, "bytes": share[flow.ident - 1],
               "omit": omit, "rate": options.rate, "cookie": cookie,
               "streams": parallel, "stream": flow.ident}, stop))
        for flow in flows]
    timeline = _PerfTimeline(flows, start, omit=omit, interval=interval, as_json=as_json,
                             out=out, reverse=reverse)
    await _drive_flows(tasks, flows, stop, timeline, host=host, port=port,
                       open_ended=open_ended, reverse=reverse)
    elapsed = max(time.monotonic() - timeline.base, 1e-9)
    total = sum(f.bytes - f.omit_bytes for f in flows)
    retrans = sum(f.stats().segments_retransmitted - f.omit_retrans for f in flows)
    received = (sum(f.server_result.get("bytes_received", 0) for f in flows)
                if not reverse else total)
    cpu = _cpu_percent(cpu_start, time.monotonic() - start)
    server_report = await _server_output(control)
    summary = _perf_json(flows, connected, host, port, duration=duration, nbytes=nbytes,
                         reverse=reverse, options=options, cookie=cookie, config=config,
                         intervals=timeline.intervals, elapsed=elapsed, total=total,
                         retrans=retrans, received=received, interrupted=stop.is_set(),
                         cpu=cpu)
    if server_report is not None:
        summary["server_output_text"] = server_report.get("text", "")
        summary["server_output_json"] = server_report
    if as_json:
        _say(out, json.dumps(summary, indent=2))
        return summary
    _say_perf_summary(out, flows, reverse=reverse, elapsed=elapsed, total=total,
                      retrans=retrans, received=received, server_report=server_report)
    return summary


def _connected_addresses(flows: list[Flow]) -> list[dict[str, Any]]:
    """Each stream's addresses for -J's start.connected, taken at the start: a closed
    connection no longer names its addresses."""
    connected = []
    for flow in flows:
        local = flow.writer.get_extra_info("sockname")
        remote = flow.writer.get_extra_info("peername")
        connected.append({"socket": flow.ident, "local_host": local[0],
                          "local_port": local[1], "remote_host": remote[0],
                          "remote_port": remote[1]})
    return connected


def _say_perf_header(out: Any, flows: list[Flow], host: str, port: int, *, reverse: bool,
                     open_ended: bool, omit: float) -> None:
    """The lines iperf3 prints before the first interval, so a reader of its output
    finds the same landmarks in ours."""
    peer = flows[0].writer.get_extra_info("peername")
    _say(out, f"Connecting to host {host}, port {port} over utcp"
              f"{' (reverse: server sends)' if reverse else ''}"
              f"{' until interrupted' if open_ended else ''}")
    for flow in flows:
        sock = flow.writer.get_extra_info("sockname")
        _say(out, f"[{flow.ident:3d}] local {sock[0]} port {sock[1]} connected to "
                  f"{peer[0]} port {peer[1]}")
    if omit:
        _say(out, f"Omitting the first {omit:g} s from the totals")
    _say(out, "[ ID] Interval           Transfer     Bitrate         Retr  Cwnd",
         flush=True)


async def _run_flow(flow: Flow, spec: dict[str, Any], stop: asyncio.Event) -> None:
    """One stream of a client run: the request line, then the bytes one way; without
    -R the server's line after our FIN says what it received."""
    flow.writer.write(PERF_MAGIC + json.dumps(spec).encode() + b"\n")
    if spec["reverse"]:
        while data := await flow.reader.read(CHUNK):
            flow.bytes += len(data)
        flow.writer.write_eof()
    else:
        await _perf_source(flow.writer, spec["duration"], spec["bytes"], flow, stop,
                           rate=spec["rate"], omit=spec["omit"])
        flow.writer.write_eof()
        line = await flow.reader.readline()
        if line:
            flow.server_result = json.loads(line)
    flow.writer.close()
    with contextlib.suppress(ConnectionError):
        await flow.writer.wait_closed()


@dataclass
class _PerfTimeline:
    """Where a client run is in time: the omitted start (-O), then -i's interval rows.

    `base` is where the measured (not omitted) part began: the rows after -O and the
    totals count from it; within the omitted start it is still `start`."""

    flows: list[Flow]
    start: float
    omit: float
    interval: float | None
    as_json: bool
    out: Any
    reverse: bool
    last: float = 0.0
    base: float = 0.0
    omitting: bool = False
    measured: int = 0  # interval rows printed after the omitted start
    intervals: list[dict[str, Any]] = field(default_factory=list)
    every: float = field(init=False, default=math.inf)  # -i, or never

    def __post_init__(self) -> None:
        self.last = self.base = self.start
        self.omitting = self.omit > 0
        self.every = self.interval if self.interval is not None else math.inf

    def timeout(self) -> float | None:
        """How long to wait for the flows before the next row or the end of -O is due."""
        wake = (min(self.last + self.every, self.start + self.omit) if self.omitting
                else self.last + self.every)
        return None if wake == math.inf else max(wake - time.monotonic(), 0.0)

    def step(self, now: float, finished: bool) -> None:
        """After each wake-up: the end of the omitted start, or an interval row if due."""
        if self.omitting and (now >= self.start + self.omit - 0.001 or finished):
            if self.interval is not None:
                self.intervals.append(_report_interval(
                    self.flows, self.last - self.start, now - self.start, self.as_json,
                    self.out, omitted=True, reverse=self.reverse))
            for flow in self.flows:
                flow.mark_omitted()
                flow.last_bytes = flow.bytes
                flow.last_retrans = flow.stats().segments_retransmitted
            self.omitting, self.last, self.base = False, now, now
            return
        if self.interval is None or (now - self.last < self.every * 0.5 and not finished) or (
                finished and self.measured and now - self.last < self.every * 0.05):
            # a sliver of an interval at the end is noise, not a report; but a
            # run shorter than -i gets its one partial row, as iperf3 prints
            return
        self.intervals.append(_report_interval(self.flows, self.last - self.base,
                                               now - self.base, self.as_json, self.out,
                                               omitted=self.omitting, reverse=self.reverse))
        self.measured += not self.omitting
        self.last = now


async def _drive_flows(tasks: list[asyncio.Task[None]], flows: list[Flow],
                       stop: asyncio.Event, timeline: _PerfTimeline, *, host: str,
                       port: int, open_ended: bool, reverse: bool) -> None:
    """Wait for the flows, waking for each row the timeline owes and for Ctrl-C (an
    open-ended run's end); a connection that fails ends the run with one line."""
    stopped = asyncio.create_task(stop.wait())
    try:
        with _interrupt_handlers(stop) if open_ended else contextlib.nullcontext():
            while not all(t.done() for t in tasks):
                # once stopped, `stopped` is done for good: waiting on it again would
                # return at once and spin while the flows finish
                await asyncio.wait([*tasks] if stop.is_set() else [*tasks, stopped],
                                   timeout=timeline.timeout(),
                                   return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() and reverse:
                    # the server sends until we go: what arrived so far is the result,
                    # and a reset (as iperf3 closes) stops the server's sending at once
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    for flow in flows:
                        flow.writer.transport.abort()
                timeline.step(time.monotonic(), all(t.done() for t in tasks))
        for t in tasks:
            if not t.cancelled():
                t.result()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        for t in tasks:
            t.cancel()
        raise CliError(f"connection to {host}:{port} failed: {_describe(exc)}") from None
    finally:
        stopped.cancel()


def _say_perf_summary(out: Any, flows: list[Flow], *, reverse: bool, elapsed: float,
                      total: int, retrans: int, received: int,
                      server_report: dict[str, Any] | None) -> None:
    """The end of a text report, as iperf3's: each stream's sender and receiver rows,
    then their sums; then stream 1's connection figures and the server's output."""
    _say(out, "- - - - - - - - - - - - - - - - - - - - - - - - -")
    rows: list[tuple[str, int, int | None, str]] = []
    for flow in flows:
        s = flow.stats()
        if reverse:
            rows.append((f"[{flow.ident:3d}]", flow.bytes - flow.omit_bytes, None,
                         "receiver"))
        else:
            rows.append((f"[{flow.ident:3d}]", flow.bytes - flow.omit_bytes,
                         s.segments_retransmitted - flow.omit_retrans, "sender"))
            rows.append((f"[{flow.ident:3d}]", flow.server_result.get("bytes_received", 0),
                         None, "receiver"))
    if reverse:
        rows.append(("[SUM]", total, None, "receiver"))
    else:
        rows += [("[SUM]", total, retrans, "sender"), ("[SUM]", received, None, "receiver")]
    for label, nbytes_, retr, role in rows:
        _say(out, _summary_row(label, elapsed, nbytes_, retr, role))
    s = flows[0].stats()
    srtt = f"{s.srtt * 1e6:.0f} us" if s.srtt is not None else "-"
    _say(out, f"stats (stream 1): mss {s.mss}, srtt {srtt}, rto {s.rto * 1e3:.0f} ms, "
              f"cwnd {s.cwnd}, ssthresh {s.ssthresh}, segments sent {s.segments_sent}, "
              f"received {s.segments_received}, retransmitted {s.segments_retransmitted}",
         flush=True)
    if server_report is not None:
        _say(out, "\nServer output:\n" + str(server_report.get("text", "")), flush=True)


def _cpu_percent(before: os.times_result, wall: float) -> dict[str, float]:
    """iperf3's end.cpu_utilization_percent for this process; the server's is not known
    to the client (iperf3 learns it over its control connection), so remote_* are 0."""
    after = os.times()
    wall = max(wall, 1e-9)
    user = (after.user - before.user) / wall * 100
    system = (after.system - before.system) / wall * 100
    return {"host_total": user + system, "host_user": user, "host_system": system,
            "remote_total": 0.0, "remote_user": 0.0, "remote_system": 0.0}


def _perf_json(flows: list[Flow], connected: list[dict[str, Any]], host: str, port: int,
               *, duration: float | None, nbytes: int | None, reverse: bool,
               options: PerfOptions, cookie: str,
               config: utcp.Config | None, intervals: list[dict[str, Any]],
               elapsed: float, total: int, retrans: int, received: int,
               interrupted: bool, cpu: dict[str, float]) -> dict[str, Any]:
    """The run as iperf3 -J shapes it, so tools that read iperf3's JSON read ours.

    iperf3's keys (start.connected, start.test_start, intervals[].streams/sum,
    end.streams[].sender/receiver, end.sum_sent/sum_received) sit beside the keys this
    command printed before it had -J, which stay for the scripts that read them. The
    protocol is "TCP": the service is TCP's, and readers pick their fields by it.
    """
    stats = [f.stats() for f in flows]
    start = _perf_json_start(flows, connected, host, port, stats[0], duration=duration,
                             nbytes=nbytes, reverse=reverse, options=options, cookie=cookie,
                             config=config)
    congestion = stats[0].congestion
    streams = [_perf_json_stream(flow, s, elapsed, reverse)
               for flow, s in zip(flows, stats, strict=True)]
    sums = {"start": 0, "end": elapsed, "seconds": elapsed, "sender": not reverse}
    end = {
        "streams": streams,
        "sum_sent": {**sums, "bytes": total, "bits_per_second": total * 8 / elapsed,
                     "retransmits": 0 if reverse else retrans},
        "sum_received": {**sums, "bytes": received,
                         "bits_per_second": received * 8 / elapsed},
        "cpu_utilization_percent": cpu,
        "sender_tcp_congestion": congestion if not reverse else "",
        "receiver_tcp_congestion": congestion if reverse else "",
        "seconds": elapsed, "bytes": total, "bits_per_second": total * 8 / elapsed,
        "bytes_received": received, "retransmits": retrans, "interrupted": interrupted,
    }
    return {"start": start, "intervals": intervals, "end": end}


def _perf_json_start(flows: list[Flow], connected: list[dict[str, Any]], host: str,
                     port: int, first: utcp.Stats, *, duration: float | None,
                     nbytes: int | None, reverse: bool, options: PerfOptions, cookie: str,
                     config: utcp.Config | None) -> dict[str, Any]:
    """-J's `start`: what was asked for and where, iperf3's keys then this command's own."""
    parallel = len(flows)
    now = time.time()
    return {
        "connected": connected,
        "version": f"utcp {_version()}",
        "system_info": " ".join(os.uname()),
        "timestamp": {"time": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)),
                      "timesecs": int(now)},
        "connecting_to": {"host": host, "port": port},
        "cookie": cookie,
        "tcp_mss_default": first.mss,
        "sock_bufsize": config.recv_buffer if config is not None else 0,
        "test_start": {"protocol": "TCP", "num_streams": parallel, "blksize": CHUNK,
                       "omit": options.omit, "duration": duration or 0,
                       "bytes": nbytes or 0, "blocks": 0, "reverse": int(reverse),
                       "tos": 0, "target_bitrate": int(options.rate or 0)},
        "transport": "utcp over UDP",
        "host": host, "port": port, "parallel": parallel, "reverse": reverse,
        "duration": duration, "bytes": nbytes,
    }


def _perf_json_stream(flow: Flow, s: utcp.Stats, elapsed: float,
                      reverse: bool) -> dict[str, Any]:
    """One stream in -J's `end.streams`: iperf3's sender and receiver, then our keys."""
    sent = flow.bytes - flow.omit_bytes
    got = sent if reverse else int(flow.server_result.get("bytes_received", 0))
    # with -R the server sent what we read: a stream that ended with the server's
    # FIN delivered every byte it carried, so the counts agree
    retr = 0 if reverse else s.segments_retransmitted - flow.omit_retrans
    side = {"socket": flow.ident, "start": 0, "end": elapsed, "seconds": elapsed,
            "sender": not reverse}
    return {
        "sender": {**side, "bytes": sent, "bits_per_second": sent * 8 / elapsed,
                   "retransmits": retr, "max_snd_cwnd": s.cwnd,
                   "mean_rtt": round(s.srtt * 1e6) if s.srtt is not None else 0},
        "receiver": {**side, "bytes": got, "bits_per_second": got * 8 / elapsed},
        "id": flow.ident, "bytes": sent, "bits_per_second": sent * 8 / elapsed,
        "bytes_received": got if not reverse else sent,
        "retransmits": s.segments_retransmitted - flow.omit_retrans, "srtt": s.srtt,
        "rto": s.rto, "cwnd": s.cwnd, "ssthresh": s.ssthresh, "mss": s.mss,
        "segments_sent": s.segments_sent, "segments_received": s.segments_received}


def _report_interval(flows: list[Flow], t0: float, t1: float, as_json: bool,
                     out: Any, *, omitted: bool = False,
                     reverse: bool = False) -> dict[str, Any]:
    dt = max(t1 - t0, 1e-9)
    rows = []
    tag = "  (omitted)" if omitted else ""
    for flow in flows:
        s = flow.stats()
        delta = flow.bytes - flow.last_bytes
        retr = s.segments_retransmitted - flow.last_retrans
        flow.last_bytes, flow.last_retrans = flow.bytes, s.segments_retransmitted
        rows.append({"socket": flow.ident, "start": t0, "end": t1, "seconds": dt,
                     "bytes": delta, "bits_per_second": delta * 8 / dt,
                     "retransmits": retr, "snd_cwnd": s.cwnd, "snd_wnd": s.snd_wnd,
                     "rtt": round(s.srtt * 1e6) if s.srtt is not None else 0,
                     "rttvar": round(s.rttvar * 1e6) if s.rttvar is not None else 0,
                     "omitted": omitted, "sender": not reverse,
                     "id": flow.ident, "cwnd": s.cwnd})
        if not as_json:
            _say(out, f"[{flow.ident:3d}] {t0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(delta):>11}  "
                      f"{_fmt_rate(delta * 8 / dt):>15}  {retr:4d}  {_fmt_bytes(s.cwnd):>11}"
                      f"{tag}")
    total = sum(r["bytes"] for r in rows)
    retr_sum = sum(r["retransmits"] for r in rows)
    if len(flows) > 1 and not as_json:
        _say(out, f"[SUM] {t0:6.2f}-{t1:<6.2f} sec  {_fmt_bytes(total):>11}  "
                  f"{_fmt_rate(total * 8 / dt):>15}  {retr_sum:4d}{tag}")
    if not as_json:
        _say(out, end="", flush=True)  # a live report, also through a pipe
    return {"streams": rows,
            "sum": {"start": t0, "end": t1, "seconds": dt, "bytes": total,
                    "bits_per_second": total * 8 / dt, "retransmits": retr_sum,
                    "omitted": omitted, "sender": not reverse},
            "start": t0, "end": t1}


async def _serve_until_stopped(server: Any, worker: workers.Worker | None,
                               served: Callable[[], int]) -> None:
    """Serve until cancelled; a worker then tells its parent how much it did."""
    try:
        async with server:
            await server.serve_forever()
    finally:
        if worker is not None:
            worker.say(f"served {served()} connections")


async def perf_server(host: str, port: int, config: utcp.Config, *,
                      ready: asyncio.Future[int] | None = None, quiet: bool = False,
                      worker: workers.Worker | None = None) -> None:
    state = _PerfServerState(sys.stdout, quiet)
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        await _perf_serve(state, reader, writer)

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
    await _serve_until_stopped(server, worker, lambda: served)


async def _perf(args: argparse.Namespace, config: utcp.Config) -> int:
    if args.plot and getattr(args, "sampler", None) is None:
        return await _perf_plotted(args, config)  # which comes back, with a sampler
    # -t 0: no deadline, as iperf3; the run ends at Ctrl-C, with its report
    duration = None if args.bytes is not None else (args.time or None)
    options = PerfOptions(rate=args.bitrate or None, omit=args.omit,
                          server_output=args.get_server_output, cport=args.cport)
    if args.server:
        await perf_server(args.bind or "0.0.0.0", args.port, _as_server(config))
        return 0
    if args.client:
        await perf_client(args.client, args.port, duration=duration, nbytes=args.bytes,
                          parallel=args.parallel, reverse=args.reverse,
                          interval=args.interval, as_json=args.json, config=config,
                          sampler=getattr(args, "sampler", None),
                          options=options)
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
                          sampler=getattr(args, "sampler", None),
                          options=options)
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
    workers.reuse_port_sockets(sockets, worker.count, steer=False)  # raises if unshared
    if udp and worker.count > 1:
        try:
            for sock in sockets:
                workers.steer_by_client_port(sock, worker.count)
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
    """Copy until EOF, then half-close the other side: half-close crosses the tunnel.

    Any OSError ends the copy, not only ConnectionError: a kernel TCP socket reset by
    its peer before its transport read the RST fails write_eof's shutdown() with
    ENOTCONN, which is neither a ConnectionError nor a reason to stop the tunnel.
    """
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter,
                  r2: asyncio.StreamReader, w2: asyncio.StreamWriter) -> None:
    try:
        await asyncio.gather(_pipe(r1, w2), _pipe(r2, w1))
    finally:
        for w in (w1, w2):
            w.close()
        for w in (w1, w2):
            with contextlib.suppress(OSError):
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
    await _serve_until_stopped(server, worker, lambda: served)
    return 0


async def _cat(args: argparse.Namespace, config: utcp.Config) -> int:
    cat = _CatSessions(args, asyncio.get_running_loop())
    if args.listen:
        await _cat_listen(args, config, cat)
        return 0
    try:
        reader, writer = await utcp.open_connection(args.host, args.port, config=config,
                                                    local_addr=args.bind)
    except (OSError, OverflowError) as exc:
        raise CliError(f"cannot connect to {args.host}:{args.port}: {_describe(exc)}") from None
    await cat.session(reader, writer)
    await cat.done
    return 0


async def _cat_listen(args: argparse.Namespace, config: utcp.Config,
                      cat: _CatSessions) -> None:
    """`cat -l`: one session, like nc -l; with -k, sessions until interrupted."""
    host, port = args.listen
    try:
        server = await utcp.start_server(cat.session, host, port, config=_as_server(config))
    except OSError as exc:
        raise CliError(f"cannot listen on udp {host}:{port}: {_describe(exc)}") from None
    if args.verbose:
        print(f"listening on udp {host} port {server.sockets[0].getsockname()[1]}",
              file=sys.stderr, flush=True)
    try:
        await cat.done
    finally:
        server.close()


class _CatSessions:
    """The sessions of one `utcp cat`, and `done`, which ends the command: set by the
    one session (its result or its failure) or, with -k, only by a failure of stdout."""

    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.args = args
        self.done: asyncio.Future[None] = loop.create_future()
        self.stdin = _Stdin()
        self.keep = bool(args.listen and args.keep_open)
        self.one_at_a_time = asyncio.Lock()

    async def sending(self, writer: asyncio.StreamWriter) -> None:
        if self.args.recv_only:
            writer.write_eof()  # -U: nothing of ours goes out, and the peer is told so
        else:
            await _stdin_to(writer, self.stdin)

    async def receiving(self, reader: asyncio.StreamReader) -> None:
        if self.args.send_only:
            # -u, as socat's: what arrives is read (so the peer is never stalled) and
            # dropped; the peer's FIN still ends the receiving direction
            while await reader.read(CHUNK):
                pass
        else:
            await _to_stdout(reader)

    async def exchange(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        if not self.keep:
            await asyncio.gather(self.sending(writer), self.receiving(reader))
            return
        # -k: the client leaving (its FIN) ends the session, so that the next one is
        # served even while stdin (a terminal, say) stays open; what stdin holds then
        # goes to the next client
        out = asyncio.create_task(self.sending(writer))
        try:
            await self.receiving(reader)
        finally:
            if not out.done():
                out.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await out

    async def session(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        done, keep = self.done, self.keep
        async with self.one_at_a_time if keep else contextlib.nullcontext():
            if done.done():
                writer.transport.abort()
                return
            try:
                await self.exchange(reader, writer)
                writer.close()
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await writer.wait_closed()
            except (ConnectionError, TimeoutError) as exc:
                if keep:
                    # one client's failure is not the listener's: say so, serve the next
                    print(f"utcp cat: connection lost: {_describe(exc)}", file=sys.stderr,
                          flush=True)
                    writer.transport.abort()
                elif not done.done():
                    done.set_exception(CliError(f"connection lost: {_describe(exc)}"))
                return
            except StdoutClosed as exc:
                # nobody reads what arrives any more: a reset tells the peer so at once
                writer.transport.abort()
                if not done.done():
                    done.set_exception(exc)
                return
            if not done.done() and not keep:
                done.set_result(None)


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


class _Stdin:
    """The command's stdin, read by one thread for all the sessions of a `-k` listener.

    A chunk is taken off the queue only by the session that sends it: one cancelled
    while waiting (its client left) leaves the next chunk for the next client.
    """

    def __init__(self) -> None:
        self._chunks: asyncio.Queue[bytes] | None = None
        self.ended = False

    async def read(self) -> bytes:
        if self.ended:
            return b""
        if self._chunks is None:
            self._chunks = asyncio.Queue(maxsize=2)
            threading.Thread(target=_read_stdin, daemon=True, name="utcp-stdin",
                             args=(asyncio.get_running_loop(), self._chunks,
                                   sys.stdin.fileno())).start()
        data = await self._chunks.get()
        self.ended = not data
        return data


async def _stdin_to(writer: asyncio.StreamWriter, stdin: _Stdin | None = None) -> None:
    stdin = stdin or _Stdin()
    while data := await stdin.read():
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


def _rate_value(text: str) -> float:
    """iperf3's rate syntax: bits/s with an optional K, M, G or T, powers of 1000."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    factor = scale.get(text[-1:].upper(), 1.0)
    return _finite_float(text[:-1] if factor != 1.0 else text) * factor


# a rate below 8 kbit/s would take minutes to send one write: surely a typo
_rate = _type(_rate_value, lambda v: v == 0 or v >= 8000,
              "must be 0 (unlimited) or at least 8K bits/sec", "rate")


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
    build = "compiled with mypyc" if utcp.compiled else "pure Python"
    parser.add_argument("--version", action="version", version=f"utcp {_version()} ({build})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events")
    parser.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_perf_parser(sub)
    _add_tunnel_parser(sub)
    _add_keygen_parser(sub)
    _add_cat_parser(sub)
    _add_plot_parser(sub)
    return parser


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every command that opens connections takes. -v and --log-json are
    also taken after the command, SUPPRESSed so they do not undo the same option
    given before it."""
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


def _add_perf_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`utcp perf`: iperf3's options, with its letters, where utcp has the feature."""
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
    perf.add_argument("-J", "--json", action="store_true",
                      help="one JSON document at the end, shaped like iperf3 -J's")
    perf.add_argument("-b", "--bitrate", type=_rate, metavar="RATE",
                      help="target bits/sec per stream, paced by the sender (suffixes "
                           "K, M, G: powers of 1000, as iperf3; 0 = unlimited, the default)")
    perf.add_argument("-O", "--omit", type=_seconds, default=0.0, metavar="N",
                      help="leave the first N seconds out of the totals (slow start)")
    perf.add_argument("-w", "--window", type=_bytes, metavar="SIZE",
                      help="this side's receive and send buffers (Config.recv_buffer, "
                           "send_buffer; suffixes K, M, G)")
    perf.add_argument("--cport", type=_port, metavar="PORT",
                      help="client's local port (stream i uses PORT + i - 1)")
    perf.add_argument("--get-server-output", action="store_true",
                      help="print the server's report of this test too")
    perf.add_argument("--workers", type=_workers, default=1, metavar="N",
                      help="server: N processes share the port (SO_REUSEPORT), "
                           "one core each (default 1)")
    perf.add_argument("--secure", action="store_true",
                      help="in-process run: secure mode with a fresh key pair")
    perf.add_argument("--plot", metavar="FILE.png|svg",
                      help="draw stream 1 (time-sequence graph, cwnd, RTT, throughput); "
                           "needs matplotlib: pip install 'utcp[plot]'")
    _add_common_arguments(perf)


def _add_tunnel_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`utcp tunnel`: one side listens for TCP, the other reaches the TCP service."""
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
    _add_common_arguments(tunnel)


def _add_keygen_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`utcp keygen`: no options; the parser is kept for its usage line."""
    keygen = sub.add_parser("keygen", help="print a new secure-mode key pair",
                            description="Prints 'private: ...' and 'public: ...'. Give the "
                                        "private key to the server (--key-file, $UTCP_KEY "
                                        "or --key), the public one to clients "
                                        "(--server-key).")
    keygen.set_defaults(parser=keygen)


def _add_cat_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`utcp cat`: netcat's letters (-l, -k) and socat's one-way -u."""
    cat = sub.add_parser("cat", help="netcat over utcp",
                         epilog=f"A listener's private key may also come from ${KEY_ENV}.")
    cat.add_argument("-l", "--listen", metavar="[HOST:]PORT", type=_address("0.0.0.0"),
                     help="wait for one connection")
    cat.add_argument("-k", "--keep-open", action="store_true",
                     help="with -l: serve the next client after one leaves, until "
                          "interrupted")
    cat.add_argument("--bind", metavar="[HOST:]PORT", type=_address(""),
                     help="connect from this local port (peer to peer: both sides bind "
                          "and connect to each other)")
    direction = cat.add_mutually_exclusive_group()
    direction.add_argument("-u", "--send-only", action="store_true",
                           help="one direction, as socat -u: stdin to the connection; "
                                "what arrives is dropped")
    direction.add_argument("-U", "--recv-only", action="store_true",
                           help="the other direction: the connection to stdout; stdin "
                                "is not read")
    cat.add_argument("host", nargs="?")
    cat.add_argument("port", nargs="?", type=_port)
    _add_common_arguments(cat)


def _add_plot_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`utcp plot`: reads a capture, opens no connection (no common options)."""
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
    if args.command == "perf":
        client_only = [name for name, given in (
            ("--cport", args.cport is not None), ("-b", args.bitrate is not None),
            ("-O", bool(args.omit)), ("--get-server-output", args.get_server_output))
            if given]
        if args.server and client_only:
            raise UsageError(f"{', '.join(client_only)}: client options, the client tells "
                             "the server")
        if args.cport is not None and args.cport + args.parallel - 1 > 65535:
            raise UsageError("--cport PORT + -P streams must stay within 65535")
        if args.cport == 0:
            raise UsageError("--cport must be a port, 1-65535")
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
    if args.command == "cat" and args.keep_open and args.listen is None:
        raise UsageError("-k keeps a listener open: it needs -l [HOST:]PORT")
    if args.command == "cat" and args.bind is not None and args.listen is not None:
        raise UsageError("--bind is the local port of a connecting cat; -l takes a "
                         "listener's address")


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
