"""Instructions per datagram of the sans-IO core: a figure machine load cannot move.

On a shared 2-core machine wall-clock and even CPU-time figures swing by a third from run
to run; the number of instructions executed does not. This runs `benchmarks.core`'s
transfer under valgrind's callgrind at two sizes and reports the difference per data
datagram (start-up, imports and the connection's handshake cancel out). The stream's
SHA-256 check is left out: it is the benchmark's work, not the core's.

    python -m benchmarks.instructions [--mss 1400] [--glued|--one-by-one]

Compare two trees by running it from each (each with its own install); needs valgrind
(Debian: `apt-get install valgrind`). It takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

SMALL, LARGE = 512 << 10, 2560 << 10  # bytes moved by the two runs

_CHILD = """
import sys
from benchmarks import core

class _Digest:
    def __init__(self, data: object) -> None: pass
    def digest(self) -> bytes: return b""

class _NoHashing:
    sha256 = _Digest

core.hashlib = _NoHashing  # the check's hashing is not the core's work
core.transfer(int(sys.argv[1]), bytes(int(sys.argv[2])), glued=sys.argv[3] == "1")
"""


def count(mss: int, nbytes: int, glued: bool) -> int:
    """Instructions a whole interpreter run executes (callgrind's 'Collected')."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", _CHILD, str(mss), str(nbytes), "1" if glued else "0"],
        capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr}")
    return int(found.group(1))


def per_datagram(mss: int, glued: bool) -> float:
    datagrams = (LARGE - SMALL) / mss
    return (count(mss, LARGE, glued) - count(mss, SMALL, glued)) / datagrams


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mss", type=int, default=1400)
    way = ap.add_mutually_exclusive_group()
    way.add_argument("--glued", dest="ways", action="store_const", const=[True])
    way.add_argument("--one-by-one", dest="ways", action="store_const", const=[False])
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    import utcp
    build = "compiled" if utcp.compiled else "pure Python"
    for glued in args.ways or [True, False]:
        way = "glued" if glued else "one by one"
        print(f"MSS {args.mss}, {way}, {build}: {per_datagram(args.mss, glued):,.0f}"
              " instructions per data datagram (both endpoints)")


if __name__ == "__main__":
    main()
