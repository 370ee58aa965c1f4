"""Loss detection and recovery for one connection, as aioquic's `quic/recovery.py`.

Everything that decides *what was lost and how fast to send* lives here: the RTT
estimator (RFC 6298), the sent log and RACK (RFC 8985), the SACK scoreboard (RFC 6675),
congestion control (RFC 5681, CUBIC), the undo of needless recoveries (RFC 2883, RFC
4015), and the three timers that belong to it (RTO, tail loss probe, RACK's reordering
timer). The connection keeps the sequence variables of RFC 9293's TCB and the send
buffer; this class reads them through `conn` and asks it to transmit.

A recovery is in exactly one `Mode` (four booleans once spelt it, and allowed
combinations nobody meant).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from utcp import congestion, log, sack, wire
from utcp import seq as sq
from utcp.config import Config
from utcp.congestion.newreno import NewReno
from utcp.rack import SACKED, SentLog
from utcp.rtt import RttEstimator
from utcp.state import SYNCHRONIZED, State
from utcp.timers import T_REORDER, T_RTX, T_TLP

if TYPE_CHECKING:
    from utcp.connection import Connection

DUPACK_THRESHOLD: Final = 3
WORST_CASE_DELAYED_ACK: Final = 0.2  # RFC 8985 §7.2's WCDelAckT, as Linux's TCP_RTO_MIN
REO_BEFORE_RTO: Final = 0.001  # an RTO due with RACK's reordering timer waits this much after it
_PROBING_STATES: Final = (State.ESTABLISHED, State.CLOSE_WAIT)


class Mode(enum.Enum):
    NONE = "open"            # no loss being repaired
    NEWRENO = "NewReno"      # fast recovery without SACK (RFC 6582)
    SACK = "SACK"            # fast recovery driven by pipe and RACK's marks (RFC 6675)
    TIMEOUT = "timeout"      # after an RTO with SACK: slow start, RACK resends the lost
    PROBE = "probe repair"   # a lost PMTU probe's bytes resent; no congestion (RFC 8899)


# modes in which the pipe-driven loop of RFC 6675 decides what goes out
PIPE_DRIVEN: Final = (Mode.SACK, Mode.TIMEOUT)
# Read per ACK and per segment, as module constants: Python 3.11 reads an enum member
# through its class (`Mode.NONE`) by EnumType's slow attribute path, several times a
# global's cost; under mypyc both are C statics
NO_RECOVERY: Final = Mode.NONE
_ESTABLISHED: Final = State.ESTABLISHED


class UndoEpisode:
    """A loss response that may prove needless (DSACK-based undo, as Linux's
    undo_retrans): the window before it, and its retransmissions the receiver has not
    yet reported as duplicates."""

    __slots__ = ("cwnd", "expiry", "fast", "high", "marker", "retrans", "ssthresh")

    def __init__(self, marker: int, high: int, fast: bool, cwnd: int,
                 ssthresh: int | None) -> None:
        self.marker = marker    # snd_una when the episode began
        self.high = high        # snd_max then: what it may retransmit
        self.expiry: int | None = None  # over once this is acknowledged
        self.retrans = 0
        self.fast = fast        # a fast recovery (else a timeout)
        self.cwnd = cwnd
        self.ssthresh = ssthresh


class LossRecovery:
    __slots__ = ("cc", "conn", "dupacks", "mode", "rack", "recover", "round_end",
                 "rto_streak", "rtt", "rtt_seq", "rtt_time", "scoreboard", "tlp_resent",
                 "tlp_seq", "undo")
    __deletable__ = ("conn",)  # Connection.release cuts the cycle

    def __init__(self, conn: Connection, config: Config) -> None:
        self.conn = conn
        self.rtt = RttEstimator(config.rto_initial, config.rto_min, config.rto_max)
        name, iw = config.congestion, config.initial_cwnd_segments * conn.snd_mss
        # the default by a direct call: a native constructor under mypyc, where
        # congestion.create (an __init__.py, interpreted) was a Python call per connection
        self.cc = (NewReno(conn.snd_mss, iw) if name == "newreno"
                   else congestion.create(name, conn.snd_mss, iw))
        self.scoreboard = sack.Scoreboard()
        self.rack = SentLog()       # segments in flight and RACK's loss detection (SACK only)
        self.mode = Mode.NONE
        self.recover = conn.iss     # RFC 6582's "recover": snd_max when recovery began
        self.dupacks = 0
        self.rtt_seq: int | None = None  # the segment being timed (Karn's rule)
        self.rtt_time = 0.0
        self.round_end = 0          # snd_max when the current round trip began
        self.rto_streak = 0         # data/FIN timeouts in a row without progress
        self.tlp_seq: int | None = None  # where the outstanding tail loss probe starts
        self.tlp_resent: tuple[int, int] | None = None  # what the last probe sent again
        self.undo: UndoEpisode | None = None

    @property
    def in_recovery(self) -> bool:
        return self.mode is not NO_RECOVERY

    # ------------------------------------------------------------------ transmissions

    def on_sent(self, seq: int, n: int, fin: bool, now: float, retransmit: bool) -> None:
        """Bookkeeping for a data segment the connection is about to emit."""
        if retransmit:
            undo = self.undo
            if undo is not None and seq < undo.high:
                undo.retrans += 1
            if self.rtt_seq is not None and seq <= self.rtt_seq:
                self.rtt_seq = None  # Karn's rule
        else:
            if self.rtt_seq is None:
                self.rtt_seq = seq
                self.rtt_time = now
            if self.conn.timers.at[T_TLP] is None:
                self.arm_tail_loss_probe(now)
        if self.conn.sack_ok and (n or fin):
            self.rack.sent(seq, seq + n + (1 if fin else 0), now, retransmit)

    def on_handshake_rtt(self, sample: float, now: float) -> None:
        self.rtt.sample(sample)
        self.rack.on_rtt_sample(sample, now)

    # ------------------------------------------------------------------ acknowledgments

    def on_sack(self, seg: wire.Segment, ack: int, now: float) -> bool:
        """What this ACK delivers, in ascending order (RFC 8985 §6.2): the cumulative
        part, then the new SACK blocks; True if anything was newly delivered."""
        conn, rack, sb = self.conn, self.rack, self.scoreboard
        delivered = False
        if ack > conn.snd_una:
            delivered = rack.acked(ack, now)
        if seg.options.sack:
            blocks = []
            for left32, right32 in seg.options.sack:
                left = sq.unwrap(left32, conn.snd_una)
                right = sq.unwrap(right32, left)
                blocks.append((left, right))
            # RFC 2883 §4: a first block below the ACK, or inside the second, reports
            # a duplicate (D-SACK)
            left, right = blocks[0]
            if left < right and (right <= ack or (len(blocks) > 1 and (
                    blocks[1][0] <= left and right <= blocks[1][1]))):
                self.on_dsack(left, right)
                del blocks[0]
            low = max(ack, conn.snd_una)
            # A peer's blocks cover what it received of our transmissions: at most a
            # range per segment in flight, and per piece of one resent cut at today's
            # MSS (after a path-MTU fallback). Ranges of a byte each from a hostile peer
            # grew the scoreboard to half the flight (millions of entries, each insert
            # moving the rest, none of it charged to any budget).
            most = (rack.in_flight() + (conn.snd_max - conn.snd_una) // max(conn.snd_mss, 1)
                    + 16)
            for left, right in sorted(blocks):
                if low < left < right <= conn.snd_max and sb.add(left, right, most):
                    delivered |= rack.sacked(left, right, sb, now)
        return delivered

    def on_new_ack(self, seg: wire.Segment, ack: int, acked: int, flight: int,
                   now: float) -> None:
        """An ACK that moved snd_una (already moved): RTT, congestion window, the end
        of a recovery or its next step (RFC 5681, RFC 6582 §3.2, RFC 6675)."""
        conn, rack, cc = self.conn, self.rack, self.cc
        if self.scoreboard:
            self.scoreboard.trim(ack)
        self._sample_rtt(seg, ack, now)
        if ack >= self.round_end:
            cc.on_round(now)
            self.round_end = conn.snd_max
        mode = self.mode
        if mode is not NO_RECOVERY:
            if ack >= self.recover:           # full ACK: RFC 6582 §3.2 step 3
                self.mode = Mode.NONE
                rack.recovery_ended()
                if mode is Mode.TIMEOUT:
                    cc.on_ack(acked, flight, now)  # still in slow start
                elif mode is not Mode.PROBE:
                    cc.on_recovery_end()
            elif mode is Mode.TIMEOUT:
                cc.on_ack(acked, flight, now)  # slow start (RFC 5681 §3.1)
            elif mode is Mode.NEWRENO:         # partial ACK: step 4
                self.retransmit_first(now)
                cc.cwnd = max(cc.cwnd - acked + conn.snd_mss, conn.snd_mss)
            # SACK: the pipe-driven loop decides what to send (RFC 6675). PROBE: the
            # repair resent all of the probe's bytes at once; a partial ACK is one of
            # them arriving, and resending the next would only make duplicates
        else:
            pacer = conn.sender.pacer
            if pacer is not None and pacer.deadline is not None:
                # data the pacer holds back uses the window as much as data in flight:
                # the flight is pacing-limited, not application-limited (RFC 7661)
                flight = max(flight, cc.cwnd)
            cc.on_ack(acked, flight, now)
        undo = self.undo
        if undo is not None:
            if undo.expiry is None:
                if self.mode is NO_RECOVERY and ack >= self.recover:
                    # the recovery is over; its duplicates are reported by ACKs that
                    # come before the one for what is in flight now
                    undo.expiry = conn.snd_max
            elif ack >= undo.expiry:
                self.undo = None
        self.dupacks = 0
        self.rto_streak = 0
        self.tlp_seq = None  # progress ends a probe episode

    def _sample_rtt(self, seg: wire.Segment, ack: int, now: float) -> None:
        """Karn's rule: only a segment never retransmitted is timed; with timestamps
        the echo times even a retransmission (RFC 7323 §4)."""
        if self.rtt_seq is not None and ack > self.rtt_seq:
            sample = now - self.rtt_time
            self.rtt.sample(sample)
            self.cc.on_rtt_sample(sample, now)
            self.rack.on_rtt_sample(sample, now)
            self.rtt_seq = None
            return
        ts = seg.options.timestamps
        if self.rtt.backoff and ts and ts[1] and self.conn.ts.ok:
            # the backed-off timer ends with the first ACK that can be timed
            echoed = (self.conn.ts.clock(now) - ts[1]) & sq.MASK
            if echoed < 60_000:
                self.rtt.sample(echoed / 1000)
                self.rack.on_rtt_sample(echoed / 1000, now)

    def on_duplicate_ack(self, now: float) -> None:
        """RFC 5681 §2's duplicate ACK."""
        conn = self.conn
        conn.counters.dup_acks_received += 1
        self.dupacks += 1
        if self.mode is Mode.NEWRENO:
            self.cc.cwnd += conn.snd_mss   # RFC 6582 §3.2 step 4 (inflation)
        elif (self.mode is NO_RECOVERY and not conn.sack_ok
              and self.dupacks >= self._dupack_threshold() and conn.snd_una >= self.recover):
            self.enter_recovery(now)  # with SACK, RACK decides (after_ack)

    def after_ack(self, delivered: bool, now: float) -> None:
        """With SACK: RACK's loss detection on what this ACK delivered, and recovery if
        it found a loss (RFC 6675 §5 with RACK's marks for IsLost()); a loss found
        while a lost PMTU probe is repaired is congestion."""
        if delivered:
            self.detect(now)
        if self.rack.next_lost() is not None and (
                self.mode is Mode.PROBE
                or (self.mode is NO_RECOVERY and self.conn.snd_una >= self.recover)):
            self.enter_recovery(now)

    def detect(self, now: float) -> None:
        """RFC 8985 §6.2 step 5, and the reordering timer for what is not due yet."""
        rack, deadlines = self.rack, self.conn.timers.at
        _, timeout = rack.detect_loss(now, rack.reo_wnd(self.mode is not NO_RECOVERY,
                                                        self.rtt.srtt))
        if timeout > 0:
            deadline = now + timeout
            deadlines[T_REORDER] = deadline
            deadlines[T_TLP] = None  # RACK will decide first (RFC 8985 §7.2)
            rto_at = deadlines[T_RTX]
            if rto_at is not None and rto_at <= deadline:
                # nor may the RTO come first: while RACK waits out reordering the
                # timeout waits too (Linux's timer slot holds one or the other)
                deadlines[T_RTX] = deadline + REO_BEFORE_RTO
        else:
            deadlines[T_REORDER] = None

    def on_dsack(self, left: int, right: int) -> None:
        """The receiver got [left, right) twice (RFC 2883). When every retransmission of
        a loss episode comes back so, nothing was lost: undo the window reduction
        (RFC 4015's response; Linux's DSACK undo). RACK widens its reordering window."""
        conn = self.conn
        conn.counters.dsacks_received += 1
        probe = self.tlp_resent
        if probe is not None and probe[0] <= left < right <= probe[1]:
            # a tail loss probe that resent what had arrived (only its ACK was lost or
            # late): that says nothing about reordering (as Linux's FLAG_DSACK_TLP)
            self.tlp_resent = None
            return
        undo = self.undo
        episode = undo is not None and undo.marker <= left < right <= undo.high
        if undo is None or not episode or undo.fast:
            # RFC 8985 §6.2 step 4; but not for a timeout's needless resends: they come
            # of lost ACKs (or go-back-N after reneging), not of reordering
            self.rack.on_dsack(conn.snd_una, conn.snd_nxt)
        if undo is None or not episode or undo.retrans <= 0:
            return
        if undo.fast:
            self.rack.reordering_seen = True  # the original was late, not lost
        undo.retrans -= -(-(right - left) // conn.snd_mss)  # segments reported
        if undo.retrans > 0:
            return
        conn.counters.spurious_recoveries += 1
        if log.enabled():
            log.emit("undo", conn=conn.name, cwnd=undo.cwnd, snd_una=conn.snd_una)
        self.cc.undo(undo.cwnd, undo.ssthresh)
        self.undo = None
        if self.mode is not NO_RECOVERY and self.mode is not Mode.PROBE:
            self.mode = Mode.NONE
            self.rack.unmark_lost()  # what RACK thought lost was only late
            self.recover = conn.snd_una

    def _open_undo_episode(self, fast: bool) -> None:
        conn = self.conn
        self.undo = UndoEpisode(conn.snd_una, conn.snd_max, fast, self.cc.cwnd,
                                self.cc.ssthresh)

    def _dupack_threshold(self) -> int:
        """Without SACK: three (RFC 5681), or fewer when a small flight with nothing new
        to send could never produce three: RFC 5827's early retransmit."""
        conn = self.conn
        if conn.unsent:
            return DUPACK_THRESHOLD
        # bytes in flight, the FIN's sequence number left out: 1,000 bytes and a FIN in
        # one segment are one segment, not two
        span = min(conn.snd_max, conn.sndbuf.end) - conn.snd_una
        segments = -(-span // conn.sender.payload_room())
        if segments < 2:
            # a lone segment (a FIN alone, say): no later one can bring a duplicate ACK
            # that says it was lost, so RFC 5827 has no threshold for it; a stray
            # duplicate (a window update that repeats the window) must not resend it
            return DUPACK_THRESHOLD
        return min(DUPACK_THRESHOLD, segments - 1)

    # ------------------------------------------------------------------ entering recovery

    def enter_recovery(self, now: float) -> None:
        conn = self.conn
        conn.counters.fast_retransmits += 1
        if log.enabled():
            log.emit("fast_retransmit", conn=conn.name, snd_una=conn.snd_una)
        self.recover = conn.snd_max
        pmtu = conn.pmtu
        if pmtu is not None and pmtu.probe_seq == conn.snd_una:
            self._enter_probe_repair(pmtu.probe_end, now)
            return
        self._open_undo_episode(fast=True)
        self.cc.on_loss(conn.snd_max - conn.snd_una, now)
        if conn.sack_ok:
            # RFC 6675 §5: the first lost segment goes now; the rest as pipe allows
            self.mode = Mode.SACK
            self.send_pipe_driven(now, first=True)
        else:
            self.mode = Mode.NEWRENO
            self.retransmit_first(now)

    def _enter_probe_repair(self, lost_end: int, now: float) -> None:
        """A lost probe is no congestion, and it was one datagram: exactly its bytes are
        missing. Resend them all now (in segments that pass) and end this recovery when
        they are acknowledged, instead of NewReno's one segment per round trip."""
        conn = self.conn
        self.mode = Mode.PROBE
        self.recover = lost_end
        data_end = conn.sndbuf.end
        seq = conn.snd_una
        while seq < min(lost_end, data_end):
            n = min(min(conn.sender.payload_room(), lost_end - seq), data_end - seq)
            conn.sender.transmit(seq, n, now, fin=False)
            seq += n
        conn.timers.arm(T_RTX, now + self.rtt.rto)

    def retransmit_first(self, now: float) -> None:
        """Resend the first unacknowledged segment without rewinding snd_nxt."""
        conn = self.conn
        n = min(conn.sender.payload_room(), conn.sndbuf.end - conn.snd_una)
        if n > 0:
            conn.sender.transmit(conn.snd_una, n, now, fin=False)
        elif conn.sndbuf.fin_queued and not conn.sndbuf.fin_acked:
            conn.sender.transmit(conn.snd_una, 0, now, fin=True)
        conn.timers.arm(T_RTX, now + self.rtt.rto)

    def send_pipe_driven(self, now: float, first: bool = False) -> None:
        """RFC 6675 §5 steps (C)/(D), with RACK's marks for IsLost() (RFC 8985): while
        cwnd - pipe allows, lost segments first, then new data. `first` sends one
        segment whatever pipe says (the fast retransmission itself goes at once)."""
        conn, rack = self.conn, self.rack
        mss = conn.sender.payload_room()
        pipe = rack.pipe(conn.snd_una, conn.snd_max)
        pacer = conn.sender.pacer
        credit = conn.sender.pacing_credit(now)
        while first or self.cc.cwnd - pipe >= mss:
            lost = rack.next_lost()
            if first and lost is None:
                lost = rack.first()  # RFC 6675 §5 (4.3): the first segment, lost or not
            paced, first = not first, False
            if lost is not None:
                n = lost.end - lost.start
                if paced:
                    if credit < n and pacer is not None and pacer.blocks(now, credit, n):
                        break
                    credit -= n
                self._resend(lost.start, lost.end, mss, now)
                pipe += n
                continue
            # RFC 6675 §5 step (D): new data, as the peer's window allows
            window_end = conn.snd_una + min(conn.snd_wnd, conn.sender.send_limit())
            data_end = conn.sndbuf.end
            if conn.snd_nxt < data_end:
                n = min(min(mss, data_end - conn.snd_nxt), window_end - conn.snd_nxt)
                if n <= 0:
                    break
                if paced:
                    if credit < n and pacer is not None and pacer.blocks(now, credit, n):
                        break
                    credit -= n
                fin = conn.sndbuf.fin_queued and conn.sender.fin_fits(conn.snd_nxt + n)
                conn.sender.transmit(conn.snd_nxt, n, now, fin)
                conn.snd_nxt += n + (1 if fin else 0)
            elif conn.sndbuf.fin_queued and conn.sender.fin_fits(conn.snd_nxt):
                conn.sender.transmit(conn.snd_nxt, 0, now, fin=True)
                conn.snd_nxt += 1
                n = 1
            else:
                break
            conn.snd_max = max(conn.snd_max, conn.snd_nxt)
            pipe += n
        if pacer is not None:
            pacer.spent(credit)
        conn.timers.arm_if_idle(T_RTX, now + self.rtt.rto)

    def _resend(self, start: int, end: int, mss: int, now: float) -> None:
        """A segment as it was sent, in pieces if the room for payload shrank."""
        conn = self.conn
        if start == conn.snd_una:
            # the timeout counts from the first segment's latest transmission (as
            # Linux's tcp_rearm_rto), not from an ACK that came before it
            conn.timers.arm(T_RTX, now + self.rtt.rto)
        data_end = conn.sndbuf.end
        stop = min(end, data_end)
        seq = start
        while seq < stop:
            n = min(mss, stop - seq)
            conn.sender.transmit(seq, n, now, fin=seq + n == data_end < end)
            seq += n
        if start == data_end < end:
            conn.sender.transmit(start, 0, now, fin=True)  # a lone FIN

    # ------------------------------------------------------------------ timers

    def on_retransmission_timeout(self, now: float) -> None:
        """RFC 6298 §5.4-5.6 for data or FIN in flight (the connection handles the
        handshake's and gives up after max_retransmissions)."""
        conn = self.conn
        pmtu = conn.pmtu
        if pmtu is not None and pmtu.probe_seq == conn.snd_una:
            # the probe at the head timed out: a failed probe, not congestion (RFC 8899)
            pmtu.retransmitting(conn.snd_una, 1)
            self._enter_probe_repair(pmtu.probe_end, now)
            return
        if pmtu is not None and pmtu.on_rto():
            conn.snd_mss = pmtu.base  # a black hole for big segments: back to the base size
            self.cc.set_mss(pmtu.base)
        undo = self.undo
        if undo is None or undo.expiry is not None:
            self._open_undo_episode(fast=False)
        else:  # a timeout within a recovery (or after another): one episode, one undo
            undo.high = conn.snd_max
            undo.fast = False
        # RFC 5681 §3.1: back to slow start
        self.cc.on_rto(conn.snd_max - conn.snd_una, now)
        self.recover = conn.snd_max
        self.dupacks = 0
        conn.timers.cancel(T_REORDER)
        head = self.rack.first()
        if conn.sack_ok and head is not None and head.start == conn.snd_una \
                and not head.state & SACKED and conn.snd_wnd:
            # RFC 8985 §6.3 and RFC 6675 §5.1: resend what RACK now calls lost (the first
            # segment, and all sent longer than RACK.rtt + reo_wnd ago), SACKed data
            # not again, in slow start; RACK keeps finding lost retransmissions
            self.rack.on_timeout(now, self.rack.reo_wnd(True, self.rtt.srtt))
            self.mode = Mode.TIMEOUT
            self.send_pipe_driven(now, first=True)
        else:
            # Without SACK, or if the receiver dropped data it had SACKed (the head is
            # SACKed: it reneged): go back to snd_una and forget the SACKs (RFC 2018 §8).
            # So too when the window shrank to nothing under data in flight: the persist
            # timer then probes, and the window's opening sends again at once rather
            # than at the next backed-off timeout
            self.scoreboard.clear()
            self.rack.reset()
            self.mode = Mode.NONE
            conn.snd_nxt = conn.snd_una
        conn.timers.arm(T_RTX, now + self.rtt.rto)

    def arm_tail_loss_probe(self, now: float) -> None:
        """RFC 8985 §7.2: a probe timeout of two round trips, if it comes before the RTO."""
        conn = self.conn
        deadlines = conn.timers.at
        srtt = self.rtt.srtt
        state = conn.state
        if (not conn.sack_ok or srtt is None or self.mode is not NO_RECOVERY
                or self.tlp_seq is not None
                or (state is not _ESTABLISHED and state not in _PROBING_STATES)):
            deadlines[T_TLP] = None
            return
        pto = 2 * srtt
        if conn.snd_max - conn.snd_una <= conn.snd_mss:
            # a lone segment may wait for the receiver's delayed ACK: allow the worst case
            delack = 1.5 * srtt + WORST_CASE_DELAYED_ACK
            if delack > pto:
                pto = delack
        deadline = now + (pto if pto > 0.01 else 0.01)
        rto_at = deadlines[T_RTX]
        deadlines[T_TLP] = deadline if rto_at is None or deadline < rto_at else None

    def on_tail_loss_probe(self, now: float) -> None:
        """RFC 8985 §7.3: send one new segment if there is one, else the last again, so
        that its acknowledgment shows what the tail lost; the RTO stays as a backstop."""
        conn = self.conn
        conn.timers.cancel(T_TLP)
        if (self.mode is not NO_RECOVERY or conn.snd_una >= conn.snd_max
                or conn.state not in _PROBING_STATES):
            return
        conn.counters.tail_loss_probes += 1
        if log.enabled():
            log.emit("tail_loss_probe", conn=conn.name, snd_una=conn.snd_una)
        room = conn.sender.payload_room()
        data_end = conn.sndbuf.end
        n = min(room, data_end - conn.snd_nxt)
        if conn.snd_nxt == conn.snd_max and n > 0 and \
                conn.snd_nxt + n <= conn.snd_una + conn.snd_wnd:
            fin = conn.sndbuf.fin_queued and conn.sender.fin_fits(conn.snd_nxt + n)
            self.tlp_seq = conn.snd_nxt
            conn.sender.transmit(conn.snd_nxt, n, now, fin)
            conn.snd_nxt += n + (1 if fin else 0)
            conn.snd_max = max(conn.snd_max, conn.snd_nxt)
        else:
            end = min(conn.snd_max, data_end)
            last = self.rack.last()  # the last segment as it was sent, if it fits
            start = last.start if last is not None and last.end >= end else end - room
            start = max(max(conn.snd_una, start), end - room)
            if start < end:
                self.tlp_seq = start
                self.tlp_resent = (start, end)
                fin = conn.sndbuf.fin_queued and conn.snd_max == data_end + 1 and end == data_end
                conn.sender.transmit(start, end - start, now, fin)
            elif conn.sndbuf.fin_queued and not conn.sndbuf.fin_acked:
                self.tlp_seq = data_end
                conn.sender.transmit(data_end, 0, now, fin=True)
        conn.timers.arm(T_RTX, now + self.rtt.rto)

    def on_reorder_timeout(self, now: float) -> None:
        """RFC 8985 §6.3: segments RACK held back for reordering are now overdue."""
        conn = self.conn
        timers = conn.timers
        timers.cancel(T_REORDER)
        if conn.snd_una >= conn.snd_max or conn.state not in SYNCHRONIZED:
            return
        self.detect(now)
        if self.mode is NO_RECOVERY and conn.snd_una >= self.recover \
                and self.rack.next_lost() is not None:
            self.enter_recovery(now)
        elif not timers.armed(T_REORDER) and not timers.armed(T_TLP):
            self.arm_tail_loss_probe(now)
