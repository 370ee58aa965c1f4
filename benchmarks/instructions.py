"""Instructions per datagram of the sans-IO core: a figure machine load cannot move.

On a shared 2-core machine wall-clock and even CPU-time figures swing by a third from run
to run; the number of instructions executed does not. This runs `benchmarks.core`'s
transfer under valgrind's callgrind at two sizes and reports the difference per data
datagram (start-up, imports and the connection's handshake cancel out). The stream's
SHA-256 check is left out: it is the benchmark's work, not the core's.

`--ping-pong` counts a request/response exchange instead: the client sends 64 bytes, the
server reads them and echoes them, the client reads the echo, two sans-IO endpoints on a
fake clock (50 µs per hop); the figure is per exchange, both ends, again the difference
of two run lengths.

    python -m benchmarks.instructions [--mss 1400] [--glued|--one-by-one|--ping-pong]
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
    way.add_argument("--glued", dest="ways", action="store_const", const=["glued"])
    way.add_argument("--one-by-one", dest="ways", action="store_const", const=["one"])
    way.add_argument("--ping-pong", dest="ways", action="store_const", const=["ping"])
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    tree = os.path.abspath(args.tree) if args.tree else ""
    build = _build(tree)
    for way in args.ways or ["glued", "one"]:
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
