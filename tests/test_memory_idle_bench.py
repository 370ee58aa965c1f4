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

from tests.test_bench_smoke import NUMBER, table_row

ROOT = Path(__file__).resolve().parent.parent


def test_idle_benchmark_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.idle", "--conns", "120",
                           "--storm", "60", "--clients", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "utcp keepalive off" in out
    for name in ("utcp", "asyncio TCP"):
        cells = table_row(out, name)
        assert len(cells) == 7, cells
        assert all(re.fullmatch(NUMBER, c) for c in cells), cells
        assert cells[0] == "120", cells   # every idle connection held
        assert cells[5] == "0", cells     # no storm connect failed
