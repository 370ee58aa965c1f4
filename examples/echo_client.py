"""An echo client: asyncio's stream API, with `utcp.` where `asyncio.` was.

    python examples/echo_client.py [PORT] [MESSAGE]
"""

from __future__ import annotations

import asyncio
import sys

import utcp


async def main(port: int, message: str) -> None:
    reader, writer = await utcp.open_connection("127.0.0.1", port)  # was: asyncio.open_...
    writer.write(message.encode())
    writer.write_eof()                       # half-close: we still read the echo
    echoed = await reader.read()
    print(echoed.decode())
    stats = writer.get_extra_info("stats")
    print(f"state {writer.get_extra_info('state').name}, srtt {stats.srtt * 1e6:.0f} µs,"
          f" {stats.segments_sent} segments sent", file=sys.stderr)
    writer.close()
    await writer.wait_closed()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8888,
                     sys.argv[2] if len(sys.argv) > 2 else "hello over utcp"))
