"""`utcp plot` and `utcp perf --plot`: the series behind the picture, then the picture.

The analysis (`utcp.plotdata`) is checked twice: on a hand-made capture whose every value
is known (sequence numbers wrapping past 2**32, window scaling, a retransmission, Karn's
rule for RTT samples), and on a real transfer through the lossy relay of test_pcap.py,
where the retransmissions it finds must be exactly the ones the sender counted. Drawing
needs matplotlib (the extra `plot`); those tests are skipped, with the reason, without it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import utcp
from tests.test_cli import run_utcp
from tests.test_pcap import LossyRelay, lossy_transfer
from utcp import cli, pcap, plotdata, wire

NBYTES = 1 << 20
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install -e '.[plot]')")

A = ("10.0.0.1", 40000)
B = ("10.0.0.2", 5201)
ISN = (1 << 32) - 1500  # the data crosses 2**32: unwrapping is part of the test
IRS = 777


# ---------------------------------------------------------------------- a capture by hand

def _write(writer: pcap.PcapWriter, src: tuple[str, int], dst: tuple[str, int], t: float,
           seq: int, ack: int, flags: int, window: int = 1000, payload: int = 0,
           options: wire.Options | None = None) -> None:
    seg = wire.Segment(src[1], dst[1], seq % (1 << 32), ack % (1 << 32), flags, window,
                       payload=b"x" * payload, options=options or wire.Options())
    writer.write(wire.build(seg), src, dst, t)


def handmade(path: Path, a: tuple[str, int] = A, b: tuple[str, int] = B) -> None:
    """SYN lost and resent, three 1000-byte segments, the second lost and resent, FIN."""
    w = pcap.PcapWriter(path)
    syn_opts = wire.Options(mss=1000, wscale=7)
    _write(w, a, b, 100.0, ISN, 0, wire.SYN, 65535, options=syn_opts)
    _write(w, a, b, 101.0, ISN, 0, wire.SYN, 65535, options=syn_opts)  # RTO: resent
    _write(w, b, a, 101.1, IRS, ISN + 1, wire.SYN | wire.ACK, 65535,
           options=wire.Options(mss=1000, wscale=2))
    _write(w, a, b, 101.2, ISN + 1, IRS + 1, wire.ACK, 500)
    d = ISN + 1
    _write(w, a, b, 101.2, d, IRS + 1, wire.ACK, 500, payload=1000)
    _write(w, a, b, 101.2, d + 1000, IRS + 1, wire.ACK, 500, payload=1000)  # lost
    _write(w, a, b, 101.2, d + 2000, IRS + 1, wire.ACK, 500, payload=1000)
    _write(w, b, a, 101.3, IRS + 1, d + 1000, wire.ACK, 1000)
    _write(w, b, a, 101.3, IRS + 1, d + 1000, wire.ACK, 1000,
           options=wire.Options(sack=(((d + 2000) % (1 << 32), (d + 3000) % (1 << 32)),)))
    _write(w, a, b, 101.35, d + 1000, IRS + 1, wire.ACK, 500, payload=1000)  # resent
    _write(w, b, a, 101.45, IRS + 1, d + 3000, wire.ACK, 1000)
    _write(w, a, b, 101.5, d + 3000, IRS + 1, wire.ACK | wire.FIN, 500)
    _write(w, b, a, 101.6, IRS + 1, d + 3001, wire.ACK | wire.FIN, 1000)
    _write(w, a, b, 101.7, d + 3001, IRS + 2, wire.ACK, 500)
    w.close()


def test_handmade_capture_series(tmp_path: Path) -> None:
    path = tmp_path / "hand.pcap"
    handmade(path)
    capture = plotdata.read_pcap(path)
    assert len(capture.packets) == 14 and capture.skipped == 0
    (conv,) = plotdata.conversations(capture)
    s = plotdata.analyse(conv)
    assert (s.sender, s.receiver) == (A, B)
    assert s.start == 100.0
    # relative sequence numbers, straight across the wrap at 2**32
    assert [(round(t, 3), lo, hi) for t, lo, hi in s.segments] == [
        (0.0, -1, 0), (1.0, -1, 0),  # the SYN twice
        (1.2, 0, 1000), (1.2, 1000, 2000), (1.2, 2000, 3000),
        (1.35, 1000, 2000),  # the retransmission
        (1.5, 3000, 3001)]  # FIN
    assert s.retransmitted == [False, True, False, False, False, True, False]
    assert s.retransmissions == 2
    assert [a for _, a in s.acks] == [0, 1000, 1000, 3000, 3001]
    # the SYN's window is never scaled; later ones by the SYN's wscale 2 (RFC 7323 §2.2)
    assert [w for _, w in s.window] == [65535, 1000 + 4000, 1000 + 4000, 3000 + 4000,
                                        3001 + 4000]
    assert [(lo, hi) for _, lo, hi in s.sacks] == [(2000, 3000)]


def test_karn_rule_exact(tmp_path: Path) -> None:
    path = tmp_path / "hand.pcap"
    handmade(path)
    s = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(path))[0])
    # at 1.3 the ACK times the first segment and the SACK block the third (both sent at
    # 1.2); the second, resent, is never timed (Karn), so the ACK of 3000 at 1.45 gives no
    # sample (it would read 0.25 s, the time spent behind the hole); the FIN's ACK does
    assert [(round(t, 3), round(r, 3)) for t, r in s.rtt] == [(1.3, 0.1), (1.3, 0.1),
                                                               (1.6, 0.1)]


def test_throughput_intervals(tmp_path: Path) -> None:
    path = tmp_path / "hand.pcap"
    handmade(path)
    s = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(path))[0])
    rows = s.throughput(interval=0.5)
    # 0-0.5 s: the first SYN; 1.0-1.5: SYN, 3000 bytes, 1000 resent; 1.5-2.0: the FIN
    assert [r[0] for r in rows] == [0.0, 0.5, 1.0, 1.5]
    assert [r[1] * 0.5 / 8 for r in rows] == [1, 0, 1 + 3000 + 1000, 1]
    assert sum(r[2] * 0.5 / 8 for r in rows) == 3001  # acknowledged: everything, once


def _relink(path: Path, linktype: int, header: bytes, order: str = "<") -> bytes:
    """The capture again with another link type, `header` before each IP packet."""
    data = path.read_bytes()
    out = bytearray(data[:20] + struct.pack(order + "I", linktype))
    if order == ">":  # the whole global header in the other byte order
        fields = (*struct.unpack("<IHHiIII", data[:24])[:-1], linktype)
        out = bytearray(struct.pack(">IHHiIII", *fields))
    pos = 24
    while pos < len(data):
        sec, usec, incl, _ = struct.unpack("<IIII", data[pos:pos + 16])
        frame = header + data[pos + 16:pos + 16 + incl]
        out += struct.pack(order + "IIII", sec, usec, len(frame), len(frame)) + frame
        pos += 16 + incl
    return bytes(out)


@pytest.mark.parametrize(("linktype", "header", "order"), [
    (1, bytes(12) + b"\x08\x00", "<"),  # Ethernet, IPv4
    (1, bytes(12) + b"\x81\x00\x00\x05\x08\x00", "<"),  # Ethernet, one VLAN tag
    (113, bytes(14) + b"\x08\x00", ">"),  # Linux cooked, big-endian file
    (228, b"", "<"),  # LINKTYPE_IPV4
])
def test_other_link_types(tmp_path: Path, linktype: int, header: bytes, order: str) -> None:
    path = tmp_path / "hand.pcap"
    handmade(path)
    other = tmp_path / "other.pcap"
    other.write_bytes(_relink(path, linktype, header, order))
    capture = plotdata.read_pcap(other)
    assert len(capture.packets) == 14 and capture.skipped == 0
    s = plotdata.analyse(plotdata.conversations(capture)[0])
    assert s.retransmissions == 2 and s.start == 100.0


def test_snap_length_capture(tmp_path: Path) -> None:
    """tcpdump -s 64: payloads cut off, their lengths still read from the IP header."""
    path = tmp_path / "hand.pcap"
    handmade(path)
    data = path.read_bytes()
    out = bytearray(data[:24])
    pos = 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[pos:pos + 16])
        keep = min(incl, 64)
        out += struct.pack("<IIII", sec, usec, keep, orig) + data[pos + 16:pos + 16 + keep]
        pos += 16 + incl
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(bytes(out))
    assert len(out) < len(data) - 3000
    full = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(path))[0])
    snapped = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(cut))[0])
    assert snapped.segments == full.segments and snapped.acks == full.acks
    assert snapped.retransmitted == full.retransmitted and snapped.rtt == full.rtt


def test_ipv6_capture(tmp_path: Path) -> None:
    path = tmp_path / "v6.pcap"
    handmade(path, ("2001:db8::1", 40000), ("2001:db8::2", 5201))
    s = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(path))[0])
    assert s.sender == ("2001:db8::1", 40000) and s.receiver == ("2001:db8::2", 5201)
    assert s.retransmitted == [False, True, False, False, False, True, False]


def test_thinning_keeps_ends_and_marked() -> None:
    assert plotdata.thin(10, 20) == list(range(10))
    chosen = plotdata.thin(100_000, 1000, lambda i: i % 997 == 5)
    assert 1000 <= len(chosen) <= 1000 + 101
    assert chosen[0] == 0 and chosen[-1] == 99_999 and chosen == sorted(set(chosen))
    assert all(i in chosen for i in range(5, 100_000, 997))


def test_bad_files_are_refused_or_skipped(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all, but long enough")
    with pytest.raises(plotdata.CaptureError, match="not a pcap"):
        plotdata.read_pcap(junk)
    ng = tmp_path / "x.pcapng"
    ng.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(plotdata.CaptureError, match="pcapng"):
        plotdata.read_pcap(ng)
    # a UDP packet, a TCP header cut short and a record cut short: skipped, counted
    path = tmp_path / "mixed.pcap"
    handmade(path)
    data = bytearray(path.read_bytes())
    udp = bytearray(pcap.ip_packet(b"\0" * 28, A, B))
    udp[9] = 17
    short = pcap.ip_packet(b"\0" * 28, A, B)[:30]
    for packet in (bytes(udp), short):
        data += struct.pack("<IIII", 102, 0, len(packet), len(packet)) + packet
    data += struct.pack("<IIII", 103, 0, 500, 500) + b"\x45" * 10
    path.write_bytes(bytes(data))
    capture = plotdata.read_pcap(path)
    assert len(capture.packets) == 14 and capture.skipped == 3


# ---------------------------------------------------------------------- a real lossy transfer

@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, utcp.Stats,
                                                             LossyRelay]:
    path = tmp_path_factory.mktemp("plot") / "lossy.pcap"
    client_port, _relay_port, stats, relay = asyncio.run(lossy_transfer(path, NBYTES))
    return path, client_port, stats, relay


def test_lossy_transfer_series(lossy: tuple[Path, int, utcp.Stats, LossyRelay]) -> None:
    path, client_port, stats, relay = lossy
    capture = plotdata.read_pcap(path)
    assert capture.skipped == 0
    (conv,) = plotdata.conversations(capture)
    assert len(conv.packets) == stats.segments_sent + stats.segments_received
    s = plotdata.analyse(conv)
    assert s.sender[1] == client_port
    assert relay.dropped["c2s"] > 20
    # what the sender counted is what the capture shows, one for one
    assert s.retransmissions == stats.segments_retransmitted > 0
    assert s.retransmitted[:2] == [False, True]  # the relay dropped the first SYN
    # every byte once as new data, between the SYN and the FIN (which may ride on the last)
    new = [(lo, hi) for (_, lo, hi), r in zip(s.segments, s.retransmitted, strict=True)
           if not r]
    assert new[0] == (-1, 0) and new[-1][1] == NBYTES + 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(new))
    # the ACK line never goes back, and ends acknowledging the FIN
    acks = [a for _, a in s.acks]
    assert all(x <= y for x, y in itertools.pairwise(acks))
    assert acks[-1] == NBYTES + 1
    assert all(w >= a for (_, w), (_, a) in zip(s.window, s.acks, strict=True))
    times = [t for t, _, _ in s.segments]
    assert times == sorted(times)
    assert s.rtt and all(0 < r < 5 for _, r in s.rtt)
    rows = s.throughput()
    # every byte acknowledged once over the intervals (floating point: bits/s x seconds)
    assert sum(r[2] for r in rows) * (rows[1][0] - rows[0][0]) / 8 == pytest.approx(
        NBYTES + 1, abs=0.01)


# ---------------------------------------------------------------------- pictures

@needs_matplotlib
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_render_lossy_transfer(lossy: tuple[Path, int, utcp.Stats, LossyRelay],
                               tmp_path: Path, suffix: str) -> None:
    from utcp import plot

    path, client_port, stats, _ = lossy
    out = tmp_path / f"lossy{suffix}"
    series = plot.plot_capture(path, out, port=client_port)
    assert series.retransmissions == stats.segments_retransmitted
    data = out.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack("!II", data[16:24])
        assert (width, height) == (1100, 1320)  # 10 x 12 inches at 110 dpi
        assert b"Matplotlib" in data[:4096]  # the Agg canvas's Software text chunk
        assert len(data) > 50_000
    else:
        text = data.decode()
        assert text.startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")
        assert len(data) > 100_000
    assert "matplotlib.pyplot" not in sys.modules  # no global backend, no display wanted


@needs_matplotlib
def test_render_with_sampled_stats(tmp_path: Path) -> None:
    from utcp import plot

    path = tmp_path / "hand.pcap"
    handmade(path)
    series = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(path))[0])
    samples = [plotdata.StatsSample(100.0 + i * 0.1, 1, 1000 * (i + 1), 4000 if i > 5 else None,
                                    0.1, 1.0, 0, 0) for i in range(18)]
    out = tmp_path / "stats.svg"
    plot.render(out, series, samples)
    text = out.read_text()
    assert text.startswith("<?xml") and len(text) > 50_000


def test_missing_matplotlib_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hand.pcap"
    handmade(path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert cli.main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "utcp plot: drawing needs matplotlib: pip install 'utcp[plot]' (or pip install "
        "matplotlib)"]
    assert not (tmp_path / "x.png").exists()
    # perf fails the same way before it runs anything
    assert cli.main(["perf", "-n", "1M", "--plot", str(tmp_path / "p.png")]) == 1
    assert "needs matplotlib" in capsys.readouterr().err


def test_cli_refuses_before_running(tmp_path: Path) -> None:
    path = tmp_path / "hand.pcap"
    handmade(path)
    result = run_utcp("plot", str(path), "-o", str(tmp_path / "x.jpg"))
    assert result.returncode == 1
    assert b"give a .png or .svg file" in result.stderr
    result = run_utcp("perf", "-s", "--plot", str(tmp_path / "x.png"))
    assert result.returncode == 2 and b"--plot draws a client's run" in result.stderr
    result = run_utcp("plot", str(tmp_path / "nothing.pcap"))
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\0" * 100)
    result = run_utcp("plot", str(junk))
    assert result.returncode == 1 and result.stderr.strip() == b"utcp plot: not a pcap file"


@needs_matplotlib
def test_cli_plot_command(lossy: tuple[Path, int, utcp.Stats, LossyRelay],
                          tmp_path: Path) -> None:
    path, _, stats, _ = lossy
    out = tmp_path / "cli.svg"
    result = run_utcp("plot", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    assert f"{stats.segments_retransmitted} retransmitted" in line
    assert out.read_bytes().startswith(b"<?xml") and out.stat().st_size > 100_000


@needs_matplotlib
def test_cli_perf_plot(tmp_path: Path) -> None:
    out = tmp_path / "perf.png"
    capture = tmp_path / "perf.pcap"
    result = run_utcp("perf", "-n", "2M", "-i", "0", "--pcap", str(capture), "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert f"plot (stream 1) written to {out}" in result.stdout.decode()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    # the capture asked for is kept, and holds the run that was drawn
    s = plotdata.analyse(plotdata.conversations(plotdata.read_pcap(capture))[0])
    assert s.segments[-1][2] >= 2 << 20


def test_sampler_samples_a_live_connection() -> None:
    async def main() -> list[plotdata.StatsSample]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1 << 16):
                writer.write(data)
            writer.close()

        server = await utcp.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await utcp.open_connection("127.0.0.1", port)
        sampler = plotdata.StatsSampler(period=0.005)
        sampler.watch(1, lambda: writer.get_extra_info("stats"), port)
        task = asyncio.create_task(sampler.run())
        writer.write(b"y" * 200_000)
        writer.write_eof()
        got = 0
        async with asyncio.timeout(30):
            while data := await reader.read(1 << 16):
                got += len(data)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
        server.close()
        assert got == 200_000
        return list(sampler.of(1))

    samples = asyncio.run(main())
    assert len(samples) >= 2
    assert samples[-1].bytes_acked >= 200_000
    assert all(a.time <= b.time for a, b in itertools.pairwise(samples))


def test_plotdata_does_not_import_matplotlib() -> None:
    code = ("import sys, utcp.plotdata, utcp.plot, utcp.cli; "
            "sys.exit(any(m.startswith('matplotlib') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
