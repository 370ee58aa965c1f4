"""What a connection counts, and the snapshot of it users get.

`Counters` is the connection's own tally, mutated where things happen; `Stats` is the
frozen copy the public API hands out (`UtcpTransport.get_extra_info("stats")`), in the
spirit of Linux's TCP_INFO. Keeping the tally in one object means a new counter is one
field here, not one more attribute among the connection's sequence variables.
"""

from __future__ import annotations

from dataclasses import dataclass

from utcp.state import State


@dataclass(slots=True)
class Counters:
    bytes_sent: int = 0              # new payload bytes, not retransmissions
    bytes_acked: int = 0
    bytes_received: int = 0          # delivered in order
    bytes_retransmitted: int = 0
    segments_sent: int = 0           # every segment, control ones too
    segments_received: int = 0
    segments_retransmitted: int = 0
    dup_acks_received: int = 0
    fast_retransmits: int = 0        # loss recoveries entered (RFC 5681, RFC 6675)
    timeouts: int = 0                # retransmission timeouts (RFC 6298)
    tail_loss_probes: int = 0        # RFC 8985 §7
    spurious_recoveries: int = 0     # recoveries undone by DSACKs (RFC 2883)
    dsacks_received: int = 0
    ooo_segments_received: int = 0
    dropped_segments: int = 0        # every silent drop, whatever the reason
    challenge_acks: int = 0          # RFC 5961 §7
    challenge_acks_suppressed: int = 0
    paws_drops: int = 0              # RFC 7323 §5
    fins_ignored: int = 0            # FINs contradicted by data or by another FIN


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot in the spirit of Linux's TCP_INFO (docs/protocol.md §1)."""

    state: State
    mss: int
    srtt: float | None
    rttvar: float | None
    rto: float
    cwnd: int
    ssthresh: int | None
    snd_wnd: int
    rcv_wnd: int
    bytes_sent: int
    bytes_acked: int
    bytes_received: int
    bytes_retransmitted: int
    segments_sent: int
    segments_received: int
    segments_retransmitted: int
    dup_acks_received: int
    fast_retransmits: int
    timeouts: int
    ooo_segments_received: int
    dropped_segments: int
    challenge_acks: int
    congestion: str
    pacing_rate: float | None  # bytes per second; None when not pacing
    tail_loss_probes: int = 0
    spurious_recoveries: int = 0
    dsacks_received: int = 0
    paws_drops: int = 0
    fins_ignored: int = 0
    challenge_acks_suppressed: int = 0
