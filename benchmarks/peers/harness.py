"""The harness behind `python -m benchmarks` (see benchmarks/__main__.py for what it measures).

It lives in an importable module because multiprocessing's spawn start method cannot
re-import a package's __main__ in a child process, and the client of each event loop
runs in a spawned process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import errno
import gc
import hashlib
import importlib.util
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from benchmarks import peers
from benchmarks.peers import CHUNK, HEADER, PING_SIZE, rss_bytes

LOOPS = ("default", "uvloop")
LOOP_TITLES = {"default": "asyncio default loop", "uvloop": "uvloop"}
METRICS = ("bulk", "bulk_max", "rtt_median", "rtt_p99", "conn_rate", "idle_kib")
IDLE_CONCURRENCY = 32   # connections being opened at once in the idle test
MTU_PROFILE = {"bulk": "1400", "bulk_max": "max"}


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


@dataclass
class Options:
    nbytes: int
    pings: int
    conns: int
    idle: int
    reps: int
    ping_time: float
    conn_time: float
    idle_time: float


@dataclass
class PeerResult:
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    idle_reached: list[int] = field(default_factory=list)
    client_idle_kib: list[float] = field(default_factory=list)
    idle_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wire: dict[str, str] = field(default_factory=dict)      # metric -> last wire note
    counts: dict[str, list[int]] = field(default_factory=dict)  # pings / conns done


METHOD_NOTES = [
    "idle KiB/conn is the server process's RSS: for asyncio TCP that is the Python objects"
    " only, the kernel's socket memory is not in it; for the UDP transports it is all of it",
    "an idle count in brackets is how many connections the server held when opening"
    " stopped (the time budget, or an error listed above); KiB/conn is over those",
    "connect+close: TCP and utcp wait until wait_closed() returns (not TIME_WAIT); QUIC"
    " sends CONNECTION_CLOSE and leaves the closing period (3 PTO) to the background;"
    " KCP has no handshake or close: a new UDP socket, one request and answer, and"
    " aiokcp's fixed 100 ms close linger left to the background",
    "KCP's RTT is its clock: aiokcp sends and acknowledges on its 10 ms update tick",
]


# ---------------------------------------------------------------------- server processes

class ServerProc:
    """One spawned server process (benchmarks.peers.server_process) and its pipe."""

    def __init__(self, key: str, profile: str, use_uvloop: bool, ctx: dict[str, Any]) -> None:
        spawn = mp.get_context("spawn")
        self.pipe, child = spawn.Pipe()
        self.proc = spawn.Process(target=peers.server_process, daemon=True,
                                  args=(child, key, profile, use_uvloop, ctx))
        self.proc.start()
        child.close()
        self._port: int | None = None

    def port(self, timeout: float = 60) -> int:
        if self._port is None:
            if not self.pipe.poll(timeout):
                raise TimeoutError("the server process did not start")
            msg = self.pipe.recv()
            if isinstance(msg, str):
                raise RuntimeError(f"server: {msg}")
            self._port = msg
        return self._port

    def stats(self, timeout: float = 60) -> tuple[int, int, list[str]]:
        self.pipe.send("stats")
        if not self.pipe.poll(timeout):
            raise TimeoutError("the server process did not answer")
        result: tuple[int, int, list[str]] = self.pipe.recv()
        return result

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# ---------------------------------------------------------------------- measurements

async def bulk(peer: Any, port: int, profile: str, ctx: dict[str, Any], payload: bytes,
               digest: bytes) -> tuple[float, str | None]:
    conn = await peer.connect(port, profile, ctx)
    start = time.perf_counter()
    conn.write(HEADER.pack(b"B", len(payload)))
    view = memoryview(payload)
    for i in range(0, len(payload), CHUNK):
        conn.write(view[i:i + CHUNK])
        await conn.drain()
    got = await conn.reader.readexactly(32)
    elapsed = time.perf_counter() - start
    if got != digest:
        raise AssertionError("bulk transfer corrupted (SHA-256 differs)")
    note = conn.wire_note()
    await conn.close()
    return len(payload) / elapsed / 1e6, note


async def pingpong(peer: Any, port: int, ctx: dict[str, Any], count: int, budget: float
                   ) -> list[float]:
    conn = await peer.connect(port, "1400", ctx)
    conn.write(HEADER.pack(b"P", count))
    msg = os.urandom(PING_SIZE)
    samples: list[float] = []
    clock = time.perf_counter
    end = clock() + budget
    for _ in range(count):
        t = clock()
        conn.write(msg)
        if await conn.reader.readexactly(PING_SIZE) != msg:
            raise AssertionError("ping-pong: the echo differs")
        now = clock()
        samples.append((now - t) * 1e6)
        if now > end:
            break
    await conn.close()
    return samples


async def connect_close(peer: Any, port: int, ctx: dict[str, Any], count: int,
                        budget: float) -> tuple[float, int]:
    request = HEADER.pack(b"C", 0)
    start = time.perf_counter()
    end = start + budget
    done = 0
    while done < count:
        conn = await peer.connect(port, "1400", ctx)
        conn.write(request)
        if await conn.reader.readexactly(1) != b"c":
            raise AssertionError("connect: wrong answer")
        await conn.close()
        done += 1
        if time.perf_counter() > end:
            break
    return done / (time.perf_counter() - start), done


async def idle(peer: Any, key: str, use_uvloop: bool, ctx: dict[str, Any], count: int,
               budget: float) -> tuple[float, int, float, float, list[str]]:
    """(server KiB per connection, connections the server held, client KiB per
    connection, seconds taken to open them, errors)."""
    loop = asyncio.get_running_loop()
    server = ServerProc(key, "1400", use_uvloop, {**ctx, "kcp_server_timeout": 3600.0})
    conns: list[Any] = []
    errors: list[str] = []
    try:
        port = await loop.run_in_executor(None, server.port)
        await asyncio.sleep(0.2)
        rss0, _, _ = await loop.run_in_executor(None, server.stats)
        gc.collect()
        client0 = rss_bytes()
        request = HEADER.pack(b"I", 0)
        end = time.perf_counter() + budget
        started = 0

        async def worker() -> None:
            nonlocal started
            while started < count and time.perf_counter() < end and len(errors) < 5:
                started += 1
                try:
                    conn = await asyncio.wait_for(peer.connect(port, "1400", ctx), 30)
                    conns.append(conn)
                    conn.write(request)
                    if await asyncio.wait_for(conn.reader.readexactly(1), 30) != b"i":
                        raise AssertionError("idle: wrong answer")
                except Exception as exc:
                    errors.append(f"after {len(conns)} open: {type(exc).__name__}: {exc}")
                    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
                        errors.extend(["(out of file descriptors: stopped)"] * 5)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IDLE_CONCURRENCY)))
        opened_in = time.perf_counter() - t0
        await asyncio.sleep(1.0)   # let handshakes' last ACKs and timers settle
        rss1, held, server_errors = await loop.run_in_executor(None, server.stats)
        gc.collect()
        client1 = rss_bytes()
        errors.extend(server_errors)
        per = (rss1 - rss0) / 1024 / held if held else float("nan")
        client_per = (client1 - client0) / 1024 / len(conns) if conns else float("nan")
        return per, held, client_per, opened_in, errors
    finally:
        await loop.run_in_executor(None, server.stop)
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.abort()
        await asyncio.sleep(0.1)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def measure(loop_name: str, keys: list[str], opts: Options, ctx: dict[str, Any],
                  servers: dict[tuple[str, str], ServerProc]) -> dict[str, PeerResult]:
    use_uvloop = loop_name == "uvloop"
    mods = {key: peers.load(key) for key in keys}
    results = {key: PeerResult() for key in keys}
    ports = {k: s.port() for k, s in servers.items()}
    payload = os.urandom(opts.nbytes)
    digest = hashlib.sha256(payload).digest()
    bulk_timeout = max(120.0, opts.nbytes / 1e6)   # 1 MB/s at worst

    async def guarded(key: str, what: str, coro: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except Exception as exc:
            msg = f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")
            results[key].errors.append(msg)
            _log(f"[{loop_name}] {key} {msg}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            return None

    for rep in range(1, opts.reps + 1):
        for metric in ("bulk", "bulk_max"):
            profile = MTU_PROFILE[metric]
            for key in keys:
                if (key, profile) not in ports:
                    continue
                got = await guarded(key, f"rep {rep} {metric}",
                                    bulk(mods[key], ports[key, profile], profile, ctx,
                                         payload, digest), bulk_timeout)
                if got is not None:
                    results[key].values[metric].append(got[0])
                    if got[1]:
                        results[key].wire[metric] = got[1]
                    _log(f"[{loop_name}] rep {rep} {metric:8} {key:8} {got[0]:8.1f} MB/s"
                         f"  {got[1] or ''}")
        for key in keys:
            samples = await guarded(key, f"rep {rep} ping-pong",
                                    pingpong(mods[key], ports[key, "1400"], ctx, opts.pings,
                                             opts.ping_time), opts.ping_time + 120)
            if samples:
                r = results[key]
                r.values["rtt_median"].append(statistics.median(samples))
                r.values["rtt_p99"].append(_p99(samples))
                r.counts.setdefault("pings", []).append(len(samples))
                _log(f"[{loop_name}] rep {rep} ping-pong {key:8} median"
                     f" {statistics.median(samples):8.0f} µs p99 {_p99(samples):8.0f} µs"
                     f" ({len(samples)} pings)")
        for key in keys:
            got = await guarded(key, f"rep {rep} connect+close",
                                connect_close(mods[key], ports[key, "1400"], ctx, opts.conns,
                                              opts.conn_time), opts.conn_time + 120)
            if got is not None:
                results[key].values["conn_rate"].append(got[0])
                results[key].counts.setdefault("conns", []).append(got[1])
                _log(f"[{loop_name}] rep {rep} connect   {key:8} {got[0]:8.1f} /s"
                     f" ({got[1]} connections)")
        if opts.idle > 0:
            for key in keys:
                got = await guarded(key, f"rep {rep} idle",
                                    idle(mods[key], key, use_uvloop, ctx, opts.idle,
                                         opts.idle_time), opts.idle_time + 180)
                if got is None:
                    continue
                per, held, client_per, opened_in, errors = got
                r = results[key]
                if held:
                    r.values["idle_kib"].append(per)
                    r.client_idle_kib.append(client_per)
                r.idle_reached.append(held)
                r.errors.extend(f"rep {rep} idle: {e}" for e in errors[:3])
                r.idle_seconds.append(opened_in)
                _log(f"[{loop_name}] rep {rep} idle      {key:8} {per:8.1f} KiB/conn server,"
                     f" {client_per:.1f} client, {held} held, opened in {opened_in:.1f} s")
    for (key, profile), server in servers.items():
        try:
            _, _, errs = server.stats()
            results[key].errors.extend(f"server ({profile}): {e}" for e in errs)
        except Exception as exc:
            results[key].errors.append(f"server ({profile}) stats: {exc}")
    return results


def client_process(pipe: Any, loop_name: str, keys: list[str], opts: Options,
                   ctx: dict[str, Any]) -> None:
    """One event loop's whole run, in a process of its own (its sockets die with it)."""
    peers.raise_fd_limit()
    rss_bytes()
    use_uvloop = loop_name == "uvloop"
    servers: dict[tuple[str, str], ServerProc] = {}
    try:
        for key in keys:
            for profile in peers.PROFILES:
                if peers.load(key).settings(profile) is not None:
                    servers[key, profile] = ServerProc(key, profile, use_uvloop, ctx)
        results = peers.run(measure(loop_name, keys, opts, ctx, servers), use_uvloop)
        # plain dicts: classes of a spawned __main__ do not unpickle in the parent
        pipe.send({key: dataclasses.asdict(r) for key, r in results.items()})
    except BaseException as exc:
        pipe.send(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        for server in servers.values():
            server.stop()
        sys.stderr.flush()
        os._exit(0)   # no teardown of sockets lingering in TIME_WAIT


# ---------------------------------------------------------------------- report

def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def table(results: dict[str, PeerResult], keys: list[str], opts: Options,
          has_max: dict[str, bool]) -> list[str]:
    names = {key: peers.load(key).NAME for key in keys}
    med = {key: {m: _median(results[key].values[m]) for m in METRICS} for key in keys}
    lines = [
        "| transport | bulk MB/s, 1400 B datagrams | bulk MB/s, largest datagrams"
        " | RTT median µs | RTT p99 µs | connect+close /s | idle KiB/conn (server) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        m, r = med[key], results[key]
        idle = _fmt(m["idle_kib"], 1)
        if r.idle_reached and min(r.idle_reached) < opts.idle:
            idle += f" ({min(r.idle_reached)} held)"
        bulk_max = _fmt(m["bulk_max"], 1) if has_max[key] else "n/a"
        lines.append(f"| {names[key]} | {_fmt(m['bulk'], 1)} | {bulk_max}"
                     f" | {_fmt(m['rtt_median'], 0)} | {_fmt(m['rtt_p99'], 0)}"
                     f" | {_fmt(m['conn_rate'], 0)} | {idle} |")
    if "utcp" in keys:
        u = med["utcp"]
        for key in keys:
            if key == "utcp":
                continue
            cells = []
            for metric in METRICS:
                a, b = u[metric], med[key][metric]
                if metric == "bulk_max" and not has_max[key]:
                    cells.append("n/a")
                elif a is None or b is None or not b or a != a or b != b:
                    cells.append("-")
                else:
                    cells.append(f"{a / b:.2f}x")
            lines.append(f"| utcp / {names[key]} | " + " | ".join(cells) + " |")
    return lines


def _git_state() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "utcp"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not rev:
        return "unknown"
    return rev + (" + uncommitted changes in utcp/" if dirty else "")


def _version(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def report(all_results: dict[str, dict[str, PeerResult]], keys: list[str], opts: Options,
           notes: list[str], started: datetime.datetime, seconds: float, git: str) -> str:
    mods = {key: peers.load(key) for key in keys}
    has_max = {key: mods[key].settings("max") is not None for key in keys}
    out: list[str] = []
    versions = {"utcp": None, "tcp": None, "aioquic": "aioquic", "qh3": "qh3", "kcp": "aiokcp"}
    vers = ", ".join(f"{versions[k]} {_version(versions[k] or '')}" for k in keys
                     if versions[k])
    out.append(f"loopback, Python {platform.python_version()}, {os.cpu_count()} CPUs,"
               f" {platform.system()} {platform.release()}; utcp {git}"
               + (f"; {vers}" if vers else "")
               + (f", uvloop {_version('uvloop')}" if "uvloop" in all_results else ""))
    out.append(f"{started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s; {opts.nbytes / (1 << 20):g} MiB"
               f" bulk, {opts.pings} pings x {PING_SIZE} B (at most {opts.ping_time:g} s),"
               f" {opts.conns} connects (at most {opts.conn_time:g} s), {opts.idle} idle"
               f" connections (at most {opts.idle_time:g} s to open); median of {opts.reps}")
    for loop_name, results in all_results.items():
        out.append("")
        out.append(f"### {LOOP_TITLES[loop_name]}")
        out.append("")
        out.extend(table(results, keys, opts, has_max))
    out.append("")
    out.append("Ratios are utcp / peer: above 1 utcp is higher (better for MB/s and"
               " connect+close, worse for µs and KiB).")
    out.append("")
    out.append("Settings:")
    for key in keys:
        for profile in peers.PROFILES:
            text = mods[key].settings(profile)
            label = "1400 B" if profile == "1400" else "largest"
            out.append(f"- {mods[key].NAME}, {label}: {text or 'n/a (no such mode)'}")
    extra: list[str] = []
    for loop_name, results in all_results.items():
        for key in keys:
            r = results[key]
            name = mods[key].NAME
            for metric, note in r.wire.items():
                extra.append(f"- {LOOP_TITLES[loop_name]}, {name}, {metric} (last rep):"
                             f" {note}")
            if r.client_idle_kib:
                # only the first repetition: later ones reuse memory the first one freed
                extra.append(f"- {LOOP_TITLES[loop_name]}, {name}: client process RSS growth"
                             f" with the idle connections open (first repetition):"
                             f" {r.client_idle_kib[0]:.1f} KiB/conn")
            if r.idle_reached and min(r.idle_reached) < opts.idle:
                why = ("stopped by errors, below" if any(" idle: " in e for e in r.errors)
                       else f"opening stopped by the {opts.idle_time:g} s budget")
                extra.append(f"- {LOOP_TITLES[loop_name]}, {name}: idle connections held"
                             f" {', '.join(map(str, r.idle_reached))} of {opts.idle} ({why})")
            if r.idle_seconds:
                extra.append(f"- {LOOP_TITLES[loop_name]}, {name}: seconds to open the idle"
                             f" connections: {', '.join(f'{x:.1f}' for x in r.idle_seconds)}")
            for what, counts in r.counts.items():
                if counts and min(counts) < (opts.pings if what == "pings" else opts.conns):
                    extra.append(f"- {LOOP_TITLES[loop_name]}, {name}: {what} done within"
                                 f" the time budget: {', '.join(map(str, counts))}")
            for err in dict.fromkeys(r.errors):
                extra.append(f"- {LOOP_TITLES[loop_name]}, {name}, ERROR: {err}")
    if extra:
        out.append("")
        out.append("Observed:")
        out.extend(extra)
    out.append("")
    out.append("Notes:")
    out.extend(f"- {n}" for n in [*notes, *METHOD_NOTES])
    return "\n".join(out)


# ---------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=(
        "utcp against asyncio TCP, aioquic, qh3 and KCP (aiokcp) on loopback, in one run"))
    ap.add_argument("--bytes", type=parse_size, default=64 << 20,
                    help="bulk transfer size (e.g. 64M, 1M; default 64M)")
    ap.add_argument("--pings", type=int, default=2000, help="ping-pong round trips (2000)")
    ap.add_argument("--conns", type=int, default=200, help="sequential connects (200)")
    ap.add_argument("--idle", type=int, default=10_000,
                    help="idle connections held open on one server (10000; 0 skips)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    ap.add_argument("--only", default=",".join(peers.ORDER),
                    help=f"transports, comma-separated, of {','.join(peers.ORDER)}")
    ap.add_argument("--loops", default=",".join(LOOPS), help="default,uvloop")
    ap.add_argument("--ping-time", type=float, default=3.0,
                    help="seconds of ping-pong at most per repetition (3)")
    ap.add_argument("--conn-time", type=float, default=4.0,
                    help="seconds of connect+close at most per repetition (4)")
    ap.add_argument("--idle-time", type=float, default=12.0,
                    help="seconds to open idle connections at most per repetition (12)")
    args = ap.parse_args(argv)
    opts = Options(args.bytes, args.pings, args.conns, args.idle, args.reps, args.ping_time,
                   args.conn_time, args.idle_time)
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in peers.ORDER]
    if unknown:
        ap.error(f"unknown transport(s) {', '.join(unknown)}; choose from"
                 f" {', '.join(peers.ORDER)}")
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    if any(name not in LOOPS for name in loops):
        ap.error("--loops takes default and/or uvloop")
    with tempfile.TemporaryDirectory(prefix="utcp-bench-") as tmp:
        notes: list[str] = []
        git = _snapshot_utcp(tmp, notes)
        return _run(opts, wanted, loops, tmp, git, notes)


def _snapshot_utcp(tmp: str, notes: list[str]) -> str:
    """Copy the utcp package into `tmp` and import it from there, in every process.

    utcp changes in the working tree while engineers work; a run of several minutes
    spawns processes all along, and each would import whatever is there at that moment.
    The copy makes the whole run measure one version, named by `_git_state()`.
    """
    git = _git_state()
    if "utcp" in sys.modules:
        notes.append("utcp was imported before the run: not snapshotted")
        return git
    spec = importlib.util.find_spec("utcp")
    if spec is None or not spec.submodule_search_locations:
        return git
    source = next(iter(spec.submodule_search_locations))
    target = os.path.join(tmp, "src")
    shutil.copytree(source, os.path.join(target, "utcp"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, target)   # spawned processes inherit sys.path
    return git + " (a copy of the tree taken at the start of the run)"


def _run(opts: Options, wanted: list[str], loops: list[str], tmp: str, git: str,
         notes: list[str]) -> int:
    keys = []
    for key in peers.ORDER:
        if key not in wanted:
            continue
        why = peers.load(key).missing()
        if why is None:
            keys.append(key)
        else:
            notes.append(f"{peers.load(key).NAME} skipped: {why}")
    if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
        loops.remove("uvloop")
        notes.append("uvloop skipped: not installed (pip install -e '.[bench]')")
    if not keys or not loops:
        print("nothing to run:", "; ".join(notes) or "no transport or loop selected")
        return 1
    limit = peers.raise_fd_limit()
    need = opts.idle + 1000
    if limit < need:
        notes.append(f"RLIMIT_NOFILE is {limit}: fewer than {opts.idle} idle connections"
                     " may open")
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    all_results: dict[str, dict[str, PeerResult]] = {}
    ctx: dict[str, Any] = {}
    if {"aioquic", "qh3"} & set(keys):
        from benchmarks.peers._quic import make_certificate
        ctx["cert"], ctx["key"] = make_certificate(tmp)
    for loop_name in loops:
        _log(f"--- {LOOP_TITLES[loop_name]}: {', '.join(keys)}")
        spawn = mp.get_context("spawn")
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=client_process, args=(child, loop_name, keys, opts, ctx))
        proc.start()
        child.close()
        try:
            got = parent.recv()
        except EOFError:
            got = f"the client process died (exit code {proc.exitcode})"
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        if isinstance(got, str):
            notes.append(f"{LOOP_TITLES[loop_name]}: run failed: {got.strip()}")
            _log(got)
            continue
        all_results[loop_name] = {key: PeerResult(**r) for key, r in got.items()}
    if not all_results:
        print("\n".join(f"- {n}" for n in notes))
        return 1
    print(report(all_results, keys, opts, notes, started, time.perf_counter() - t0, git))
    return 0
