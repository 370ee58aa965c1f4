"""A FIN and a shut Linux window: utcp holds the FIN, as Linux's own sender does.

A kernel receiver whose application reads nothing shuts its window. utcp sent its FIN
into that window once the data was out (Linux 6.18's receiver happens to take a bare FIN
there; a receiver that keeps to RFC 9293's acceptability test, utcp's own until now,
drops it, and utcp then resent it until `max_retransmissions` ended a live connection).
Here utcp fills the kernel's window exactly, half-closes, and must hold the FIN, probing
the window, until the kernel's application reads: then the FIN goes, once, and the
kernel reads every byte and the end of the stream.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

import utcp
from tests.interop.bed import CONFIG, TIMEOUT, KernelBed, until, within
from tests.interop.bridge import FIN, KERNEL_IP, U2K

pytestmark = pytest.mark.timeout(180)

ROUNDS = 400  # writes of what the window takes, until it shuts: a handful are needed


async def test_the_fin_waits_for_a_shut_kernel_window(bed: KernelBed) -> None:
    loop = asyncio.get_running_loop()
    with bed.ns.inside():
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lsock.bind((KERNEL_IP, 0))
        lsock.listen()
        lsock.setblocking(False)
        kport = lsock.getsockname()[1]
        udp_port = bed.bridge.expose(kport)
        _u_reader, u_writer = await within(
            utcp.open_connection("127.0.0.1", udp_port, config=CONFIG),
            "utcp connect to the kernel")
        ksock, _ = await within(loop.sock_accept(lsock), "kernel accept")
    try:
        conn = u_writer.get_extra_info("connection")
        sent = 0
        # the kernel's application reads nothing: write what its window takes, each
        # write acknowledged before the next, until an ACK shuts the window with
        # nothing of ours left unsent (the case that sent a FIN into it)
        for _ in range(ROUNDS):
            if conn.snd_wnd == 0:
                break
            n = min(conn.snd_wnd, 1000)
            u_writer.write(b"x" * n)
            sent += n
            await until(lambda: conn.unsent == 0 and conn.snd_una == conn.snd_max,
                        "utcp's data to be acknowledged")
        assert conn.snd_wnd == 0 and conn.unsent == 0, (conn.snd_wnd, conn.unsent)
        seen = len(bed.bridge.segments(U2K, kport))
        u_writer.write_eof()
        # the next segment of ours that crosses: a zero-window probe, not a FIN
        await until(lambda: len(bed.bridge.segments(U2K, kport)) > seen,
                    "utcp to send again after write_eof")
        assert conn.state is utcp.State.FIN_WAIT_1
        assert conn.snd_max == conn.snd_una  # the FIN is held
        assert not [s for s in bed.bridge.segments(U2K, kport) if s.flags & FIN]
        # the kernel's application reads at last: every byte, then the end of the stream
        got = 0
        while chunk := await within(loop.sock_recv(ksock, 65536), "the kernel to read"):
            got += len(chunk)
        assert got == sent
        await until(lambda: conn.state is utcp.State.FIN_WAIT_2, "the kernel to ACK our FIN",
                    timeout=TIMEOUT)
        fins = [s for s in bed.bridge.segments(U2K, kport) if s.flags & FIN]
        assert len(fins) == 1, fins  # sent once, into an open window, and taken
    finally:
        u_writer.transport.abort()
        ksock.close()
        lsock.close()
