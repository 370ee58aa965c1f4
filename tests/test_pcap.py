"""`Config(pcap=...)`: captures that tshark reads as plain, valid TCP/IP.

Unit tests check `utcp.pcap`'s checksums against known-good values (RFC 1071's example,
a textbook IPv4 header) and against an independent implementation written here. The
capture test runs a real transfer over loopback through a lossy UDP relay (every 20th
datagram dropped in each direction, deterministically) with the client writing the pcap,
then asks tshark whether every packet is TCP, nothing is malformed, the checksums are
valid, and the retransmissions it finds are exactly the ones the client counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

import utcp
from utcp import pcap, wire

HOST = "127.0.0.1"
TIMEOUT = 60.0


# ---------------------------------------------------------------------- an independent checksum

def reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: add 16-bit words with end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def reference_pseudo_header(src: str, dst: str, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + bytes([0, 6]) + length.to_bytes(2, "big")
    return s.packed + d.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, 6])


def some_segment(payload_len: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return wire.build(wire.Segment(
        40000, 5201, rng.getrandbits(32), rng.getrandbits(32), wire.ACK | wire.PSH,
        rng.getrandbits(16), payload=rng.randbytes(payload_len),
        options=wire.Options(mss=1400, wscale=7)))


# ---------------------------------------------------------------------- unit tests

def test_ones_complement_sum_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d)
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert pcap.ones_complement_sum(data) == 0xDDF2
    assert reference_checksum(data) == 0x220D


def test_ipv4_header_checksum_known_value() -> None:
    # A well-known IPv4 header (192.168.0.1 -> 192.168.0.199, UDP): checksum b861
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ~pcap.ones_complement_sum(header) & 0xFFFF == 0xB861


@pytest.mark.parametrize("payload_len", [0, 1, 1399, 1400])
@pytest.mark.parametrize(("src", "dst"), [("10.1.2.3", "192.0.2.200"), ("::1", "2001:db8::7")])
def test_tcp_checksum_matches_independent_implementation(payload_len: int, src: str,
                                                         dst: str) -> None:
    seg = some_segment(payload_len, seed=payload_len)
    assert seg[16:18] == b"\0\0"  # utcp sends 0 (docs/protocol.md §2)
    expected = reference_checksum(reference_pseudo_header(src, dst, len(seg)) + seg)
    got = pcap.tcp_checksum(seg, ipaddress.ip_address(src).packed,
                            ipaddress.ip_address(dst).packed)
    assert got == expected


def test_ipv4_packet_is_well_formed() -> None:
    seg = some_segment(333)
    packet = pcap.ip_packet(seg, ("10.0.0.1", 1111), ("10.0.0.2", 2222))
    (ver_ihl, _tos, total, _ident, frag, ttl, proto, _csum, s, d) = struct.unpack(
        "!BBHHHBBH4s4s", packet[:20])
    assert ver_ihl == 0x45 and total == len(packet) == 20 + len(seg)
    assert frag == 0x4000 and ttl == 64 and proto == 6  # DF, TCP
    assert s == bytes([10, 0, 0, 1]) and d == bytes([10, 0, 0, 2])
    assert reference_checksum(packet[:20]) == 0  # a valid header sums to all ones
    tcp = packet[20:]
    # the ports are the UDP ports; everything but ports and checksum is the segment as sent
    assert struct.unpack("!HH", tcp[:4]) == (1111, 2222)
    assert tcp[4:16] == seg[4:16] and tcp[18:] == seg[18:]
    assert reference_checksum(reference_pseudo_header("10.0.0.1", "10.0.0.2", len(tcp))
                              + tcp) == 0


def test_ipv6_packet_is_well_formed() -> None:
    seg = some_segment(101)
    packet = pcap.ip_packet(seg, ("::1", 1111, 0, 0), ("fe80::2%lo", 2222, 0, 1))
    first, plen, nxt, hops, s, d = struct.unpack("!IHBB16s16s", packet[:40])
    assert first >> 28 == 6 and plen == len(seg) and nxt == 6 and hops == 64
    assert s == ipaddress.ip_address("::1").packed
    assert d == ipaddress.ip_address("fe80::2").packed  # the scope is not an address
    tcp = packet[40:]
    assert reference_checksum(reference_pseudo_header("::1", "fe80::2", len(tcp)) + tcp) == 0


def test_ipv4_mapped_when_the_other_end_is_ipv6() -> None:
    packet = pcap.ip_packet(some_segment(10), ("127.0.0.1", 1), ("::1", 2))
    assert packet[0] >> 4 == 6
    assert packet[8:24] == ipaddress.ip_address("::ffff:127.0.0.1").packed


def test_writer_file_format(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    writer = pcap.acquire(path, 1111)
    try:
        assert pcap.acquire(path, 2222) is writer  # shared per path
        writer.write(some_segment(10), ("10.0.0.1", 1111), ("10.0.0.2", 2222), 1700000000.25)
        # a datagram one of the file's own ports sent is recorded once, by the sender
        writer.write_received(some_segment(10), ("127.0.0.1", 1111), ("127.0.0.1", 2222), 1.0)
        writer.write_received(some_segment(20), ("127.0.0.1", 3333), ("127.0.0.1", 2222), 2.0)
        pcap.release(writer, 2222)
        assert writer.packets == 2
    finally:
        pcap.release(writer, 1111)
    data = path.read_bytes()
    magic, major, minor, _tz, _sig, snaplen, linktype = struct.unpack("<IHHiIII", data[:24])
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, pcap.LINKTYPE_RAW)
    assert snaplen >= 65535
    sec, usec, incl, orig = struct.unpack("<IIII", data[24:40])
    assert (sec, usec) == (1700000000, 250000) and incl == orig == 20 + len(some_segment(10))
    second = 40 + incl
    _, _, incl2, _ = struct.unpack("<IIII", data[second:second + 16])
    assert second + 16 + incl2 == len(data)


# ---------------------------------------------------------------------- a lossy relay

class LossyRelay:
    """client <-> [front | relay | back] <-> server, dropping every `every`-th datagram
    (none when 0) and, with `max_size`, every datagram longer than that.

    Both directions count separately; `drop_first` drops the client's first datagram (the
    SYN) too, so the count includes a SYN retransmission. The UDP ports change on the way
    through, as behind a NAT; the TCP header's ports are left alone.
    """

    def __init__(self, server_port: int, every: int = 20, drop_first: bool = True,
                 max_size: int | None = None) -> None:
        self.server = (HOST, server_port)
        self.every = every
        self.drop_first = drop_first
        self.max_size = max_size
        self.count = {"c2s": 0, "s2c": 0}
        self.dropped = {"c2s": 0, "s2c": 0}
        self.client: Any = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.client = addr
                relay.forward("c2s", data)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.forward("s2c", data)

        self.front, _ = await loop.create_datagram_endpoint(Front, local_addr=(HOST, 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=(HOST, 0))
        port: int = self.front.get_extra_info("sockname")[1]
        return port

    def forward(self, direction: str, data: bytes) -> None:
        self.count[direction] += 1
        n = self.count[direction]
        if (self.every and n % self.every == 0) or (
                self.drop_first and direction == "c2s" and n == 1) or (
                self.max_size is not None and len(data) > self.max_size):
            self.dropped[direction] += 1
            return
        if direction == "c2s":
            assert self.back is not None
            self.back.sendto(data, self.server)
        elif self.client is not None:
            assert self.front is not None
            self.front.sendto(data, self.client)

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()


async def lossy_transfer(path: Path, nbytes: int) -> tuple[int, int, utcp.Stats, LossyRelay]:
    """Client sends `nbytes` through the relay, writing `path`; returns its port and stats."""
    data = random.Random(7).randbytes(nbytes)
    digest = hashlib.sha256()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 16):
            digest.update(chunk)
        writer.write(digest.digest())
        writer.close()

    # TIME_WAIT (2 x msl) outlasts the server's FIN retransmission timeout, for when the
    # relay drops the client's last ACK
    # segments of the base size (on loopback a connection would start at 64 KiB): a few
    # megabytes make thousands of them, for the relay's losses to hit many
    cfg = utcp.Config(msl=0.5, rto_initial=0.2, pmtu_probing=False)
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(sink, HOST, 0, config=cfg)
        relay = LossyRelay(server.sockets[0].getsockname()[1])
        try:
            relay_port = await relay.start()
            reader, writer = await utcp.open_connection(HOST, relay_port,
                                                        config=cfg.replace(pcap=str(path)))
            client_port = writer.get_extra_info("sockname")[1]
            writer.write(data)
            writer.write_eof()
            assert await reader.read() == hashlib.sha256(data).digest()
            writer.close()
            await writer.wait_closed()
            while writer.get_extra_info("state") != utcp.State.CLOSED:  # TIME_WAIT: 1 s
                await asyncio.sleep(0.02)
            stats: utcp.Stats = writer.get_extra_info("stats")
            server.close()
            await server.wait_closed()
        finally:
            relay.close()
            server.close()
    return client_port, relay_port, stats, relay


def tshark(path: Path, client_port: int, *args: str) -> list[str]:
    exe = shutil.which("tshark")
    assert exe is not None
    result = subprocess.run(
        [exe, "-r", str(path), "-n",
         "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.analyze_sequence_numbers:TRUE",
         # the payload is random bytes: no application dissector may guess at it
         "-d", f"tcp.port=={client_port},data", *args],
        capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("tshark") is None,
                    reason="tshark is not installed (apt-get install tshark); CI installs it")
def test_capture_with_loss_reads_as_valid_tcp(tmp_path: Path) -> None:
    path = tmp_path / "client.pcap"
    client_port, relay_port, stats, relay = asyncio.run(lossy_transfer(path, 3 << 20))
    assert relay.dropped["c2s"] > 50 and relay.dropped["s2c"] > 10
    assert stats.segments_retransmitted >= relay.dropped["c2s"] > 0

    rows = [line.split("\t") for line in tshark(
        path, client_port, "-T", "fields", "-E", "occurrence=f",
        "-e", "frame.protocols", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
        "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "_ws.malformed")]
    # everything the client sent, and everything that reached it, is in the file
    assert len(rows) == stats.segments_sent + stats.segments_received
    for protocols, ip_ok, tcp_ok, sport, dport, *malformed in rows:
        assert protocols.startswith("raw:ip:tcp"), protocols
        assert ip_ok == "1" and tcp_ok == "1", (ip_ok, tcp_ok)  # 1 = "Good"
        assert {int(sport), int(dport)} == {client_port, relay_port}  # one conversation
        assert not any(m.strip() for m in malformed)
    assert tshark(path, client_port, "-Y", "_ws.malformed || _ws.expert.severity == error") == []

    # The client's retransmissions as tshark classifies them. A resend within one
    # handshake RTT of the newest segment is called "out-of-order" by Wireshark (it cannot
    # tell from the sender's side), and a sender never reorders its own segments, so that
    # flag counts as a retransmission here too; nothing else is tolerated.
    found = tshark(path, client_port, "-Y", (
        f"tcp.srcport == {client_port} && (tcp.analysis.retransmission"
        " || tcp.analysis.fast_retransmission || tcp.analysis.spurious_retransmission"
        " || tcp.analysis.out_of_order)"), "-T", "fields", "-e", "frame.number")
    assert len(found) == stats.segments_retransmitted, (len(found), stats)
    syn_resent = tshark(path, client_port, "-Y", (
        f"tcp.srcport == {client_port} && tcp.flags.syn == 1"), "-T", "fields",
        "-e", "frame.number")
    assert len(syn_resent) >= 2  # the relay dropped the first SYN
