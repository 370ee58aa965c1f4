"""A tiny UDP rendezvous server for peer-to-peer utcp connections through NATs.

    python examples/rendezvous.py [--host 0.0.0.0] [--port 7000]

A peer sends the datagram `REGISTER <room>` from the UDP port it will connect from. The
server notes the address the datagram came from: behind a NAT, that is the peer's
*public* address and port, the NAT's mapping for that local port. When two peers have
registered in the same room, each gets `PEER <host> <port>`: the other's public address.
Both then connect to each other at once (examples/p2p_peer.py); their SYNs open the
NAT mappings on the way out, as TCP hole punching does, and utcp's simultaneous open
turns the crossing SYNs into one connection.

A peer repeats its REGISTER until it hears back; a repeat is answered again. Rooms are
forgotten after two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

ROOM_TTL = 120.0

Addr = tuple[str, int]


class Rendezvous(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.rooms: dict[str, tuple[float, list[Addr]]] = {}
        self.transport: Any = None  # asyncio's datagram transport (not a DatagramTransport
        # subclass in every Python version, so no isinstance check here)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        words = data.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "REGISTER":
            return
        room, peer = words[1], (str(addr[0]), int(addr[1]))
        now = time.monotonic()
        for name in [n for n, (t, _) in self.rooms.items() if now - t > ROOM_TTL]:
            del self.rooms[name]
        created, members = self.rooms.get(room, (now, []))
        if peer not in members:
            if len(members) >= 2:
                members = members[-1:]  # a third comer replaces the oldest
            members.append(peer)
            print(f"room {room}: {peer[0]}:{peer[1]} registered", flush=True)
        self.rooms[room] = (created, members)
        if len(members) == 2:
            a, b = members
            self.tell(a, b)
            self.tell(b, a)

    def tell(self, to: Addr, about: Addr) -> None:
        self.transport.sendto(f"PEER {about[0]} {about[1]}".encode(), to)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Rendezvous, local_addr=(host, port))
    print(f"rendezvous on udp {host} port {transport.get_extra_info('sockname')[1]}",
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=7000)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
