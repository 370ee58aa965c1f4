"""Tiny peer windows against the Linux stack (issue #11, item 5): a kernel receiver
with a tiny SO_RCVBUF offers less than two segments, and utcp must fill that window as
Linux's own sender does.

The reference is measured, not assumed: in the same namespace a kernel sender talks to
a kernel receiver with the same SO_RCVBUF (over `lo` with a 1500-byte MTU, the TUN's),
and `ss` reports the segment size Linux chose (`tcp_bound_to_half_wnd`: half the largest
window the receiver offered). Then utcp sends to such a receiver through the bridge:
its first flight fills the whole window offered in the SYN+ACK (before: one 1,388-byte
segment, the rest waiting a round trip), every data segment but the last is the size
the kernel used, none passes the window the kernel advertised, and every byte arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

import utcp
from tests.interop.bed import CONFIG, KernelBed, within
from tests.interop.bridge import ACK, K2U, KERNEL_IP, SYN, U2K

pytestmark = pytest.mark.timeout(120)

MOD = 1 << 32
TOTAL = 60_000
Accepted = asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


def listener(host: str, rcvbuf: int) -> socket.socket:
    """A kernel listener whose accepted sockets inherit a tiny receive buffer (set before
    listen(), so the window in its SYN+ACK already reflects it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((host, 0))
    sock.listen()
    sock.setblocking(False)
    return sock


async def read_all(reader: asyncio.StreamReader, n: int) -> bytes:
    data: bytes = await within(reader.readexactly(n), f"the kernel receiver to read {n} bytes")
    return data


async def kernel_reference(bed: KernelBed, rcvbuf: int) -> int:
    """The segment size Linux sends to a receiver with `rcvbuf`, from `ss -tin` of a
    kernel-to-kernel transfer."""
    bed.ns.ip("link", "set", "lo", "mtu", "1500")  # the TUN's MTU: the same MSS
    accepted: Accepted = asyncio.Queue()

    async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    with bed.ns.inside():
        lsock = listener("127.0.0.1", rcvbuf)
        server = await asyncio.start_server(on_accept, sock=lsock)
        port = lsock.getsockname()[1]
        _c_reader, c_writer = await within(asyncio.open_connection("127.0.0.1", port),
                                           "kernel connect to kernel")
        k_reader, k_writer = await within(accepted.get(), "kernel accept")
    try:
        c_writer.write(bytes(TOTAL))
        await read_all(k_reader, TOTAL)
        local = c_writer.get_extra_info("sockname")
        out = await bed.ss("-tin", "src", f"{local[0]}:{local[1]}")
        info = dict(tok.partition(":")[::2] for tok in out.split() if ":" in tok)
        return int(info["mss"])
    finally:
        for w in (c_writer, k_writer):
            w.transport.abort()
        server.close()


@pytest.mark.parametrize("rcvbuf", [1, 2048], ids=["rcvbuf-min", "rcvbuf-2048"])
async def test_utcp_fills_a_tiny_kernel_window_as_linux_does(bed: KernelBed,
                                                             rcvbuf: int) -> None:
    linux_mss = await kernel_reference(bed, rcvbuf)

    accepted: Accepted = asyncio.Queue()

    async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    with bed.ns.inside():
        lsock = listener(KERNEL_IP, rcvbuf)
        server = await asyncio.start_server(on_accept, sock=lsock)
        kport = lsock.getsockname()[1]
        udp_port = bed.bridge.expose(kport)
        _u_reader, u_writer = await within(
            utcp.open_connection("127.0.0.1", udp_port, config=CONFIG),
            "utcp connect to the kernel")
        k_reader, k_writer = await within(accepted.get(), "kernel accept")
    try:
        data = os.urandom(TOTAL)
        u_writer.write(data)
        got = await read_all(k_reader, TOTAL)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

        br = bed.bridge
        synack = br.syn(K2U, kport)
        assert synack.flags == SYN | ACK
        linux_wnd = synack.window  # never scaled in a SYN+ACK
        # Linux's own rule, as seen: less than two segments of window offered, and
        # segments of half of it
        assert linux_wnd < 2 * 1448 and linux_mss == linux_wnd // 2, (linux_mss, linux_wnd)
        iss = (synack.ack - 1) % MOD
        shift = synack.options.get("wscale", 0)
        edge = linux_wnd  # relative to iss + 1
        sent: list[tuple[int, int]] = []  # (offset, length) of each data segment
        first_flight = 0
        acked_data = False
        for seen in br.segments(kport=kport):
            if seen.flags & SYN:
                continue
            if seen.direction == K2U and seen.flags & ACK:
                rel = (seen.ack - iss - 1) % MOD
                acked_data = acked_data or rel > 0
                edge = max(edge, rel + (seen.window << shift))
            elif seen.direction == U2K and seen.length:
                offset = (seen.seq - iss - 1) % MOD
                # nothing past the window the kernel offered (it would be dropped)
                assert offset + seen.length <= edge, (seen, edge)
                sent.append((offset, seen.length))
                if not acked_data:
                    first_flight += seen.length
        # the whole offered window went out before the first ACK of data came back
        assert first_flight == linux_wnd, (first_flight, linux_wnd, sent[:4])
        # segments the size Linux uses; only the last may be smaller (no silly ones)
        new = sorted({off: n for off, n in sent}.items())
        sizes = [n for _, n in new]
        assert sum(sizes) == TOTAL
        assert all(n == linux_mss for n in sizes[:-1]), sorted(set(sizes))
        assert 0 < sizes[-1] <= linux_mss
    finally:
        u_writer.transport.abort()
        k_writer.transport.abort()
        server.close()
