"""From a capture (and sampled stats) to the series `utcp plot` draws; no matplotlib here.

The analysis is kept apart from the drawing so that it is tested on its own and costs
nothing to import. It reads the pcap files `Config(pcap=...)` writes (utcp/pcap.py:
LINKTYPE_RAW, IPv4 or IPv6 plus a TCP header) and, for other tools' captures, Ethernet,
Linux cooked (SLL) and the per-family raw link types too, in either byte order and with
micro- or nanosecond stamps. Everything is read with `struct`: no dependency beyond utcp.

The series follow tcptrace's time-sequence graph (Shepard, "TCP Packet Trace Analysis",
MIT/LCS/TR-494; Stevens, TCP/IP Illustrated vol. 1, ch. 21): each data segment a vertical
bar from its first to its last sequence number at the time it was sent, the cumulative
ACK as a step line, the ACK plus the advertised window (RFC 7323 §2.3 scaling from the
SYNs) as the line the sender may not cross, SACK blocks, and retransmissions marked. A
segment is a retransmission when it starts below the highest sequence number already
sent, the very test `Connection` counts `segments_retransmitted` by, so the two agree on
a capture taken at the sender.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ipaddress
import math
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from utcp import wire

_GLOBAL = struct.Struct("IHHiIII")
_RECORD = struct.Struct("IIII")
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
# link types (https://www.tcpdump.org/linktypes.html) -> bytes of link header before IP
_LINK_HEADER = {1: 14, 101: 0, 113: 16, 228: 0, 229: 0, 12: 0}
_MAX_RECORD = 1 << 18  # larger than any snaplen in use: a bigger length is a corrupt file

Address = tuple[str, int]


class CaptureError(Exception):
    """The file is not a pcap this module reads (a one-line reason for the user)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One TCP segment from a capture; `seq` and `ack` are the 32-bit wire values."""

    time: float
    src: Address
    dst: Address
    seq: int
    ack: int
    flags: int
    window: int
    length: int  # payload bytes
    wscale: int | None
    sack: tuple[tuple[int, int], ...]


@dataclass
class Capture:
    packets: list[Packet]
    skipped: int = 0  # records that are not TCP over IP, or are cut short: counted drops


def read_pcap(path: str | os.PathLike[str]) -> Capture:
    """Every TCP segment in the file, in file order; anything else is skipped and counted.

    Read record by record: a long run's capture holds every byte sent (gigabytes), of
    which only the headers are kept.
    """
    with open(path, "rb") as f:
        return _read(f)


def _read(f: BinaryIO) -> Capture:
    data = f.read(_GLOBAL.size)
    if len(data) < _GLOBAL.size:
        raise CaptureError("too short for a pcap file")
    magic = int.from_bytes(data[:4], "little")
    if magic in (_MAGIC_US, _MAGIC_NS):
        order = "<"
    elif int.from_bytes(data[:4], "big") in (_MAGIC_US, _MAGIC_NS):
        order, magic = ">", int.from_bytes(data[:4], "big")
    elif data[:4] == b"\x0a\x0d\x0d\x0a":
        raise CaptureError("a pcapng file: convert it first (editcap -F pcap IN OUT)")
    else:
        raise CaptureError("not a pcap file")
    scale = 1e-9 if magic == _MAGIC_NS else 1e-6
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    if linktype not in _LINK_HEADER:
        raise CaptureError(f"link type {linktype} is not one this reads (raw IP, Ethernet, "
                           "Linux cooked)")
    link = _LINK_HEADER[linktype]
    record = struct.Struct(order + _RECORD.format)
    capture = Capture([])
    while len(head := f.read(record.size)) == record.size:
        sec, frac, incl, _orig = record.unpack(head)
        if incl > _MAX_RECORD:
            capture.skipped += 1
            break  # the rest cannot be framed
        frame = f.read(incl)
        if len(frame) < incl:
            capture.skipped += 1
            break  # the file ends inside this record (a capture still being written)
        packet = _packet(memoryview(frame), link, linktype, sec + frac * scale)
        if packet is None:
            capture.skipped += 1
        else:
            capture.packets.append(packet)
    return capture


def _packet(frame: memoryview, link: int, linktype: int, when: float) -> Packet | None:
    if linktype == 1 and len(frame) >= 14:
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == 0x8100 and len(frame) >= 18:  # one 802.1Q tag
            link += 4
    ip = frame[link:]
    if len(ip) < 20:
        return None
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 0xF) * 4
        total = int.from_bytes(ip[2:4], "big")
        if ihl < 20 or ip[9] != 6 or int.from_bytes(ip[6:8], "big") & 0x1FFF:
            return None  # not TCP, or a later fragment
        src = str(ipaddress.IPv4Address(bytes(ip[12:16])))
        dst = str(ipaddress.IPv4Address(bytes(ip[16:20])))
        claimed = total - ihl
    elif version == 6 and len(ip) >= 40:
        if ip[6] != 6:
            return None  # extension headers: not what utcp or Linux puts before TCP
        src = str(ipaddress.IPv6Address(bytes(ip[8:24])))
        dst = str(ipaddress.IPv6Address(bytes(ip[24:40])))
        claimed = int.from_bytes(ip[4:6], "big")
        ihl = 40
    else:
        return None
    # The IP header's length, not the bytes captured, says how long the segment was: a
    # capture cut at a snap length (tcpdump -s 128) keeps the headers and counts right.
    tcp = ip[ihl:ihl + max(claimed, 0)]
    hlen = (tcp[12] >> 4) * 4 if len(tcp) > 12 else 0
    if claimed < hlen or len(tcp) < hlen:
        return None
    try:
        seg = wire.parse(tcp[:hlen])
    except (wire.MalformedSegment, ValueError, struct.error):
        return None
    return Packet(when, (src, seg.src_port), (dst, seg.dst_port), seg.seq, seg.ack,
                  seg.flags, seg.window, claimed - hlen, seg.options.wscale,
                  seg.options.sack)


# ---------------------------------------------------------------------- connections

@dataclass
class Conversation:
    """The packets of one 4-tuple, both ways."""

    a: Address
    b: Address
    packets: list[Packet] = field(default_factory=list)

    def payload(self, src: Address) -> int:
        return sum(p.length for p in self.packets if p.src == src)


def conversations(capture: Capture) -> list[Conversation]:
    """The 4-tuples in the capture, the one carrying most payload first."""
    found: dict[frozenset[Address], Conversation] = {}
    for p in capture.packets:
        key = frozenset((p.src, p.dst))
        conv = found.get(key)
        if conv is None:
            conv = found[key] = Conversation(p.src, p.dst)
        conv.packets.append(p)
    return sorted(found.values(),
                  key=lambda c: -(c.payload(c.a) + c.payload(c.b)))


class _Unwrap:
    """32-bit sequence numbers to a line relative to the ISN (RFC 9293 §3.4 arithmetic)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.last = 0

    def __call__(self, value: int) -> int:
        delta = (value - self.base - self.last) % (1 << 32)
        if delta >= 1 << 31:
            delta -= 1 << 32
        self.last += delta
        return self.last


@dataclass
class Series:
    """One direction of a connection, ready to draw; sequence numbers relative to the ISN."""

    sender: Address
    receiver: Address
    start: float  # the capture time that is 0 on every time axis
    # (t, first, end) for every segment that takes sequence space; `retransmitted` marks one
    segments: list[tuple[float, int, int]] = field(default_factory=list)
    retransmitted: list[bool] = field(default_factory=list)
    acks: list[tuple[float, int]] = field(default_factory=list)
    window: list[tuple[float, int]] = field(default_factory=list)  # ack + scaled window
    sacks: list[tuple[float, int, int]] = field(default_factory=list)
    rtt: list[tuple[float, float]] = field(default_factory=list)  # (t acked, seconds)
    in_flight: list[tuple[float, int]] = field(default_factory=list)  # snd_max - ack

    @property
    def retransmissions(self) -> int:
        return sum(self.retransmitted)

    @property
    def duration(self) -> float:
        times = [s[0] for s in self.segments[-1:]] + [a[0] for a in self.acks[-1:]]
        return max(times, default=0.0)

    def throughput(self, interval: float | None = None) -> list[tuple[float, float, float]]:
        """(interval start, bits/s sent, bits/s newly acknowledged) per interval.

        Sent counts retransmissions too, as a wire would; acknowledged is goodput.
        `interval` None: about 40 intervals over the run, at least 10 ms each.
        """
        span = self.duration
        if interval is None:
            interval = max(span / 40, 0.01)
        bins = max(1, int(span / interval) + 1)
        sent = [0] * bins
        acked = [0] * bins
        for t, first, end in self.segments:
            sent[min(int(t / interval), bins - 1)] += end - first
        highest = 0
        for t, ack in self.acks:
            if ack > highest:
                acked[min(int(t / interval), bins - 1)] += ack - highest
                highest = ack
        return [(i * interval, sent[i] * 8 / interval, acked[i] * 8 / interval)
                for i in range(bins)]


def analyse(conv: Conversation, sender: Address | None = None) -> Series:
    """The time-sequence series of `conv`'s data direction (the one with more payload).

    RTT samples follow Karn's rule (RFC 6298 §3): only a segment sent once is timed,
    from its send to the first ACK or SACK block (RFC 2018) that covers it, so a
    segment held behind a hole is timed by its SACK, not by the repair's ACK. On a
    capture taken at the receiver they measure the receiver's share of the path only,
    as tcptrace's do.
    """
    if sender is None:
        sender = conv.a if conv.payload(conv.a) >= conv.payload(conv.b) else conv.b
    receiver = conv.b if sender == conv.a else conv.a
    start = conv.packets[0].time if conv.packets else 0.0
    series = Series(sender, receiver, start)
    syn = next((p for p in conv.packets if p.src == sender and p.flags & wire.SYN), None)
    first = next((p for p in conv.packets if p.src == sender), None)
    if first is None:
        return series
    isn = syn.seq if syn is not None else first.seq - 1
    builder = _SeriesBuilder(series, isn, _window_shift(conv, syn, receiver))
    for p in conv.packets:
        t = p.time - start
        if p.src == sender:
            builder.sent(p, t)
        elif p.flags & wire.ACK:
            builder.acked(p, t)
    return series


def _window_shift(conv: Conversation, syn: Packet | None, receiver: Address) -> int:
    """RFC 7323 §2.2: a window is scaled only when both SYNs carried the option, and
    never in a SYN itself; the shift is capped at 14 as §2.3 caps it."""
    their_syn = next((p for p in conv.packets if p.src == receiver and p.flags & wire.SYN),
                     None)
    if (syn is not None and their_syn is not None and syn.wscale is not None
            and their_syn.wscale is not None):
        return min(their_syn.wscale, 14)
    return 0


class _SeriesBuilder:
    """The walk through a capture that `analyse` makes, one packet at a time: what the
    sender has sent (snd_max), what is acknowledged, and the segments still timed."""

    def __init__(self, series: Series, isn: int, shift: int) -> None:
        self.series = series
        self.rel = _Unwrap(isn + 1)
        self.rel_ack = _Unwrap(isn + 1)
        self.shift = shift
        self.snd_max: int | None = None
        self.highest_ack = 0
        # (end, t sent, first) of segments sent once and not yet acknowledged, by end
        self.timed: list[tuple[int, float, int]] = []

    def sent(self, p: Packet, t: float) -> None:
        """A segment from the sender: drawn, marked when it resends (below snd_max)."""
        series = self.series
        size = p.length + bool(p.flags & wire.SYN) + bool(p.flags & wire.FIN)
        if not size:
            return
        lo = self.rel(p.seq)
        hi = lo + size
        resent = self.snd_max is not None and lo < self.snd_max
        series.segments.append((t, lo, hi))
        series.retransmitted.append(resent)
        if resent:  # Karn: what this resends may no longer be timed
            self.timed = [x for x in self.timed if x[0] <= lo or x[2] >= hi]
        else:
            self.timed.append((hi, t, lo))
        self.snd_max = hi if self.snd_max is None else max(self.snd_max, hi)
        series.in_flight.append((t, max(0, self.snd_max - max(self.highest_ack, 0))))

    def acked(self, p: Packet, t: float) -> None:
        """An ACK from the receiver: its line, its window, its SACK blocks, and the
        RTT samples of the timed segments it covers first."""
        series = self.series
        ack = self.rel_ack(p.ack)
        series.acks.append((t, ack))
        window = p.window << (0 if p.flags & wire.SYN else self.shift)
        series.window.append((t, ack + window))
        for left, right in p.sack:
            lo, hi = self.rel_ack(left), self.rel_ack(right)
            self.rel_ack.last = ack  # a SACK block must not move the unwrapping point
            series.sacks.append((t, lo, hi))
            inside = [x for x in self.timed if x[2] >= lo and x[0] <= hi]
            if inside:
                series.rtt.append((t, t - inside[-1][1]))
                self.timed = [x for x in self.timed if not (x[2] >= lo and x[0] <= hi)]
        if ack > self.highest_ack:
            # every timed segment this ACK covers gives one sample, the newest the
            # best: older ones waited for the delayed ACK of a later segment
            i = bisect.bisect_right(self.timed, (ack, math.inf, 0))
            if i:
                series.rtt.append((t, t - self.timed[i - 1][1]))
                del self.timed[:i]
            self.highest_ack = ack
        if self.snd_max is not None:
            series.in_flight.append((t, max(0, self.snd_max - self.highest_ack)))


def thin(n: int, limit: int, keep: Callable[[int], bool] = lambda i: False) -> list[int]:
    """Indices of at most about `limit` of `n` items, evenly spread, plus every kept one.

    A long loopback run has hundreds of thousands of segments: more than a picture has
    pixels, and an SVG of them all would be tens of megabytes.
    """
    if n <= limit:
        return list(range(n))
    step = n / limit
    chosen = {int(i * step) for i in range(limit)} | {n - 1}
    chosen.update(i for i in range(n) if keep(i))
    return sorted(chosen)


def flush_pcap(path: str | os.PathLike[str]) -> None:
    """Write out what a still-open `Config(pcap=...)` writer holds, before reading it.

    A port stays open (and its writer with it) until its last connection has left
    TIME_WAIT: a run's end would otherwise be missing from the file read at once.
    """
    from utcp import pcap

    writer = pcap._writers.get(os.path.abspath(os.fspath(path)))
    if writer is not None:
        writer.flush()


# ---------------------------------------------------------------------- stats over time

@dataclass(frozen=True, slots=True)
class StatsSample:
    """One look at a connection's `get_extra_info("stats")`, on the capture's clock."""

    time: float  # time.time(), as the pcap's stamps
    flow: int
    cwnd: int
    ssthresh: int | None
    srtt: float | None
    rto: float
    bytes_acked: int
    segments_retransmitted: int


class StatsSampler:
    """Samples connections' stats every `period` seconds while `run` runs.

    Congestion window and smoothed RTT live only inside the sender: a capture shows
    what was sent, not why. Sampling them (as `ss -ti` would) and stamping them with the
    wall clock the pcap uses lines them up with the time-sequence graph.
    """

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.samples: list[StatsSample] = []
        self.ports: dict[int, int] = {}  # flow -> its local UDP port, to find it in a pcap
        self._flows: list[tuple[int, Callable[[], Any]]] = []

    def watch(self, flow: int, stats: Callable[[], Any], port: int | None = None) -> None:
        self._flows.append((flow, stats))
        if port is not None:
            self.ports[flow] = port

    def sample(self) -> None:
        now = time.time()
        for flow, get in self._flows:
            with contextlib.suppress(Exception):  # a connection gone: nothing to sample
                s = get()
                if s is None:
                    continue
                self.samples.append(StatsSample(
                    now, flow, s.cwnd, s.ssthresh, s.srtt, s.rto, s.bytes_acked,
                    s.segments_retransmitted))

    async def run(self) -> None:
        try:
            while True:
                self.sample()
                await asyncio.sleep(self.period)
        finally:
            self.sample()

    def of(self, flow: int) -> Iterator[StatsSample]:
        return (s for s in self.samples if s.flow == flow)
