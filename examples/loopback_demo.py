"""Move 8 MiB between two utcp endpoints over a simulated-free in-process loop.

Until the asyncio adapter lands this drives the sans-IO core directly: both
endpoints live in one process and pass datagrams by hand, which is exactly what
the core is built for.
"""

from __future__ import annotations

import hashlib
import os
import time

from utcp.config import Config
from utcp.endpoint import Endpoint
from utcp.state import State


def main() -> None:
    size = 8 << 20
    data = os.urandom(size)
    server = Endpoint(Config(), 5000, listening=True)
    client = Endpoint(Config(), 6000)
    conn = client.connect(("127.0.0.1", 5000), 0.0)
    peer = None
    received = bytearray()
    start = time.perf_counter()
    sent = False
    while True:
        now = time.perf_counter() - start
        for datagram, _addr in client.datagrams_to_send(now):
            server.receive_datagram(datagram, ("127.0.0.1", 6000), now)
        for datagram, _addr in server.datagrams_to_send(now):
            client.receive_datagram(datagram, ("127.0.0.1", 5000), now)
        peer = peer or server.accept()
        if conn.state == State.ESTABLISHED and not sent:
            conn.send(data)
            conn.close()
            sent = True
        if peer is not None:
            received += peer.read()
            if peer.eof_received:
                break
        for ep in (client, server):
            deadline = ep.get_timer()
            if deadline is not None and deadline <= now:
                ep.handle_timer(now)
    elapsed = time.perf_counter() - start
    ok = hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    print(f"moved {len(received)} bytes in {elapsed:.2f} s"
          f" ({len(received) / elapsed / 1e6:.1f} MB/s), sha256 {'ok' if ok else 'MISMATCH'}")


if __name__ == "__main__":
    main()
