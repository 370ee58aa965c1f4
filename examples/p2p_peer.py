"""A peer-to-peer utcp connection between two hosts behind NATs: simultaneous open.

    python examples/rendezvous.py --port 7000                   # somewhere public
    python examples/p2p_peer.py RV_HOST 7000 ROOM --name alice  # on one host
    python examples/p2p_peer.py RV_HOST 7000 ROOM --name bob    # on the other

1. The peer binds a UDP port and registers with the rendezvous server from it, so the
   server sees (and the NAT maps) exactly the port the connection will use.
2. The server answers each peer with the other's public address.
3. The peer closes its registration socket and, at once, calls
   `utcp.open_connection(peer_host, peer_port, local_addr=(its own bound address))`.
   Neither side listens: both send SYN. Each outgoing SYN opens the sender's NAT for
   the other's address; a SYN that arrives at a peer still in SYN_SENT moves it to
   SYN_RCVD (RFC 9293's simultaneous open), and the handshake completes with one
   connection. A SYN that is lost on the way (the other NAT not yet open, or the other
   peer not yet bound) is simply retransmitted: with `local_addr`, an ICMP
   port-unreachable does not end the connect.

The peers then swap one line each and close; the states the connection passed through
are printed (read from utcp's own event log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from typing import Any

import structlog

import utcp
from utcp import log

REGISTER_EVERY = 0.5
REGISTER_TIMEOUT = 60.0


def rendezvous(sock: socket.socket, server: tuple[str, int], room: str) -> tuple[str, int]:
    """REGISTER until the server answers with `PEER host port`; ignore anything else."""
    server_ip = socket.getaddrinfo(server[0], server[1], sock.family, socket.SOCK_DGRAM)[0][4]
    sock.settimeout(REGISTER_EVERY)
    waited = 0.0
    while waited < REGISTER_TIMEOUT:
        sock.sendto(f"REGISTER {room}".encode(), server_ip)
        try:
            while True:
                data, addr = sock.recvfrom(2048)
                words = data.decode(errors="replace").split()
                if addr[:2] == server_ip[:2] and len(words) == 3 and words[0] == "PEER":
                    return words[1], int(words[2])
                # anything else (an early SYN from the peer, say) is dropped: it is resent
        except (TimeoutError, ConnectionRefusedError):
            waited += REGISTER_EVERY
    raise TimeoutError(f"no peer registered in room {room!r} within {REGISTER_TIMEOUT:.0f} s")


class StatePath:
    """A structlog processor keeping the state changes utcp logs (utcp.log)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, str]] = []

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> Any:
        if event.get("event") == "state":
            self.steps.append((event["conn"], event["old"], event["new"]))
        raise structlog.DropEvent

    def path(self, conn: str) -> str:
        steps = [(old, new) for c, old, new in self.steps if c == conn]
        return " -> ".join([steps[0][0], *(new for _, new in steps)]) if steps else "?"


async def main(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.bind, args.port))
    local = sock.getsockname()
    print(f"{args.name}: registering from udp {local[0]}:{local[1]} in room {args.room}",
          flush=True)
    try:
        peer = await asyncio.to_thread(rendezvous, sock, (args.server, args.server_port),
                                       args.room)
    finally:
        sock.close()  # utcp binds the same port next (it sets SO_REUSEADDR too)
    print(f"{args.name}: peer is at {peer[0]}:{peer[1]}; connecting", flush=True)

    states = StatePath()
    log.configure(processors=[states])
    try:
        reader, writer = await utcp.open_connection(peer[0], peer[1],
                                                    local_addr=(args.bind, local[1]))
        conn = writer.get_extra_info("connection").name
        print(f"{args.name}: connected: {states.path(conn)}", flush=True)
        writer.write(f"hello from {args.name}\n".encode())
        writer.write_eof()
        line = await reader.readline()
        print(f"{args.name}: peer says: {line.decode(errors='replace').strip()}", flush=True)
        await reader.read()  # the peer's FIN
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        print(f"{args.name}: closed: {states.path(conn)}", flush=True)
    finally:
        log.disable()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("server", help="rendezvous server host")
    ap.add_argument("server_port", type=int)
    ap.add_argument("room", help="a name both peers agree on")
    ap.add_argument("--name", default="peer")
    ap.add_argument("--bind", default="0.0.0.0", help="local address (default all)")
    ap.add_argument("--port", type=int, default=0, help="local UDP port (default any)")
    try:
        sys.exit(asyncio.run(main(ap.parse_args())))
    except (OSError, TimeoutError) as exc:
        sys.exit(f"p2p_peer: {exc}")
    except KeyboardInterrupt:
        pass
