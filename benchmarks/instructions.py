"""Instructions of the sans-IO core per datagram, exchange or connection: load-proof.

On a shared 2-core machine wall-clock and even CPU-time figures swing by a third from run
to run; the number of instructions executed does not. This runs `benchmarks.core`'s
transfer under valgrind's callgrind at two sizes and reports the difference per data
datagram (start-up, imports and the connection's handshake cancel out). The stream's
SHA-256 check is left out: it is the benchmark's work, not the core's.

`--ping-pong` counts a request/response exchange instead: the client sends 64 bytes, the
server reads them and echoes them, the client reads the echo, two sans-IO endpoints on a
fake clock (50 µs per hop); the figure is per exchange, both ends, again the difference
of two run lengths.

`--connect` counts what one connection costs the core, both ends: as the asyncio
adapter and `python -m benchmarks`' connect+close column do, each connection makes a
client `Endpoint` of its own (one ISN secret shared by all, `crypto.HandshakeSecrets`),
connects to one listening endpoint, sends a 1-byte request that the accepted connection
answers with 1 byte, closes first (FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT) while the server
closes on the EOF (CLOSE_WAIT, LAST_ACK, CLOSED), and sits out its TIME_WAIT; every
event both connections queue is drained, as the adapter drains them. Profile "1400"
(`Config(mss=1400, pmtu_probing=False)`), a fake clock (50 µs per hop); the difference
of 200 and 1,000 connections.

`--loopback` counts the whole stack instead of the core alone: `utcp.start_server` and
`utcp.open_connection` on real loopback sockets, client and server in one process on
asyncio's default loop, so the asyncio adapter, asyncio itself and the streams are in the
figure (the kernel's work is not: callgrind counts the process's own instructions). Four
figures, each the difference of two run lengths: a 64-byte ping-pong exchange; a
connect+close (the client closes, waits for `wait_closed`, the server closes on the EOF);
and a MiB of bulk transfer through `StreamWriter.write`/`drain`, at 1400-byte datagrams
and at the largest (`--bulk-max` alone: the default `Config()`, whose path-MTU probing
takes the datagrams to the route's limit, about 64 KiB on loopback, as the "largest
datagrams" column of `python -m benchmarks`; both run lengths pass through the same
start at 1400 bytes, so the difference is the steady state). Profile "1400" otherwise.

    python -m benchmarks.instructions [--mss 1400]
                                      [--glued|--one-by-one|--ping-pong|--connect|--loopback
                                       |--bulk-max]
                                      [--tree DIR]

`--tree DIR` measures the `utcp` package found in DIR (an older checkout, say) with this
tree's drivers. To measure a compiled build, run it with that build's interpreter from
its tree. Needs valgrind (Debian: `apt-get install valgrind`); about a minute per figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

SMALL, LARGE = 512 << 10, 2560 << 10  # bytes moved by the two bulk runs
FEW, MANY = 1000, 5000  # exchanges of the two ping-pong runs
FEW_CONNS, MANY_CONNS = 200, 1000  # connections of the two --connect runs
# the two run lengths of each --loopback figure: (unit, few, many)
LOOPBACK = {"ping": ("exchange", 100, 600), "connect": ("connection", 50, 250),
            "bulk": ("MiB", 2, 10), "bulk-max": ("MiB", 4, 20)}

_LOOPBACK = """
import asyncio, sys
if sys.argv[3]:
    sys.path.insert(0, sys.argv[3])
import utcp
mode, n = sys.argv[1], int(sys.argv[2])
config = (utcp.Config() if mode == "bulk-max"
          else utcp.Config(mss=1400, pmtu_probing=False))

async def serve(reader, writer):
    if mode == "ping":
        while data := await reader.read(64):
            writer.write(data)
    elif mode.startswith("bulk"):
        while await reader.read(1 << 18):
            pass
        writer.write(b"k")
    else:
        await reader.read()
    writer.close()

async def main():
    server = await utcp.start_server(serve, "127.0.0.1", 0, config=config)
    port = server.sockets[0].getsockname()[1]
    if mode == "connect":
        for _ in range(n):
            reader, writer = await utcp.open_connection("127.0.0.1", port, config=config)
            writer.close()
            await writer.wait_closed()
    else:
        reader, writer = await utcp.open_connection("127.0.0.1", port, config=config)
        if mode == "ping":
            message = bytes(64)
            for _ in range(n):
                writer.write(message)
                await reader.readexactly(64)
        else:
            chunk = bytes(range(256)) * 256  # 64 KiB
            for _ in range(16 * n):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            if await reader.read(1) != b"k":
                raise AssertionError("the server did not confirm the transfer")
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()

asyncio.run(main())
"""

_BULK = """
import sys
if sys.argv[4]:
    sys.path.insert(0, sys.argv[4])
from benchmarks import core

class _Digest:
    def __init__(self, data: object) -> None: pass
    def digest(self) -> bytes: return b""

class _NoHashing:
    sha256 = _Digest

core.hashlib = _NoHashing  # the check's hashing is not the core's work
if sys.argv[3] == "1":
    core.transfer(int(sys.argv[1]), bytes(int(sys.argv[2])), glued=True)
else:  # the positional call: trees older than the glued path take no such argument
    core.transfer(int(sys.argv[1]), bytes(int(sys.argv[2])))
"""

# Only calls that every tree since 96be91c has, so an old checkout runs it unchanged.
_PING_PONG = """
import random, sys
if sys.argv[2]:
    sys.path.insert(0, sys.argv[2])
from utcp.config import Config
from utcp.endpoint import Endpoint

SERVER, CLIENT = ("127.0.0.1", 5000), ("127.0.0.1", 6000)
server = Endpoint(Config(), SERVER[1], listening=True, rng=random.Random(1))
client = Endpoint(Config(), CLIENT[1], rng=random.Random(2))
now = 0.0

def hop():
    global now
    now += 50e-6
    for ep in (client, server):
        deadline = ep.get_timer()
        if deadline is not None and deadline <= now:
            ep.handle_timer(now)
    for datagram, _ in client.datagrams_to_send(now):
        server.receive_datagram(datagram, CLIENT, now)
    for datagram, _ in server.datagrams_to_send(now):
        client.receive_datagram(datagram, SERVER, now)

conn = client.connect(SERVER, now)
for _ in range(5):
    hop()
peer = server.accept()
request = b"x" * 64
for _ in range(int(sys.argv[1])):
    conn.send(request)
    hop()
    peer.send(peer.read_pieces(1 << 16))
    hop()
    if len(conn.read_pieces(1 << 16)) != len(request):
        raise AssertionError("the echo did not come back whole in one round trip")
"""

# One connection's life as the adapter drives the core (benchmarks.peers.harness's
# connect_close: a 1-byte request, a 1-byte answer, the client closes first).
_CONNECT = """
import sys
if sys.argv[2]:
    sys.path.insert(0, sys.argv[2])
from utcp.config import Config
from utcp.crypto import HandshakeSecrets
from utcp.endpoint import Endpoint

CONFIG = Config(mss=1400, pmtu_probing=False)
SERVER = ("127.0.0.1", 5000)
server = Endpoint(CONFIG, SERVER[1], listening=True, backlog=1024,
                  secrets=HandshakeSecrets(b"s" * 32))
shared = HandshakeSecrets(b"c" * 32)  # the adapter's one client secret per process
now = 0.0

def drain(conn):
    while conn.next_event() is not None:
        pass

def hop(client, addr, conn, peer):
    global now
    now += 50e-6
    for ep in (client, server):
        deadline = ep.get_timer()
        if deadline is not None and deadline <= now:
            ep.handle_timer(now)
    for datagram, _ in client.datagrams_to_send(now):
        server.receive_datagram(datagram, addr, now)
    for datagram, _ in server.datagrams_to_send(now):
        client.receive_datagram(datagram, SERVER, now)
    drain(conn)
    if peer is not None:
        drain(peer)

for i in range(int(sys.argv[1])):
    addr = ("127.0.0.1", 10000 + i % 50000)
    client = Endpoint(CONFIG, addr[1], secrets=shared)
    conn = client.connect(SERVER, now)
    hop(client, addr, conn, None)   # SYN, SYN+ACK
    conn.send(b"C")
    hop(client, addr, conn, None)   # the ACK and the request
    peer = server.accept()
    if peer is None or peer.read() != b"C":
        raise AssertionError("the request did not arrive with the handshake's ACK")
    peer.send(b"c")
    hop(client, addr, conn, peer)
    if conn.read() != b"c":
        raise AssertionError("the answer did not come back")
    conn.close()
    hop(client, addr, conn, peer)   # FIN, its ACK
    peer.close()
    hop(client, addr, conn, peer)   # the server's FIN, its ACK
    hop(client, addr, conn, peer)
    if conn.state.name != "TIME_WAIT" or peer.state.name != "CLOSED":
        raise AssertionError(f"ended in {conn.state.name} and {peer.state.name}")
    now = client.get_timer()        # TIME_WAIT runs out
    hop(client, addr, conn, peer)
    if conn.state.name != "CLOSED" or client.get_timer() is not None:
        raise AssertionError(f"the client ended in {conn.state.name}")
"""


def _collected(args: list[str]) -> int:
    """Instructions a whole interpreter run executes (callgrind's 'Collected')."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", *args],
        capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr}")
    return int(found.group(1))


def count(mss: int, nbytes: int, glued: bool, tree: str = "") -> int:
    """Instructions of one bulk transfer of `nbytes`, interpreter start-up included."""
    return _collected([_BULK, str(mss), str(nbytes), "1" if glued else "0", tree])


def per_datagram(mss: int, glued: bool, tree: str = "") -> float:
    datagrams = (LARGE - SMALL) / mss
    return (count(mss, LARGE, glued, tree) - count(mss, SMALL, glued, tree)) / datagrams


def per_exchange(tree: str = "") -> float:
    """Instructions per 64-byte request and its echo, both endpoints."""
    return (_collected([_PING_PONG, str(MANY), tree])
            - _collected([_PING_PONG, str(FEW), tree])) / (MANY - FEW)


def per_connection(tree: str = "") -> float:
    """Instructions per connection opened, used and closed, both endpoints."""
    return (_collected([_CONNECT, str(MANY_CONNS), tree])
            - _collected([_CONNECT, str(FEW_CONNS), tree])) / (MANY_CONNS - FEW_CONNS)


def per_loopback(mode: str, tree: str = "") -> float:
    """Instructions of the whole process per `LOOPBACK[mode]` unit, both ends."""
    _, few, many = LOOPBACK[mode]
    return (_collected([_LOOPBACK, mode, str(many), tree])
            - _collected([_LOOPBACK, mode, str(few), tree])) / (many - few)


def _build(tree: str) -> str:
    """Which build of utcp the child will import: it runs this interpreter."""
    probe = ("import sys\nif sys.argv[1]:\n    sys.path.insert(0, sys.argv[1])\n"
             "import utcp\nprint(getattr(utcp, 'compiled', False), utcp.__file__)")
    out = subprocess.run([sys.executable, "-c", probe, tree], capture_output=True, text=True,
                         check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    compiled, where = out.stdout.split(maxsplit=1)
    name = "compiled" if compiled == "True" else "pure Python"
    return f"{name}, {os.path.dirname(os.path.dirname(where.strip()))}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mss", type=int, default=1400)
    ap.add_argument("--tree", default="", help="measure the utcp package in this directory")
    way = ap.add_mutually_exclusive_group()
    way.add_argument("--glued", dest="ways", action="store_const", const=["glued"],
                     help="bulk, datagrams glued as GRO reads them (per data datagram)")
    way.add_argument("--one-by-one", dest="ways", action="store_const", const=["one"],
                     help="bulk, one datagram at a time (per data datagram)")
    way.add_argument("--ping-pong", dest="ways", action="store_const", const=["ping"],
                     help="a 64-byte request and its echo (per exchange)")
    way.add_argument("--connect", dest="ways", action="store_const", const=["connect"],
                     help="connect, a 1-byte request and answer, close, TIME_WAIT, with a"
                          " client endpoint each, as the asyncio adapter (per connection)")
    way.add_argument("--loopback", dest="ways", action="store_const",
                     const=["loop-ping", "loop-connect", "loop-bulk", "loop-bulk-max"],
                     help="the whole stack (asyncio, the adapter, the core) on loopback"
                          " sockets in one process: per exchange, connection and MiB"
                          " (at 1400-byte and at the largest datagrams)")
    way.add_argument("--bulk-max", dest="ways", action="store_const",
                     const=["loop-bulk-max"],
                     help="--loopback's bulk at the largest datagrams alone (per MiB)")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    tree = os.path.abspath(args.tree) if args.tree else ""
    build = _build(tree)
    for way in args.ways or ["glued", "one"]:
        if way.startswith("loop-"):
            mode = way.removeprefix("loop-")
            label = "bulk, largest datagrams" if mode == "bulk-max" else mode
            print(f"loopback {label}, asyncio default loop, {build}:"
                  f" {per_loopback(mode, tree):,.0f} instructions per {LOOPBACK[mode][0]}"
                  " (both ends, one process)")
            continue
        if way == "connect":
            print(f"connect, 1-byte request and answer, close, TIME_WAIT, {build}:"
                  f" {per_connection(tree):,.0f} instructions per connection (both endpoints)")
            continue
        if way == "ping":
            print(f"ping-pong, 64 bytes each way, {build}: {per_exchange(tree):,.0f}"
                  " instructions per exchange (both endpoints)")
            continue
        name = "glued" if way == "glued" else "one by one"
        figure = per_datagram(args.mss, way == "glued", tree)
        print(f"MSS {args.mss}, {name}, {build}: {figure:,.0f}"
              " instructions per data datagram (both endpoints)")


if __name__ == "__main__":
    main()
