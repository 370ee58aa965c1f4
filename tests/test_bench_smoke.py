"""`python -m benchmarks` end to end with tiny sizes: utcp and asyncio TCP, default loop.

The harness spawns its own client and server processes, so it runs as a subprocess
here, exactly as a user would type it; the test checks the exit status and the table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--bytes", "1M", "--pings", "50", "--conns", "20", "--idle", "50", "--reps", "1",
        "--only", "utcp,tcp", "--loops", "default"]
NUMBER = r"\d+(?:\.\d+)?"


def table_row(out: str, name: str) -> list[str]:
    """The cells of the Markdown table row that starts with `name` (the benchmarks'
    tables); fails, showing the output, if there is none."""
    row = re.search(rf"^\| {re.escape(name)} \|(.*)\|$", out, re.M)
    assert row is not None, out
    return [c.strip() for c in row.group(1).split("|")]


@pytest.mark.timeout(30)
def test_benchmark_harness_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *ARGS], cwd=ROOT,
                          capture_output=True, text=True, timeout=28)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "### asyncio default loop" in out
    assert "### uvloop" not in out
    assert "| transport | bulk MB/s, 1400 B datagrams |" in out
    # every cell of both transports' rows is a number: each measurement ran
    for name in ("utcp", "asyncio TCP"):
        cells = table_row(out, name)
        assert len(cells) == 6, cells
        assert all(re.fullmatch(NUMBER, c) for c in cells), cells
    assert all(re.fullmatch(rf"{NUMBER}x", c) for c in table_row(out, "utcp / asyncio TCP"))
    assert "ERROR" not in out, out


@pytest.mark.timeout(60)
def test_core_benchmark_moves_the_stream_both_ways() -> None:
    """Both rows: datagrams glued as GSO/GRO hand them over, and one by one; each run
    checks the SHA-256 of what arrived (a corrupted stream fails the command)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.core", "--mib", "1", "--reps", "1",
                           "--mss", "1400"], cwd=ROOT, capture_output=True, text=True,
                          timeout=55)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for way in ("glued", "one by one"):
        row = re.search(rf"^\| 1400 \| {way} \|(.*)\|$", proc.stdout, re.M)
        assert row is not None, proc.stdout
        assert all(re.fullmatch(NUMBER.replace(r"\d+", r"[\d,]+"), c.strip())
                   for c in row.group(1).split("|")), row.group(0)


@pytest.mark.parametrize("mode", ["ping", "connect", "bulk", "bulk-max"])
@pytest.mark.timeout(60)
def test_instructions_loopback_driver_runs_each_mode(mode: str) -> None:
    """`python -m benchmarks.instructions --loopback`'s driver, without valgrind: the
    whole stack on loopback sockets ends cleanly (a bulk transfer the server did not
    confirm fails it), so the counted runs measure finished work."""
    from benchmarks.instructions import _LOOPBACK

    proc = subprocess.run([sys.executable, "-c", _LOOPBACK, mode, "3", ""], cwd=ROOT,
                          capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr  # no traceback from a callback or a finaliser


@pytest.mark.timeout(60)
def test_phases_benchmark_prints_each_phase() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.phases", "--conns", "5",
                           "--reps", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=55)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| transport | connect | request | close | sum |" in out
    for name in ("utcp", "asyncio TCP"):
        cells = table_row(out, name)
        assert len(cells) == 4 and all(re.fullmatch(NUMBER, c) for c in cells), cells
