"""utcp against asyncio TCP, aioquic, qh3 and KCP (aiokcp) on loopback, in one run.

    python -m benchmarks [--bytes 64M] [--pings 2000] [--conns 200] [--idle 10000]
                         [--reps 3] [--loops default,uvloop] [--only utcp,tcp,...]

For each event loop (asyncio's default, then uvloop) a fresh client process runs every
measurement against servers in processes of their own (one per transport and datagram
profile, plus a fresh one for each idle-connection count), so client and server each
have a core. Repetitions are interleaved: repetition 1 of every measurement of every
transport, then repetition 2, and so on, so that machine noise hits all alike. The
tables give medians over the repetitions and the ratios utcp / peer.

- bulk MB/s: n bytes one way, from the first byte written to the receiver's SHA-256
  of all of them arriving back (checked), at 1400-byte datagrams and at the largest
  datagrams each transport uses on loopback (utcp: its default Config);
- ping-pong RTT: 64-byte messages echoed one at a time, median and p99 in µs;
- connect+close per second: sequential; open, a one-byte request and answer, close;
- idle memory: the server process's RSS growth (after a gc) divided by the number of
  connections it holds open, with up to `--idle` connections from one client process.

Transports that are not installed are skipped with a note (`pip install -e '.[bench]'`).
Slow transports are held to a time budget per measurement (`--ping-time`,
`--conn-time`, `--idle-time`): they report what they reached within it.
"""

from __future__ import annotations

import sys

from benchmarks.peers.harness import main

if __name__ == "__main__":
    sys.exit(main())
