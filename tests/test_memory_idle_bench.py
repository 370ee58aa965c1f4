"""`python -m benchmarks.idle` end to end with tiny counts: utcp and asyncio TCP.

It spawns its own server and client processes, so it runs as a subprocess here, as a
user would type it; the test checks the exit status, that every connection was held
and answered, and that each cell of the table is a number.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"\d+(?:\.\d+)?"


def test_idle_benchmark_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.idle", "--conns", "120",
                           "--storm", "60", "--clients", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "utcp keepalive off" in out
    for name in ("utcp", "asyncio TCP"):
        row = re.search(rf"^\| {re.escape(name)} \|(.*)\|$", out, re.M)
        assert row is not None, out
        cells = [c.strip() for c in row.group(1).split("|")]
        assert len(cells) == 7, row.group(0)
        assert all(re.fullmatch(NUMBER, c) for c in cells), row.group(0)
        assert cells[0] == "120", row.group(0)   # every idle connection held
        assert cells[5] == "0", row.group(0)     # no storm connect failed
