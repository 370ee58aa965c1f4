"""Draw a connection: time-sequence graph, cwnd, RTT and throughput, with matplotlib.

matplotlib is the optional extra `plot` (`pip install 'utcp[plot]'`) and is imported only
when a picture is drawn, so utcp itself never needs it. Drawing goes through a bare
`Figure` and the Agg (PNG) or SVG canvas, never `pyplot`: no global backend is chosen,
no display is looked for, and it works on a server without one. The numbers come from
`utcp.plotdata`, which is tested without drawing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from utcp import plotdata

FORMATS = (".png", ".svg")
MAX_SEGMENTS = 20_000  # bars drawn before thinning (plotdata.thin): retransmits always drawn
MAX_POINTS = 20_000


class PlotUnavailable(Exception):
    """matplotlib is missing, or the output is not a file type we draw."""


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable("drawing needs matplotlib: pip install 'utcp[plot]' "
                              "(or pip install matplotlib)") from None
    return matplotlib, Figure


def check_output(path: str | os.PathLike[str]) -> None:
    """Fail before a run, not after it: a known file type, and matplotlib importable."""
    if os.path.splitext(os.fspath(path))[1].lower() not in FORMATS:
        raise PlotUnavailable(f"cannot draw {os.fspath(path)!r}: give a .png or .svg file")
    _matplotlib()


def render(path: str | os.PathLike[str], series: plotdata.Series,
           samples: Sequence[plotdata.StatsSample] = (), *, title: str | None = None,
           interval: float | None = None) -> None:
    """Write the four panels for `series` to `path` (.png or .svg, by its suffix)."""
    check_output(path)
    _, figure_class = _matplotlib()
    fig = figure_class(figsize=(10, 12), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 1.2, 1.2]})
    seq_ax, cwnd_ax, rtt_ax, tput_ax = axes
    retransmissions = series.retransmissions
    fig.suptitle(title or (
        f"{series.sender[0]}:{series.sender[1]} → {series.receiver[0]}:{series.receiver[1]}: "
        f"{len(series.segments)} segments, {retransmissions} retransmitted"))
    _draw_sequence(seq_ax, series)
    _draw_cwnd(cwnd_ax, series, samples)
    _draw_rtt(rtt_ax, series, samples)
    _draw_throughput(tput_ax, series, interval)
    fig.savefig(os.fspath(path), dpi=110)


def _draw_sequence(seq_ax: Any, series: plotdata.Series) -> None:
    """The time-sequence graph (tcptrace): bars for segments, ACK and window as steps."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import EngFormatter

    keep = series.retransmitted
    chosen = plotdata.thin(len(series.segments), MAX_SEGMENTS, lambda i: keep[i])
    new = [[(t, lo), (t, hi)] for i in chosen if not keep[i]
           for t, lo, hi in (series.segments[i],)]
    resent = [[(t, lo), (t, hi)] for (t, lo, hi), r in zip(series.segments, keep, strict=True)
              if r]
    if len(chosen) < len(series.segments):
        seq_ax.text(0.01, 0.98, f"{len(chosen)} of {len(series.segments)} segments drawn",
                    transform=seq_ax.transAxes, va="top", fontsize="small", color="gray")
    seq_ax.add_collection(LineCollection(new, colors="tab:blue", linewidths=1.2,
                                         label="data segment"))
    if resent:
        seq_ax.add_collection(LineCollection(resent, colors="tab:red", linewidths=2.0))
        seq_ax.plot([s[0][0] for s in resent], [s[1][1] for s in resent], "x",
                    color="tab:red", markersize=5, label=f"retransmission ({len(resent)})")
    if series.sacks:
        seq_ax.add_collection(LineCollection(
            [[(t, lo), (t, hi)] for t, lo, hi in series.sacks], colors="tab:purple",
            linewidths=1.0, label="SACK block"))
    acks = _thinned(series.acks)
    if acks:
        seq_ax.step([a[0] for a in acks], [a[1] for a in acks], where="post",
                    color="tab:green", linewidth=1.0, label="ACK")
    window = _thinned(series.window)
    if window:
        seq_ax.step([w[0] for w in window], [w[1] for w in window], where="post",
                    color="goldenrod", linewidth=1.0, label="ACK + receive window")
    seq_ax.autoscale_view()
    _clip_to_data(seq_ax, series)
    seq_ax.set_ylabel("sequence number (from ISN)")
    seq_ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    seq_ax.legend(loc="upper left" if len(chosen) == len(series.segments) else "lower right",
                  fontsize="small")
    seq_ax.grid(True, alpha=0.3)


def _clip_to_data(seq_ax: Any, series: plotdata.Series) -> None:
    """A receive window far above the data (a few MB on loopback) would squash the
    segments into a line along the bottom: the axis follows the data, and says where
    the window is."""
    top = max((hi for _, _, hi in series.segments), default=0)
    top = max(top, max((a[1] for a in series.acks), default=0))
    highest_window = max((w[1] for w in series.window), default=0)
    if top and highest_window > top * 1.5:
        seq_ax.set_ylim(bottom=-0.02 * top, top=top * 1.5)
        seq_ax.text(0.99, 0.98, f"receive window reaches {highest_window / 1e6:.2f} MB",
                    transform=seq_ax.transAxes, ha="right", va="top", fontsize="small",
                    color="goldenrod")


def _draw_cwnd(cwnd_ax: Any, series: plotdata.Series,
               samples: Sequence[plotdata.StatsSample]) -> None:
    """The congestion window (sampled stats, when given) over bytes in flight (the
    capture's own view, always there)."""
    from matplotlib.ticker import EngFormatter

    flight = _thinned(series.in_flight)
    if flight:
        cwnd_ax.step([f[0] for f in flight], [f[1] for f in flight], where="post",
                     color="0.6", linewidth=0.8, label="in flight (capture)")
    if samples:
        ts = [s.time - series.start for s in samples]
        cwnd_ax.step(ts, [s.cwnd for s in samples], where="post", color="tab:blue",
                     label="cwnd (stats)")
        sst = [(t, s.ssthresh) for t, s in zip(ts, samples, strict=True)
               if s.ssthresh is not None and s.ssthresh < 1 << 30]
        if sst:
            cwnd_ax.step([t for t, _ in sst], [v for _, v in sst], where="post",
                         color="tab:orange", linestyle="--", label="ssthresh (stats)")
    cwnd_ax.set_ylabel("bytes")
    cwnd_ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    cwnd_ax.set_title("congestion window" if samples else "bytes in flight", fontsize="medium")
    _legend(cwnd_ax)


def _draw_rtt(rtt_ax: Any, series: plotdata.Series,
              samples: Sequence[plotdata.StatsSample]) -> None:
    """Round-trip time: the capture's samples (Karn's rule) and the sender's SRTT."""
    rtt = _thinned(series.rtt)
    if rtt:
        rtt_ax.plot([r[0] for r in rtt], [r[1] * 1e3 for r in rtt], ".", color="tab:purple",
                    markersize=2, label="RTT sample (capture, Karn)")
    srtt = [(s.time - series.start, s.srtt * 1e3) for s in samples if s.srtt is not None]
    if srtt:
        rtt_ax.plot([t for t, _ in srtt], [v for _, v in srtt], color="tab:green",
                    label="smoothed RTT (stats)")
    rtt_ax.set_ylabel("RTT (ms)")
    rtt_ax.set_title("round-trip time", fontsize="medium")
    rtt_ax.set_ylim(bottom=0)
    _legend(rtt_ax)


def _draw_throughput(tput_ax: Any, series: plotdata.Series, interval: float | None) -> None:
    """Throughput per interval, sent beside acknowledged: the gap is what was lost."""
    from matplotlib.ticker import EngFormatter

    rows = series.throughput(interval)
    if rows:
        width = rows[1][0] - rows[0][0] if len(rows) > 1 else max(series.duration, 0.01)
        tput_ax.stairs([r[1] for r in rows], [r[0] for r in rows] + [rows[-1][0] + width],
                       color="tab:blue", label="sent (with retransmissions)")
        tput_ax.stairs([r[2] for r in rows], [r[0] for r in rows] + [rows[-1][0] + width],
                       color="tab:green", fill=True, alpha=0.35, label="acknowledged")
        tput_ax.set_title(f"throughput per {width * 1e3:.0f} ms", fontsize="medium")
    tput_ax.set_ylabel("rate")
    tput_ax.yaxis.set_major_formatter(EngFormatter(unit="bit/s"))
    tput_ax.set_xlabel("time (s)")
    _legend(tput_ax)
    tput_ax.set_xlim(left=0)


def _thinned(points: list[Any]) -> list[Any]:
    return [points[i] for i in plotdata.thin(len(points), MAX_POINTS)]


def _legend(ax: Any) -> None:
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def plot_capture(capture_path: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 port: int | None = None,
                 samples: Sequence[plotdata.StatsSample] = (),
                 interval: float | None = None) -> plotdata.Series:
    """Draw the capture's busiest connection (or the one using UDP `port`) to `output`."""
    check_output(output)
    capture = plotdata.read_pcap(capture_path)
    convs = plotdata.conversations(capture)
    if port is not None:
        convs = [c for c in convs if port in (c.a[1], c.b[1])]
    if not convs:
        raise plotdata.CaptureError("no TCP connection in the capture"
                                    + (f" using port {port}" if port is not None else ""))
    series = plotdata.analyse(convs[0])
    if not series.segments:
        raise plotdata.CaptureError("the connection carried no data to draw")
    render(output, series, samples, interval=interval)
    return series
