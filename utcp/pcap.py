"""Write what a UDP port sends and receives as a pcap of ordinary TCP/IP packets.

Each datagram already is a TCP segment (docs/protocol.md §2); adding an IPv4 or IPv6 header made
from the UDP addresses, and filling in the TCP checksum that utcp sends as 0, gives
packets that Wireshark and tshark dissect as plain TCP (LINKTYPE_RAW, so no link layer
needs inventing). The TCP ports written are the UDP ports too: through a NAT the
header's ports are the ones the sender knew, and the capture must show one connection as
one conversation, as the receiver itself identifies it by UDP address. Several ports
may share one file: writers are shared per path.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import struct
import threading
from typing import Any, BinaryIO

LINKTYPE_RAW = 101
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_PROTO_TCP = 6


def ones_complement_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_checksum(segment: bytes | bytearray, src: bytes, dst: bytes) -> int:
    """RFC 9293 §3.1 (and RFC 8200 §8.1 for IPv6): over a pseudo-header and the segment."""
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, _PROTO_TCP, len(segment))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(segment), _PROTO_TCP)
    return ~ones_complement_sum(pseudo + bytes(segment)) & 0xFFFF


def _packed(host: Any, family_hint: int) -> bytes:
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        ip = ipaddress.ip_address("0.0.0.0" if family_hint == 4 else "::")
    if family_hint == 6 and ip.version == 4:
        ip = ipaddress.IPv6Address(f"::ffff:{ip}")
    return ip.packed


def ip_packet(segment: bytes | bytearray | memoryview, src: Any, dst: Any) -> bytes:
    """Wrap one segment in the IP header its UDP addresses describe, checksums correct."""
    seg = bytearray(segment)
    v6 = ":" in str(src[0]) or ":" in str(dst[0])
    s = _packed(src[0], 6 if v6 else 4)
    d = _packed(dst[0], 6 if v6 else 4)
    if len(seg) >= 4:
        # The ports too come from the UDP addresses: a NAT between the peers rewrites UDP
        # ports, not the header's copy, and one connection must read as one conversation.
        seg[0:4] = _PORTS.pack(int(src[1]) & 0xFFFF, int(dst[1]) & 0xFFFF)
    if len(seg) >= 18:
        seg[16:18] = b"\0\0"
        seg[16:18] = struct.pack("!H", tcp_checksum(seg, s, d))
    if v6:
        return _IPV6.pack(6 << 28, len(seg), _PROTO_TCP, 64, s, d) + seg
    header = bytearray(_IPV4.pack(0x45, 0, 20 + len(seg), 0, 0x4000, 64, _PROTO_TCP, 0, s, d))
    header[10:12] = struct.pack("!H", ~ones_complement_sum(header) & 0xFFFF)
    return bytes(header) + seg


class PcapWriter:
    """A pcap file; `write` takes a segment with the UDP source and destination."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535 + 60, LINKTYPE_RAW))
        self._users = 0
        self._local_ports: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self.packets = 0

    def write(self, segment: bytes | bytearray | memoryview, src: Any, dst: Any,
              timestamp: float) -> None:
        if self._file is None:
            return
        packet = ip_packet(segment, src, dst)
        sec = int(timestamp)
        usec = int((timestamp - sec) * 1e6)
        with self._lock:
            self._file.write(_RECORD.pack(sec, usec, len(packet), len(packet)))
            self._file.write(packet)
            self.packets += 1

    def write_received(self, segment: bytes | bytearray | memoryview, src: Any, dst: Any,
                       timestamp: float) -> None:
        """Record a received datagram unless one of this file's own ports sent it.

        Two ends of a connection in one process (utcp perf, tests) share the file, and the
        sender has already recorded the segment: a second copy would read as a
        retransmission in Wireshark.
        """
        if self._local_ports[int(src[1])] and _is_local(src[0]):
            return
        self.write(segment, src, dst, timestamp)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_writers: dict[str, PcapWriter] = {}


def _is_local(host: Any) -> bool:
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def acquire(path: str | os.PathLike[str], local_port: int = 0) -> PcapWriter:
    """The shared writer for `path`, opened (and truncated) by its first user."""
    key = os.path.abspath(os.fspath(path))
    writer = _writers.get(key)
    if writer is None or writer._file is None:
        writer = _writers[key] = PcapWriter(key)
    writer._users += 1
    writer._local_ports[local_port] += 1
    return writer


def release(writer: PcapWriter, local_port: int = 0) -> None:
    writer._users -= 1
    writer._local_ports[local_port] -= 1
    if writer._users <= 0:
        writer.close()
        _writers.pop(os.path.abspath(writer.path), None)
    else:
        writer.flush()
