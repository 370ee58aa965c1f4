"""What a connection counts, and the snapshot of it users get.

`Counters` is the connection's own tally, mutated where things happen; `Stats` is the
frozen copy the public API hands out (`UtcpTransport.get_extra_info("stats")`), in the
spirit of Linux's TCP_INFO. Keeping the tally in one object means a new counter is one
field here, not one more attribute among the connection's sequence variables.
"""

from __future__ import annotations

from dataclasses import dataclass

from utcp.state import State


class Counters:
    """A plain class, not a dataclass: mypyc compiles its `__init__` (a dataclass's is
    the Python function the dataclasses module writes, two per connection opened)."""

    __slots__ = ("bytes_acked", "bytes_received", "bytes_retransmitted", "bytes_sent",
                 "challenge_acks", "challenge_acks_suppressed", "dropped_segments",
                 "dsacks_received", "dup_acks_received", "fast_retransmits", "fin_timeouts",
                 "fins_ignored", "ooo_segments_received", "paws_drops", "segments_received",
                 "segments_retransmitted", "segments_sent", "spurious_recoveries",
                 "tail_loss_probes", "timeouts", "unsent_dropped")

    def __init__(self) -> None:
        self.bytes_sent = 0              # new payload bytes, not retransmissions
        self.bytes_acked = 0
        self.bytes_received = 0          # delivered in order
        self.bytes_retransmitted = 0
        self.segments_sent = 0           # every segment, control ones too
        self.segments_received = 0
        self.segments_retransmitted = 0
        self.dup_acks_received = 0
        self.fast_retransmits = 0        # loss recoveries entered (RFC 5681, RFC 6675)
        self.timeouts = 0                # retransmission timeouts (RFC 6298)
        self.tail_loss_probes = 0        # RFC 8985 §7
        self.spurious_recoveries = 0     # recoveries undone by DSACKs (RFC 2883)
        self.dsacks_received = 0
        self.ooo_segments_received = 0
        self.dropped_segments = 0        # every silent drop, whatever the reason
        self.challenge_acks = 0          # RFC 5961 §7
        self.challenge_acks_suppressed = 0
        self.paws_drops = 0              # RFC 7323 §5
        self.unsent_dropped = 0          # written, never transmitted, when the end came
        self.fins_ignored = 0            # FINs contradicted by data or by another FIN
        self.fin_timeouts = 0            # 1 once an orphan's FIN_WAIT_2 ran out of
        #   Config.fin_timeout and the connection was dropped (Linux's tcp_fin_timeout)


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
    fin_timeouts: int = 0
