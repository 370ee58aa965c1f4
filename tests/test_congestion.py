"""Congestion control: NewReno and CUBIC (RFC 9438, HyStart++ RFC 9406) by themselves, and
CUBIC driving lossy transfers through the simulator."""

from __future__ import annotations

import pytest

from tests.netsim import LinkProfile
from tests.test_transfer import CFG, LOSSY, Closing, MiB, check, transfer
from utcp import congestion
from utcp.congestion.cubic import BETA, Cubic

MSS = 1000


def _ca(cc: Cubic, rounds: int, start: float, rtt: float = 0.1) -> list[int]:
    """Drive `rounds` round trips of cwnd-limited ACKs; the window after each."""
    sizes = []
    now = start
    for _ in range(rounds):
        acked = 0
        window = cc.cwnd
        while acked < window:
            cc.on_ack(MSS, flight=cc.cwnd, now=now)
            acked += MSS
        now += rtt
        sizes.append(cc.cwnd)
    return sizes


def test_cubic_backs_off_by_beta_and_regrows_concave_then_convex() -> None:
    cc = Cubic(MSS, 10 * MSS)
    cc.on_rtt_sample(0.1, 0.0)
    cc.cwnd = 100 * MSS
    cc.on_loss(flight=100 * MSS, now=0.0)
    cc.on_recovery_end()
    assert cc.ssthresh == cc.cwnd == int(100 * MSS * BETA)
    growth = _ca(cc, 60, start=0.1)
    steps = [b - a for a, b in zip([cc.ssthresh, *growth], growth, strict=False)]
    peak = max(range(len(growth)), key=lambda i: -abs(growth[i] - 100 * MSS))
    # fast at first, slowest around the old maximum (the plateau), fast again past it
    assert steps[0] > steps[peak] < steps[-1]
    assert growth[-1] > 100 * MSS


def test_cubic_fast_convergence_lowers_the_target_after_a_second_loss() -> None:
    cc = Cubic(MSS, 100 * MSS)
    cc.on_loss(flight=100 * MSS, now=0.0)
    cc.on_recovery_end()
    assert cc.w_max == 100 * MSS
    cc.on_loss(flight=cc.cwnd, now=1.0)   # lost again below the old maximum
    assert cc.w_max == pytest.approx(70 * MSS * (1 + BETA) / 2)


def test_hystart_leaves_slow_start_when_the_rtt_climbs() -> None:
    cc = Cubic(MSS, 10 * MSS)
    for _ in range(8):
        cc.on_rtt_sample(0.050, 0.0)
    cc.on_round(0.05)
    assert cc.in_slow_start
    for _ in range(8):
        cc.on_rtt_sample(0.051, 0.1)      # +1 ms: under the 4 ms threshold
    cc.on_round(0.1)
    assert cc.in_slow_start
    for _ in range(8):
        cc.on_rtt_sample(0.060, 0.2)      # +9 ms over the last round's minimum
    assert not cc.in_slow_start and cc.hystart_exits == 1 and cc.ssthresh == cc.cwnd


def test_neither_grows_a_window_that_is_not_used() -> None:
    for name in ("newreno", "cubic"):
        cc = congestion.create(name, MSS, 10 * MSS)
        cc.on_ack(MSS, flight=2 * MSS, now=0.0)   # 2 segments in flight of 10 allowed
        assert cc.cwnd == 10 * MSS


@pytest.mark.parametrize("seed", range(5))
def test_cubic_transfers_byte_exact_under_loss(seed: int) -> None:
    config = CFG.replace(congestion="cubic")
    run = transfer(seed, LOSSY, c2s=MiB, s2c=MiB, closing=list(Closing)[seed % 4],
                   config=config)
    check(run, list(Closing)[seed % 4])
    assert run.client.conn is not None and run.client.conn.stats().congestion == "cubic"


def test_cubic_on_a_bandwidth_limited_link_with_tail_drops() -> None:
    profile = LinkProfile(delay=0.02, bandwidth=2e6, queue_limit=60_000)
    run = transfer(7, profile, c2s=2 * MiB, s2c=64 << 10, closing=Closing.CLIENT_FIRST,
                   config=CFG.replace(congestion="cubic"))
    check(run, Closing.CLIENT_FIRST)
