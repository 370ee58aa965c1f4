"""utcp against the Linux TCP stack, through the UDP <-> TUN bridge, both ways round.

Each test runs twice: `utcp-client` (utcp connects to a kernel listener) and
`kernel-client` (a kernel socket connects to a utcp server). The assertions show the
kernel accepting utcp's handshake, data, FIN and RST (its `ss` view, what its sockets
read) and utcp accepting the kernel's, including its options and its retransmissions
(what the bridge saw on the wire).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time

import pytest

import utcp
from tests.interop.bed import CONFIG, TIMEOUT, KernelBed, until, within
from tests.interop.bridge import ACK, FIN, K2U, RST, SYN, U2K, Seen, drop_nth_data

pytestmark = pytest.mark.timeout(120)

DIRECTIONS = [pytest.param(True, id="utcp-client"), pytest.param(False, id="kernel-client")]
MiB = 1 << 20
CHUNK = 64 * 1024
S = utcp.State
MOD = 1 << 32


async def send_all(writer: asyncio.StreamWriter, data: bytes, eof: bool = True) -> None:
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        writer.write(view[i:i + CHUNK])
        await writer.drain()
    if eof:
        writer.write_eof()


async def read_to_eof(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    digest = hashlib.sha256()
    n = 0
    while data := await reader.read(CHUNK):
        digest.update(data)
        n += len(data)
    return digest.digest(), n


def fin_of(segments: list[Seen]) -> Seen:
    for s in segments:
        if s.flags & FIN:
            return s
    raise AssertionError(f"no FIN among {len(segments)} segments")


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_handshake_and_options(bed: KernelBed, utcp_client: bool) -> None:
    p = await bed.pair(utcp_client=utcp_client)
    br = bed.bridge
    k_syn = br.syn(K2U, p.kport)   # the kernel's SYN, or its SYN+ACK to ours
    u_syn = br.syn(U2K, p.kport)
    first, second = (u_syn, k_syn) if utcp_client else (k_syn, u_syn)

    # SYN (ISN x) -> SYN+ACK (seq y, ack x+1) -> ACK (seq x+1, ack y+1)
    assert first.flags == SYN and second.flags == SYN | ACK
    assert second.ack == (first.seq + 1) % MOD
    third = next(s for s in br.segments(first.direction, p.kport) if not s.flags & SYN)
    assert third.flags & ACK and third.seq == (first.seq + 1) % MOD
    assert third.ack == (second.seq + 1) % MOD

    # what the kernel offered: MSS for a 1500-byte MTU and window scaling, and in its
    # SYN also SACK-permitted and timestamps (Linux's defaults)
    assert k_syn.options["mss"] == 1460
    assert 0 <= k_syn.options["wscale"] <= 14
    if not utcp_client:
        assert k_syn.options.get("sack_permitted") is True
        assert "timestamps" in k_syn.options
    # what utcp offered: at least its configured MSS (more when it probes the path MTU:
    # its own UDP path is loopback), and window scaling
    assert u_syn.options["mss"] >= CONFIG.mss
    assert "wscale" in u_syn.options

    ts = "timestamps" in u_syn.options and "timestamps" in k_syn.options
    sack = bool(u_syn.options.get("sack_permitted") and k_syn.options.get("sack_permitted"))
    # utcp took the kernel's options ...
    conn = p.u_conn()
    assert p.u_state() == S.ESTABLISHED
    # utcp starts at its configured MSS and may probe up to the kernel's, never past it
    ts_len = 12 if ts else 0
    assert (min(CONFIG.mss, k_syn.options["mss"]) - ts_len <= p.u_stats().mss
            <= k_syn.options["mss"])
    assert conn.snd_wscale == k_syn.options["wscale"]
    # ... and the kernel took utcp's: its TCP_INFO via `ss -tni`
    info = await bed.kernel_info(p)
    assert info["wscale"] == f"{u_syn.options['wscale']},{k_syn.options['wscale']}"
    # the kernel sends what both MSS options and its 1500-byte TUN allow
    assert info["mss"] == str(min(u_syn.options["mss"], k_syn.options["mss"]) - ts_len)
    # (the kernel's advmss leaves room for the timestamp option once it is negotiated)
    assert info["advmss"] == str(k_syn.options["mss"] - ts_len)
    # TCP_INFO's option bits (this ss does not print them): negotiated only if both offered
    tcpi = p.kernel_tcp_info()
    assert tcpi["timestamps"] == ts and tcpi["sack"] == sack and tcpi["wscale"]
    assert (tcpi["snd_wscale"], tcpi["rcv_wscale"]) == (u_syn.options["wscale"],
                                                        k_syn.options["wscale"])

    # both apply the negotiated scale to every later window
    p.u_writer.write(b"u" * 3000)
    assert await within(p.k_reader.readexactly(3000), "kernel read") == b"u" * 3000
    p.k_writer.write(b"k" * 3000)
    assert await within(p.u_reader.readexactly(3000), "utcp read") == b"k" * 3000

    def last(direction: str) -> Seen:
        return [s for s in br.segments(direction, p.kport) if not s.flags & SYN][-1]

    await until(lambda: conn.snd_wnd == last(K2U).window << k_syn.options["wscale"],
                "utcp's send window to match the kernel's last scaled window")
    # the kernel's view, polled: utcp's last window update may still be on its way
    # through the bridge (or leave after `ss` looked) on a loaded machine
    deadline = time.monotonic() + TIMEOUT
    while "snd_wnd" in (info := await bed.kernel_info(p)):
        ours = last(U2K).window << u_syn.options["wscale"]
        if int(info["snd_wnd"]) == ours:
            break
        assert time.monotonic() < deadline, (info["snd_wnd"], ours)
        await asyncio.sleep(0.02)
    assert await bed.kernel_states(p) == ["ESTAB"]


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_4mib_each_way(bed: KernelBed, utcp_client: bool) -> None:
    p = await bed.pair(utcp_client=utcp_client)
    to_kernel, to_utcp = os.urandom(4 * MiB), os.urandom(4 * MiB)
    results = await within(asyncio.gather(
        send_all(p.u_writer, to_kernel), send_all(p.k_writer, to_utcp),
        read_to_eof(p.k_reader), read_to_eof(p.u_reader)), "4 MiB each way at once")
    assert results[2] == (hashlib.sha256(to_kernel).digest(), 4 * MiB)
    assert results[3] == (hashlib.sha256(to_utcp).digest(), 4 * MiB)
    stats = p.u_stats()
    assert stats.bytes_received == 4 * MiB
    await until(lambda: p.u_stats().bytes_acked == 4 * MiB, "the kernel to ack all our bytes")
    # both FINs were sent and acked: each side saw the other's FIN take one sequence number
    u_fin = fin_of(bed.bridge.segments(U2K, p.kport))
    k_fin = fin_of(bed.bridge.segments(K2U, p.kport))
    await until(lambda: any(s.ack == (u_fin.seq + u_fin.length + 1) % MOD
                            for s in bed.bridge.segments(K2U, p.kport)),
                "the kernel acking our FIN")
    assert any(s.ack == (k_fin.seq + k_fin.length + 1) % MOD
               for s in bed.bridge.segments(U2K, p.kport))
    p.u_writer.close()
    p.k_writer.close()
    await until(lambda: p.u_state() in (S.TIME_WAIT, S.CLOSED), "utcp to finish closing")


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_kernel_closes_first(bed: KernelBed, utcp_client: bool) -> None:
    """Kernel: shutdown -> FIN-WAIT-2 while utcp (CLOSE_WAIT) still sends -> TIME-WAIT."""
    p = await bed.pair(utcp_client=utcp_client)
    p.k_writer.write(b"kernel data")
    p.k_writer.write_eof()
    assert await within(p.u_reader.read(), "utcp read") == b"kernel data"
    assert await within(p.u_reader.read(), "utcp EOF") == b""
    await until(lambda: p.u_state() == S.CLOSE_WAIT, "utcp in CLOSE_WAIT")
    await bed.wait_kernel_state(p, "FIN-WAIT-2")

    # half-close: the side that received the FIN keeps sending, and the kernel reads it
    tail = os.urandom(256 * 1024)
    _, got = await within(asyncio.gather(send_all(p.u_writer, tail, eof=False),
                                         p.k_reader.readexactly(len(tail))), "utcp -> kernel")
    assert got == tail
    assert p.u_state() == S.CLOSE_WAIT

    p.u_writer.close()  # utcp's FIN
    assert await within(p.k_reader.read(), "kernel EOF") == b""
    await bed.wait_kernel_state(p, "TIME-WAIT")
    await until(lambda: p.u_state() == S.CLOSED, "utcp LAST_ACK -> CLOSED on the kernel's ACK")
    u_fin = fin_of(bed.bridge.segments(U2K, p.kport))
    assert any(s.ack == (u_fin.seq + u_fin.length + 1) % MOD and s.flags == ACK
               for s in bed.bridge.segments(K2U, p.kport))
    p.k_writer.close()


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_utcp_closes_first(bed: KernelBed, utcp_client: bool) -> None:
    """utcp: FIN -> FIN_WAIT_2 while the kernel (CLOSE-WAIT) still sends; the kernel's
    LAST-ACK is held by dropping utcp's ACK, and its retransmitted FIN is acked from
    TIME_WAIT."""
    # TIME_WAIT (2 x msl) outlasts the kernel's first FIN retransmissions (200 ms, 400 ms)
    p = await bed.pair(utcp_client=utcp_client, config=CONFIG.replace(msl=1.0))
    p.u_writer.write(b"utcp data")
    p.u_writer.write_eof()
    assert await within(p.k_reader.read(), "kernel read") == b"utcp data"
    assert await within(p.k_reader.read(), "kernel EOF") == b""
    await bed.wait_kernel_state(p, "CLOSE-WAIT")
    await until(lambda: p.u_state() == S.FIN_WAIT_2, "utcp in FIN_WAIT_2")

    tail = os.urandom(256 * 1024)
    _, got = await within(asyncio.gather(send_all(p.k_writer, tail, eof=False),
                                         p.u_reader.readexactly(len(tail))), "kernel -> utcp")
    assert got == tail
    assert p.u_state() == S.FIN_WAIT_2

    def hold_acks(s: Seen) -> bool:
        return s.direction == U2K and s.kport == p.kport and s.pure_ack

    bed.bridge.filters.append(hold_acks)
    p.k_writer.close()  # the kernel's FIN
    assert await within(p.u_reader.read(), "utcp EOF") == b""
    await until(lambda: p.u_state() == S.TIME_WAIT, "utcp in TIME_WAIT")
    await bed.wait_kernel_state(p, "LAST-ACK")
    bed.bridge.filters.remove(hold_acks)

    await bed.wait_kernel_gone(p)  # the kernel's retransmitted FIN got our ACK
    k_fin = fin_of(bed.bridge.segments(K2U, p.kport))
    assert k_fin.seq in bed.bridge.repeated_seqs(K2U, p.kport)
    final = [s for s in bed.bridge.segments(U2K, p.kport) if not s.dropped][-1]
    assert final.flags == ACK and final.ack == (k_fin.seq + 1) % MOD
    assert p.u_state() == S.TIME_WAIT
    await until(lambda: p.u_state() == S.CLOSED, "utcp CLOSED after 2 x MSL")


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_kernel_reset(bed: KernelBed, utcp_client: bool) -> None:
    """SO_LINGER 0 then close: the kernel sends RST; utcp reports ConnectionResetError."""
    p = await bed.pair(utcp_client=utcp_client)
    p.k_writer.write(b"ping")
    assert await within(p.u_reader.readexactly(4), "utcp read") == b"ping"
    sock = p.k_writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    p.k_writer.transport.abort()
    with pytest.raises(ConnectionResetError):
        await within(p.u_reader.read(), "utcp to see the reset")
    rst = [s for s in bed.bridge.segments(K2U, p.kport) if s.flags & RST]
    assert rst, "the kernel sent no RST"
    await until(lambda: p.u_state() == S.CLOSED, "utcp CLOSED")
    assert await bed.kernel_states(p) == []


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_utcp_abort(bed: KernelBed, utcp_client: bool) -> None:
    """utcp abort(): RST; the kernel's recv raises ConnectionResetError."""
    p = await bed.pair(utcp_client=utcp_client)
    p.u_writer.write(b"ping")
    assert await within(p.k_reader.readexactly(4), "kernel read") == b"ping"
    p.u_writer.transport.abort()
    assert p.u_state() == S.CLOSED
    with pytest.raises(ConnectionResetError):
        await within(p.k_reader.read(), "the kernel to see the reset")
    rst = [s for s in bed.bridge.segments(U2K, p.kport) if s.flags & RST]
    # at snd_nxt (ISN + 1 + 4 bytes): exactly where the kernel accepts a reset
    assert rst and rst[0].seq == (bed.bridge.syn(U2K, p.kport).seq + 1 + 4) % MOD, rst
    assert await bed.kernel_states(p) == []


@pytest.mark.parametrize("utcp_client", DIRECTIONS)
async def test_loss_both_ways(bed: KernelBed, utcp_client: bool) -> None:
    """The bridge drops the 5th and 40th data segments each way: the kernel retransmits
    to utcp, utcp retransmits to the kernel, and both streams arrive intact."""
    bed.bridge.filters += [drop_nth_data(K2U, 5, 40), drop_nth_data(U2K, 5, 40)]
    p = await bed.pair(utcp_client=utcp_client)
    to_kernel, to_utcp = os.urandom(MiB), os.urandom(MiB)
    got_k, got_u = (await within(asyncio.gather(
        send_all(p.u_writer, to_kernel, eof=False), send_all(p.k_writer, to_utcp, eof=False),
        p.k_reader.readexactly(MiB), p.u_reader.readexactly(MiB)), "1 MiB each way"))[2:]
    assert got_k == to_kernel and got_u == to_utcp

    dropped = [s for s in bed.bridge.seen if s.dropped]
    assert {s.direction for s in dropped} == {K2U, U2K} and len(dropped) == 4
    # the kernel resent what the bridge dropped, and utcp took it
    k_repeats = bed.bridge.repeated_seqs(K2U, p.kport)
    assert {s.seq for s in dropped if s.direction == K2U} <= set(k_repeats)
    # utcp resent what the bridge dropped, and the kernel took it
    assert p.u_stats().segments_retransmitted > 0
    assert {s.seq for s in dropped if s.direction == U2K} <= set(
        bed.bridge.repeated_seqs(U2K, p.kport))
    info = await bed.kernel_info(p)
    assert int(info.get("retrans", "0/0").split("/")[1]) >= 2, info  # the kernel's own count
    if p.kernel_tcp_info()["sack"]:  # negotiated: the kernel's duplicate ACKs said what came
        assert any("sack" in s.options for s in bed.bridge.segments(K2U, p.kport))
    p.u_writer.close()
    p.k_writer.close()
    await until(lambda: p.u_state() in (S.TIME_WAIT, S.CLOSED), "utcp to finish closing")

