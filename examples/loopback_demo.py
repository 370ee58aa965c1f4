"""A loopback demo over real UDP sockets: echo server, then 16 MiB through it and back.

    python examples/loopback_demo.py [MEBIBYTES]

It prints the throughput, the SHA-256 check, and the connection's TCP_INFO-like
statistics, then closes both ends the way TCP does (FIN, ACK, FIN, ACK).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

import utcp


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 18):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main(mebibytes: int) -> None:
    server = await utcp.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await utcp.open_connection("127.0.0.1", port)
    payload = os.urandom(mebibytes << 20)
    start = time.perf_counter()

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(view), 1 << 18):
            writer.write(view[i:i + (1 << 18)])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 20):
        received.update(data)
        n += len(data)
    await sender
    elapsed = time.perf_counter() - start
    ok = received.digest() == hashlib.sha256(payload).digest()
    stats = writer.get_extra_info("stats")
    print(f"echoed {n >> 20} MiB through udp port {port} in {elapsed:.2f} s: "
          f"{2 * n / elapsed / 1e6:.1f} MB/s both ways, sha256 {'ok' if ok else 'MISMATCH'}")
    print(f"client: state {stats.state.name}, mss {stats.mss}, srtt {stats.srtt * 1e6:.0f} µs, "
          f"cwnd {stats.cwnd}, segments sent {stats.segments_sent}, "
          f"retransmitted {stats.segments_retransmitted}")
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 16))
