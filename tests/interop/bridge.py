"""A UDP <-> TUN bridge that lets the Linux TCP stack talk to utcp.

The kernel side owns 10.77.0.1 on a TUN device (IFF_TUN | IFF_NO_PI) in a private
namespace; 10.77.0.2, on the far side of the TUN, is utcp's virtual address. Each
kernel-side TCP port K gets a UDP socket of its own on the namespace's 127.0.0.1
(created on demand when the kernel sends from a new port, e.g. a client's ephemeral
port, or up front with `expose(K)` for a kernel listener):

    utcp 127.0.0.1:U --UDP--> bridge socket for K  ==>  IPv4 10.77.0.2:U -> 10.77.0.1:K
    IPv4 10.77.0.1:K -> 10.77.0.2:U  ==>  bridge socket for K --UDP--> 127.0.0.1:U

The TCP segment itself passes unchanged but for the ports (the destination becomes K
towards the kernel; the source becomes the bridge socket's UDP port towards utcp, the
way a NAT rewrites it: docs/protocol.md §2) and the checksum (computed over the pseudo-header
towards the kernel, which checks it; sent as 0 towards utcp, as utcp sends it).

Every segment either way is recorded as a `Seen` (options parsed here, independently
of utcp's parser), and `filters` can drop chosen ones to force retransmissions.
"""

from __future__ import annotations

import array
import asyncio
import collections
import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.interop.netns import Netns

KERNEL_IP = "10.77.0.1"
UTCP_IP = "10.77.0.2"
TUN_NAME = "utun0"

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
K2U = "kernel->utcp"
U2K = "utcp->kernel"

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_PORT = struct.Struct("!H")
_PSEUDO = struct.Struct("!4s4sBBH")
_KERNEL_B = socket.inet_aton(KERNEL_IP)
_UTCP_B = socket.inet_aton(UTCP_IP)
BATCH = 256
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux; Python 3.11 lacks them
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_tun(ns: Netns, name: str = TUN_NAME, addr: str = f"{KERNEL_IP}/24") -> int:
    """Create a TUN device inside `ns` (the device lives while the fd is open)."""
    with ns.inside():  # /dev/net/tun binds the device to the opener's namespace
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
        ns.ip("addr", "add", addr, "dev", name)
        ns.ip("link", "set", name, "up")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sum16(data: bytes | bytearray) -> int:
    """RFC 1071 sum of 16-bit words, in native byte order (the order cancels out)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return sum(array.array("H", data))


def _finish(total: int) -> bytes:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("=H", ~total & 0xFFFF)


def checksum(data: bytes | bytearray) -> bytes:
    """The Internet checksum of `data`, as the two bytes to put on the wire."""
    return _finish(_sum16(data))


def ipv4_tcp_packet(src: bytes, dst: bytes, segment: bytearray, ident: int) -> bytes:
    """Wrap a TCP segment in an IPv4 header; fill in both checksums."""
    header = bytearray(_IP.pack(0x45, 0, 20 + len(segment), ident & 0xFFFF, 0x4000, 64,
                                socket.IPPROTO_TCP, 0, src, dst))
    header[10:12] = checksum(header)
    segment[16:18] = b"\0\0"
    pseudo = _PSEUDO.pack(src, dst, 0, socket.IPPROTO_TCP, len(segment))
    segment[16:18] = _finish(_sum16(pseudo) + _sum16(segment))
    return bytes(header) + bytes(segment)


def parse_options(raw: bytes) -> dict[str, Any]:
    """TCP options by name: mss, wscale, sack_permitted, sack, timestamps, kind<N>."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            out["malformed"] = True
            break
        length = raw[i + 1]
        body = raw[i + 2:i + length]
        if kind == 2 and length == 4:
            out["mss"] = int.from_bytes(body, "big")
        elif kind == 3 and length == 3:
            out["wscale"] = body[0]
        elif kind == 4 and length == 2:
            out["sack_permitted"] = True
        elif kind == 5:
            out["sack"] = [struct.unpack_from("!II", body, j) for j in range(0, len(body), 8)]
        elif kind == 8 and length == 10:
            out["timestamps"] = struct.unpack("!II", body)
        else:
            out[f"kind{kind}"] = bytes(body)
        i += length
    return out


@dataclass(slots=True)
class Seen:
    """One segment that crossed the bridge (or was dropped by it)."""

    direction: str        # K2U or U2K
    kport: int            # the kernel's TCP port
    uport: int            # utcp's UDP port (its TCP port as the kernel sees it)
    flags: int
    seq: int
    ack: int
    window: int
    length: int           # payload bytes
    options: dict[str, Any]
    time: float
    dropped: bool = False

    @property
    def seg_len(self) -> int:
        return self.length + bool(self.flags & SYN) + bool(self.flags & FIN)

    @property
    def pure_ack(self) -> bool:
        return self.flags == ACK and self.length == 0

    def flag_names(self) -> str:
        names = [n for bit, n in ((SYN, "SYN"), (ACK, "ACK"), (FIN, "FIN"), (RST, "RST"),
                                  (PSH, "PSH")) if self.flags & bit]
        return "|".join(names) or "-"

    def __repr__(self) -> str:
        return (f"<{self.direction} {self.kport}/{self.uport} {self.flag_names()} "
                f"seq={self.seq} ack={self.ack} len={self.length} win={self.window} "
                f"{self.options}{' DROPPED' if self.dropped else ''}>")


Filter = Callable[[Seen], bool]


def drop_nth_data(direction: str, *nths: int) -> Filter:
    """A filter dropping the n-th segment carrying data in `direction` (1-based), once."""
    wanted = set(nths)
    count = 0

    def f(seen: Seen) -> bool:
        nonlocal count
        if seen.direction != direction or not seen.length:
            return False
        count += 1
        return count in wanted
    return f


@dataclass
class Bridge:
    ns: Netns
    tun_fd: int
    loop: asyncio.AbstractEventLoop
    seen: list[Seen] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    _socks: dict[int, socket.socket] = field(default_factory=dict)
    _udp_port: dict[int, int] = field(default_factory=dict)
    _ident: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.loop.add_reader(self.tun_fd, self._on_tun)

    # ------------------------------------------------------------------ sockets

    def expose(self, kport: int) -> int:
        """The UDP port on 127.0.0.1 through which utcp reaches kernel port `kport`."""
        self._socket_for(kport)
        return self._udp_port[kport]

    def _socket_for(self, kport: int) -> socket.socket:
        sock = self._socks.get(kport)
        if sock is not None:
            return sock
        with self.ns.inside():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._socks[kport] = sock
        self._udp_port[kport] = sock.getsockname()[1]
        self.loop.add_reader(sock.fileno(), self._on_udp, kport, sock)
        return sock

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.tun_fd)
        for sock in self._socks.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    # ------------------------------------------------------------------ forwarding

    def _record(self, direction: str, kport: int, uport: int, seg: bytes | bytearray) -> Seen:
        _s, _d, seq, ack, off, flags, window, _c, _u = _TCP.unpack_from(seg, 0)
        hlen = (off >> 4) * 4
        seen = Seen(direction, kport, uport, flags, seq, ack, window, len(seg) - hlen,
                    parse_options(bytes(seg[20:hlen])) if hlen > 20 else {}, time.monotonic())
        for f in self.filters:
            if f(seen):
                seen.dropped = True
                self.counters[f"dropped {direction}"] += 1
                break
        self.seen.append(seen)
        return seen

    def _on_tun(self) -> None:
        for _ in range(BATCH):
            try:
                pkt = os.read(self.tun_fd, 65535)
            except (BlockingIOError, InterruptedError):
                return
            self._from_kernel(pkt)

    def _from_kernel(self, pkt: bytes) -> None:
        if len(pkt) < 40 or pkt[0] >> 4 != 4:
            self.counters["ignored: not IPv4/TCP"] += 1  # e.g. IPv6 router solicitations
            return
        ihl = (pkt[0] & 0x0F) * 4
        total = _PORT.unpack_from(pkt, 2)[0]
        if pkt[9] != socket.IPPROTO_TCP or pkt[16:20] != _UTCP_B or total > len(pkt):
            self.counters["ignored: not TCP to utcp"] += 1
            return
        seg = bytearray(pkt[ihl:total])
        kport, uport = struct.unpack_from("!HH", seg, 0)
        if self._record(K2U, kport, uport, seg).dropped:
            return
        sock = self._socket_for(kport)
        seg[0:2] = _PORT.pack(self._udp_port[kport])
        seg[16:18] = b"\0\0"  # docs/protocol.md §2: utcp sends and expects 0
        try:
            sock.sendto(seg, ("127.0.0.1", uport))
        except OSError as exc:
            self.counters[f"UDP send failed: {exc.__class__.__name__}"] += 1

    def _on_udp(self, kport: int, sock: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. a late ICMP error
                self.counters[f"UDP recv failed: {exc.__class__.__name__}"] += 1
                return
            if len(data) < 20 or (data[12] >> 4) * 4 > len(data):
                self.counters["ignored: short datagram"] += 1
                continue
            uport = addr[1]
            seg = bytearray(data)
            seg[0:4] = struct.pack("!HH", uport, kport)
            if self._record(U2K, kport, uport, seg).dropped:
                continue
            self._ident += 1
            try:
                os.write(self.tun_fd, ipv4_tcp_packet(_UTCP_B, _KERNEL_B, seg, self._ident))
            except OSError as exc:
                self.counters[f"TUN write failed: {exc.__class__.__name__}"] += 1

    # ------------------------------------------------------------------ queries

    def segments(self, direction: str | None = None, kport: int | None = None,
                 uport: int | None = None) -> list[Seen]:
        return [s for s in self.seen
                if (direction is None or s.direction == direction)
                and (kport is None or s.kport == kport) and (uport is None or s.uport == uport)]

    def syn(self, direction: str, kport: int | None = None) -> Seen:
        """The first SYN (or SYN+ACK) seen in `direction`."""
        for s in self.segments(direction, kport):
            if s.flags & SYN:
                return s
        raise AssertionError(f"no SYN seen {direction}: {self.segments(direction)[:5]}")

    def repeated_seqs(self, direction: str, kport: int | None = None) -> list[int]:
        """Sequence numbers of data (or FIN) segments seen more than once: retransmissions."""
        count = collections.Counter(s.seq for s in self.segments(direction, kport)
                                    if s.length or s.flags & FIN)
        return sorted(seq for seq, n in count.items() if n > 1)
