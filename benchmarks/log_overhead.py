"""What utcp's event log costs when it is off: the core benchmark, logging disabled, against
a build of utcp whose log calls are stubbed out entirely.

The stubbed build is a copy of the `utcp` package in a temporary directory where every
`log.enabled()` test is replaced by `False`, so CPython compiles each guarded `log.emit`
block away: no attribute lookup, no call, nothing. Each variant runs
`benchmarks.core.transfer` in its own fresh interpreter, alternating A, B, A, B... so
machine noise hits both alike; the best and median rates and their ratios are printed. The budget is
3 %: disabled logging must cost less than that.

    python -m benchmarks.log_overhead [--mib N] [--reps N] [--mss N]

This is deliberately not a unit test: a timed assertion on a loaded 2-core machine would
be flaky. tests/test_log.py checks the functional half (with logging off,
`utcp.log.emit` is never called).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 0.03
# both forms of the guard: the call, and the flag a hot path reads in its place (log.on)
GUARD = re.compile(r"\blog\.(?:enabled\(\)|on\b)")


def make_stubbed_copy(dest: Path) -> int:
    """Copy utcp/ under `dest` with every `log.enabled()` (and `log.on`) replaced by `False`."""
    target = dest / "utcp"
    shutil.copytree(ROOT / "utcp", target, ignore=shutil.ignore_patterns("__pycache__"))
    replaced = 0
    for path in target.rglob("*.py"):
        if path.name == "log.py" and path.parent == target:
            continue
        text = path.read_text()
        new, n = GUARD.subn("False", text)
        if n:
            path.write_text(new)
            replaced += n
    return replaced


def run_variant(pythonpath: str, mib: int, mss: int) -> tuple[float, str]:
    """One transfer in a fresh interpreter; (MB/s, the utcp package it imported)."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--mib", str(mib),
         "--mss", str(mss)],
        env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    rate, where = out.stdout.split()
    return float(rate), where


def worker(mib: int, mss: int) -> None:
    import random

    import utcp
    from benchmarks.core import transfer
    from utcp import log

    assert not log.enabled()
    payload = random.Random(0).randbytes(mib << 20)
    result = transfer(mss, payload)
    print(f"{result.mb_per_s:.3f} {Path(utcp.__file__).parent}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=32, help="MiB per transfer (default 32)")
    ap.add_argument("--reps", type=int, default=7, help="runs of each variant (default 7)")
    ap.add_argument("--mss", type=int, default=1400)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.mib, args.mss)
        return
    with tempfile.TemporaryDirectory(prefix="utcp-nolog-") as tmp:
        replaced = make_stubbed_copy(Path(tmp))
        if replaced == 0:
            sys.exit("no `log.enabled()` call found to stub out: is this the utcp tree?")
        variants = {
            "logging disabled": str(ROOT),
            "log calls stubbed out": os.pathsep.join([tmp, str(ROOT)]),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        print(f"core benchmark, {args.mib} MiB per run, MSS {args.mss}, {args.reps} runs "
              f"each, alternating; {replaced} guarded log calls stubbed out\n")
        for rep in range(args.reps):
            for name, path in variants.items():
                rate, where = run_variant(path, args.mib, args.mss)
                expected = Path(tmp) if "stubbed" in name else ROOT
                if Path(where).parent != expected:
                    sys.exit(f"{name}: imported utcp from {where}, not under {expected}")
                rates[name].append(rate)
                print(f"  run {rep + 1}: {name:<22} {rate:8.1f} MB/s", flush=True)
    # the best run is the one least disturbed by the rest of the machine (timeit's rule);
    # the median is shown beside it
    best = {name: max(r) for name, r in rates.items()}
    median = {name: statistics.median(r) for name, r in rates.items()}
    print()
    for name in variants:
        print(f"{name + ':':<23} best {best[name]:8.1f} MB/s, median {median[name]:8.1f} MB/s")
    ratio = best["logging disabled"] / best["log calls stubbed out"]
    median_ratio = median["logging disabled"] / median["log calls stubbed out"]
    overhead = 1.0 - ratio
    print(f"ratio disabled / stubbed: {ratio:.4f} (best), {median_ratio:.4f} (median)")
    print(f"overhead of disabled logging: {overhead * 100:+.2f} % "
          f"(budget {BUDGET * 100:.0f} %: {'within' if overhead < BUDGET else 'OVER'})")

if __name__ == "__main__":
    main()
