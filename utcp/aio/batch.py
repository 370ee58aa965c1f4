"""Linux UDP segmentation offloads: many datagrams per system call.

GSO (`UDP_SEGMENT`, 103): one `sendmsg` carries a buffer the kernel cuts into datagrams
of one size (the last may be shorter), at most 64 of them and 64 KiB in all.
GRO (`UDP_GRO`, 104): one `recvmsg` returns several datagrams of one size glued together,
with that size in a control message. Both work on loopback; each is detected once per
socket, and a kernel without them gets the plain one-datagram-per-call path.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from typing import Any

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000           # below the 65507-byte limit of one IPv4 UDP payload
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")

# Flipped by tests (and users chasing a kernel bug) to force the plain paths.
GSO_ALLOWED = True
GRO_ALLOWED = True


def probe_gso(sock: socket.socket) -> bool:
    """True if the kernel accepts UDP_SEGMENT on this socket."""
    if not GSO_ALLOWED or not hasattr(sock, "sendmsg"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # 0 = no default size: only per call
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    if not GRO_ALLOWED or not hasattr(sock, "recvmsg_into"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The size the kernel glued datagrams at, or 0 when it returned just one.

    A size that cannot be one (0 or negative) reads as 0: the caller then takes what it
    received as a single datagram, never loops with a step of 0.
    """
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return max(0, int(_I32.unpack_from(data)[0]))
    return 0


def gro_pieces(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(begin, end) of each datagram in `n` bytes glued at `size` (0: just one).

    An empty datagram (n == 0) is still one datagram, so the endpoint counts it as a
    malformed drop: UDP allows a zero-length payload, and anyone can send one.
    """
    if size <= 0 or size >= n:
        yield 0, n
        return
    for off in range(0, n, size):
        yield off, min(off + size, n)


def gso_batches(datagrams: list[tuple[bytes, Any]], start: int = 0,
                ) -> Iterator[tuple[int, int, int]]:
    """Split `datagrams[start:]` into runs one GSO send can carry: (begin, end, size).

    A run is consecutive datagrams to one address, all of one size but the last, which
    may be shorter; size 0 marks a lone datagram to send plainly.
    """
    i, n = start, len(datagrams)
    while i < n:
        data, addr = datagrams[i]
        size = len(data)
        total = size
        j = i + 1
        while j < n and j - i < GSO_MAX_SEGMENTS:
            d2, a2 = datagrams[j]
            k = len(d2)
            if a2 != addr or k > size or total + k > GSO_MAX_BYTES:
                break
            total += k
            j += 1
            if k < size:
                break  # a shorter one can only close a run
        yield i, j, (size if j - i > 1 else 0)
        i = j


def gso_unsupported(exc: OSError) -> bool:
    """Errors that mean this path (device, route) cannot segment: fall back for good."""
    return exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT)


def gso_control(size: int) -> list[tuple[int, int, bytes]]:
    return [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
