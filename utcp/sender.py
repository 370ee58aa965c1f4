"""Everything a connection sends, built here: SYN and SYN+ACK, new data as the windows,
the pacer and sender SWS avoidance allow, retransmissions asked for by loss recovery,
ACKs with their timestamp and SACK options, zero-window probes and challenge ACKs.

The connection decides *when* (its segment processing and timers); this class decides
*what* a segment carries and keeps the state only sending needs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from utcp import sack, wire
from utcp import seq as sq
from utcp.buffers import MEMORY_FLOOR, NO_ITEMS
from utcp.pacing import Pacer
from utcp.recovery import NO_RECOVERY, PIPE_DRIVEN
from utcp.state import SYNCHRONIZED, State
from utcp.timers import T_ACK, T_IDLE, T_PERSIST, T_REORDER, T_RTX, T_USER
from utcp.wire import ACK, FIN, PSH, SYN

if TYPE_CHECKING:
    from utcp.connection import Connection

CHALLENGE_ACK_LIMIT: Final = 100  # per second per connection (RFC 5961 §7; Linux: 1000 per host)
# RFC 1122 §4.2.3.4: the override of sender SWS avoidance fires within 0.1-1.0 s; it
# shares the persist timer (as RFC 1122 suggests and Linux's probe0 timer does) at one RTO
SWS_OVERRIDE_MAX: Final = 1.0
MIN_SEGMENT: Final = 36  # Linux's floor for a segment bounded by half the window (68 - 32)
# Linux's tcp_orphan_retries (0 there means 8): zero-window probes an orphan sends
# without the window opening before it is given up, however the peer answers
ORPHAN_PROBES: Final = 8
# read per segment: a global, not Python 3.11's slow path to an enum member (`State.X`)
_ESTABLISHED: Final = State.ESTABLISHED
_TIME_WAIT: Final = State.TIME_WAIT


class Sender:
    __slots__ = (
        "ack_now",
        "challenge_window_start",
        "challenges_in_window",
        "conn",
        "dsack",
        "keepalive_sent",
        "out",
        "pacer",
        "persist_backoff",
        "persist_since",
        "probes_out",
        "sack_limit",
        "sws_override",
        "syn_retries",
        "syn_time",
        "unacked_segments",
        "wscale_ok",
        "yields_to_time_wait",
    )
    __deletable__ = ("conn",)  # Connection.release cuts the cycle

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.out: list[bytes] = NO_ITEMS  # built segments the caller has not taken
        # acknowledgment generation
        self.ack_now = False
        self.unacked_segments = 0  # full-sized segments received since our last ACK
        self.dsack: tuple[int, int] | None = None  # a duplicate to report (RFC 2883)
        # SACK blocks a segment has room for, set once SACK is agreed (`inbound.take_syn`)
        self.sack_limit = 4
        # zero-window probes and the sender SWS override (RFC 9293 §3.8.6.2.1)
        self.persist_backoff = 0
        self.probes_out = 0  # zero-window probes the peer has not answered
        self.persist_since: float | None = None  # when the window shut (no progress since)
        self.sws_override = False  # the override timer fired: send what the window allows
        # RFC 5961 §7's rate limit
        self.challenge_window_start = -1e18
        self.challenges_in_window = 0
        # the handshake: our SYN's first transmission, its retransmissions so far, and
        # whether both SYNs carried the window scale option
        self.syn_time = 0.0
        self.syn_retries = 0
        self.wscale_ok = False
        # Set by a caller that can connect again from another port: our SYN answered by
        # an older connection's ACK then ends the connect with PeerHoldsPort rather
        # than retrying for as long as the peer's TIME_WAIT lasts.
        self.yields_to_time_wait = False
        self.keepalive_sent = 0  # keepalive probes unanswered
        self.pacer: Pacer | None = Pacer() if conn.config.pacing else None

    def _out(self) -> list[bytes]:
        """The list segments are built into: one of its own once there is one to keep
        (an idle connection holds the shared empty list)."""
        out = self.out
        if out is NO_ITEMS:
            out = []
            self.out = out
        return out

    def on_persist_timeout(self, now: float) -> bool:
        """A zero-window probe, or the override of sender SWS avoidance when the window
        is open but small; False when the connection is over."""
        conn = self.conn
        conn.timers.cancel(T_PERSIST)
        if not conn.to_send or conn.snd_nxt != conn.snd_una:
            return True
        if conn.snd_wnd:
            # RFC 9293 §3.8.6.2.1: sender SWS avoidance held back a segment smaller than
            # the window would have taken; nothing is in flight to bring an ACK that
            # widens it, so the override sends what the window allows now
            self.sws_override = True
            return True
        self.sws_override = False
        # RFC 1122 §4.2.2.17 keeps a connection whose peer answers probes; one that does
        # not is gone, as after unanswered retransmissions (Linux's tcp_probe_timer
        # counts icsk_probes_out against tcp_retries2 and resets it on any ACK)
        if self.probes_out >= conn.config.max_retransmissions:
            conn.fail(TimeoutError(f"zero-window probes unanswered after {self.probes_out}"
                                    " probes"), send_rst=True)
            return False
        # An orphan has nobody to read what it holds: answered probes do not save it once
        # the probes have backed off ORPHAN_PROBES times without progress (Linux's
        # tcp_orphan_retries; the backoff restarts only when data is acknowledged)
        if conn.orphaned and self.persist_backoff >= ORPHAN_PROBES:
            conn.fail(TimeoutError(f"orphaned connection: the peer's window stayed shut"
                                    f" for {ORPHAN_PROBES} probes"), send_rst=True)
            return False
        # A probe one byte below snd_una is never acceptable, so the peer must answer with
        # an ACK carrying its current window (what Linux does; RFC 9293 §3.8.6.1).
        self.emit(conn.snd_una - 1, 0, ACK)
        self.probes_out += 1
        self.persist_backoff = min(self.persist_backoff + 1, 16)
        conn.timers.arm(T_PERSIST, now + min(conn.recovery.rtt.rto * (1 << self.persist_backoff),
                                             conn.config.rto_max))
        return True

    def defer_ack(self, now: float) -> None:
        """ACK at the next timer service, unless a segment leaving before carries it."""
        deadlines = self.conn.timers.at
        ack_at = deadlines[T_ACK]
        if not self.ack_now and (ack_at is None or ack_at > now):
            deadlines[T_ACK] = now

    def output(self, now: float) -> None:
        conn = self.conn
        conn.now = now
        state = conn.state
        if conn.snd_nxt == conn.iss == conn.snd_una:
            # SYN (or SYN+ACK) to send or resend; also after a close in SYN_RCVD, whose
            # FIN_WAIT_1 must still retransmit the unacknowledged SYN+ACK, not a FIN at ISS
            self.send_syn(now)
            return
        if state is _ESTABLISHED or (state in SYNCHRONIZED and state is not _TIME_WAIT):
            if conn.recovery.mode in PIPE_DRIVEN:
                conn.recovery.send_pipe_driven(now)
            else:
                self.send_new_data(now)
        if self.ack_now:
            self.emit(self.ack_seq(), 0, ACK)

    def ack_seq(self) -> int:
        """The sequence number of a segment without data (a pure ACK, a RST) that the
        peer will accept: snd_max, not a snd_nxt rewound by go-back-N after an RTO (BSD's
        tcp_output does the same; the peer has seen up to snd_max, and would drop a
        segment below its rcv_nxt as old, ACK field and all), but no further than the
        right edge of the peer's window. Past it (a FIN or data sent into a window that
        has since shut) the peer would drop the segment as out of its window, ACK field
        and all: our answers to its keepalive probes would never count and it would end
        a live connection, and a RST would be ignored (Linux's tcp_acceptable_seq)."""
        conn = self.conn
        edge = conn.snd_una + conn.snd_wnd
        return conn.snd_max if conn.snd_max <= edge else edge

    def send_syn(self, now: float) -> None:
        conn = self.conn
        flags = SYN if conn.state is State.SYN_SENT else SYN | ACK
        # the MSS option says what we can receive: with probing, any datagram the route takes
        mss = max(conn.config.mss, conn.max_mss) if conn.config.pmtu_probing \
            else conn.config.mss
        offer_ts = conn.ts.ok if flags & ACK else conn.config.timestamps
        if conn.ts.syn_tsval is None:
            # a retransmitted SYN repeats the first one's timestamp: the same segment
            # (secure mode's handshake authenticates the header it was first sent with)
            conn.ts.syn_tsval = conn.ts.clock(now)
        opts = wire.Options(mss=mss, wscale=conn.rcv_wscale,
                            sack_permitted=conn.sack_ok if flags & ACK else conn.config.sack,
                            timestamps=(conn.ts.syn_tsval, conn.ts.recent if flags & ACK
                                        else 0) if offer_ts else None)
        if flags & ACK and not self.wscale_ok:
            opts.wscale = None
        if self.syn_retries:
            conn.counters.segments_retransmitted += 1
        else:
            self.syn_time = now
        conn.snd_nxt = conn.iss + 1
        conn.snd_max = max(conn.snd_max, conn.snd_nxt)
        window = min(conn.config.recv_buffer, wire.MAX_WINDOW_FIELD)  # never scaled in a SYN
        ack = sq.wrap(conn.rcv_nxt) if flags & ACK else 0
        if flags & ACK:
            conn.rcv_adv = max(conn.rcv_adv, conn.rcv_nxt + window)
            conn.ts.last_ack_sent = conn.rcv_nxt
            self.ack_now = False
        self._out().append(wire.build(wire.Segment(
            conn.local_port, conn.remote_port, sq.wrap(conn.iss), ack, flags, window,
            options=opts)))
        conn.counters.segments_sent += 1
        if not conn.timers.armed(T_RTX):
            conn.timers.arm(T_RTX, now + conn.recovery.rtt.rto)

    def send_new_data(self, now: float) -> None:
        """New data (and the FIN after it) as far as the peer's window, cwnd, the send
        buffer, the pacer and sender SWS avoidance allow."""
        conn = self.conn
        if self.persist_since is not None and conn.snd_wnd:
            # the window opened: progress, so what goes now gets a fresh user_timeout
            self.persist_since = None
            if conn.snd_una == conn.snd_max:
                conn.timers.at[T_USER] = None
        data_end = conn.sndbuf.end
        snd_max = conn.snd_max
        mss = self.payload_room()
        # RFC 3042 limited transmit: a new segment for each of the first two duplicate
        # ACKs keeps the ACK clock going, so a small window can still reach three
        recovery = conn.recovery
        dupacks = recovery.dupacks
        bonus = dupacks * mss if dupacks and dupacks <= 2 and recovery.mode is NO_RECOVERY \
            else 0
        pacer = self.pacer
        credit = self.pacing_credit(now)
        sws_held = False
        send_limit = self.send_limit()
        while True:
            # the least of snd_wnd, cwnd (+ limited transmit) and the send limit, in
            # conditional expressions: native under mypyc, and no builtin call per
            # segment in the pure-Python build
            window = recovery.cc.cwnd + bonus
            if send_limit < window:
                window = send_limit
            if conn.snd_wnd < window:
                window = conn.snd_wnd
            remaining = data_end - conn.snd_nxt
            if remaining > 0:
                n, probe = self._next_size(window, remaining, mss)
                if n <= 0:
                    sws_held = n < 0
                    break
                if credit < n and pacer is not None and pacer.blocks(now, credit, n):
                    break  # the pacer's timer sends it
                credit -= n
                if probe and conn.pmtu is not None:
                    conn.pmtu.sent(conn.snd_nxt, n)
                fin = conn.sndbuf.fin_queued and self.fin_fits(conn.snd_nxt + n)
                self.transmit(conn.snd_nxt, n, now, fin)
                conn.snd_nxt += n + (1 if fin else 0)
            elif conn.sndbuf.fin_queued and self.fin_fits(conn.snd_nxt):
                self.transmit(conn.snd_nxt, 0, now, fin=True)
                conn.snd_nxt += 1
            else:
                break
            if conn.snd_nxt > conn.snd_max:
                conn.snd_max = conn.snd_nxt
        if pacer is not None:
            pacer.spent(credit)
        if conn.snd_max > snd_max and conn.timers.at[T_REORDER] is None:
            # RFC 8985 §7.2: restart the probe timer after new data, for the whole
            # flight (armed at the burst's first segment, it took that for a lone one)
            conn.recovery.arm_tail_loss_probe(now)
        if conn.snd_nxt == conn.snd_una:
            self._arm_persist(now, sws_held)

    def fin_fits(self, seq: int) -> bool:
        """Whether the FIN goes at `seq`, new (or again after go-back-N): only right after
        the data, and only inside the peer's window. A FIN is a sequence number like a
        byte, and a receiver that keeps to RFC 9293's acceptability test drops one past
        its window: sent anyway, it was resent by RTO until `max_retransmissions` ended
        a connection whose peer was alive and only not reading. Held, it waits for the
        window with the persist timer, as Linux's tcp_snd_wnd_test holds it. A FIN
        already sent is resent from snd_una whatever the window (`LossRecovery`), as
        Linux's tcp_retransmit_skb resends the head."""
        conn = self.conn
        return seq == conn.sndbuf.end and seq < conn.snd_una + conn.snd_wnd

    def _next_size(self, window: int, remaining: int, mss: int) -> tuple[int, bool]:
        """The next new segment's payload, and whether it is a PMTU probe; 0 to stop
        here, -1 to stop for sender SWS avoidance (the override timer may send it)."""
        conn = self.conn
        usable = conn.snd_una + window - conn.snd_nxt
        n = remaining if remaining < mss else mss
        if usable < n:
            n = usable
        if n <= 0:
            return 0, False
        pmtu = conn.pmtu
        if pmtu is not None and conn.recovery.mode is NO_RECOVERY \
                and conn.snd_nxt == conn.snd_max:
            size = pmtu.next_size()
            # three segments behind the probe, so its loss shows as duplicate ACKs (fast)
            # rather than a timeout; a peer window that never held that much has no room
            # for it (and gets half-window segments)
            if size is not None and size + 3 * mss <= min(remaining, conn.max_snd_wnd):
                if size <= usable:
                    return size, True  # a probe: real data, one size up (RFC 4821 §7.2)
                if window >= size:
                    return 0, False  # let ACKs free room for the probe rather than fill it
        if n < mss and n < remaining:
            if conn.snd_nxt >= conn.snd_max and n >= conn.snd_una + conn.snd_wnd - conn.snd_nxt:
                # RFC 9293 §3.8.6.2.1 sender SWS avoidance: the peer's window is the limit.
                # Less than a full segment (bounded by half the window: payload_room) and
                # not all that is queued goes if it is at least half the largest window
                # the peer offered (Fs = 1/2), or when the override timer fired; else an
                # ACK, or the timer when nothing is in flight, brings the rest
                if 2 * n < conn.max_snd_wnd and not self.sws_override:
                    return -1, False
            elif conn.snd_nxt > conn.snd_una:
                return 0, False  # cwnd, send_buffer or a resend: the ACK in flight makes room
            self.sws_override = False
        return n, False

    def _arm_persist(self, now: float, sws_held: bool) -> None:
        """Nothing in flight (snd_nxt == snd_una, the caller's test) to bring the ACK
        that would let the rest go: the override of SWS avoidance, or zero-window probes
        until the window opens."""
        conn = self.conn
        timers = conn.timers
        if sws_held and not timers.armed(T_PERSIST):
            timers.arm(T_PERSIST, now + min(conn.recovery.rtt.rto, SWS_OVERRIDE_MAX))
        if conn.snd_wnd == 0 and conn.to_send:
            # the override timer may be armed already (the window was small, then shut):
            # it probes when it fires, but user_timeout must count from now all the same
            if not timers.armed(T_PERSIST):
                timers.arm(T_PERSIST, now + conn.recovery.rtt.rto)
            if self.persist_since is None:
                # the last progress was now (the ACK that shut the window, or the
                # application's data meeting a shut one): TCP_USER_TIMEOUT counts from
                # here whether or not the peer answers the probes (Linux 5.11's
                # icsk_probes_tstamp)
                self.persist_since = now
                if conn.config.user_timeout is not None and not timers.armed(T_USER):
                    timers.arm(T_USER, now + conn.config.user_timeout)

    def pacing_credit(self, now: float) -> float:
        """Bytes the pacer lets leave now (`utcp.pacing`); inf when pacing is off."""
        conn = self.conn
        pacer = self.pacer
        if pacer is None:
            return math.inf
        cc = conn.recovery.cc
        return pacer.refill(now, cc.cwnd, cc.ssthresh, conn.recovery.rtt.srtt, conn.snd_mss)

    def payload_room(self) -> int:
        """The MSS less the options a data segment will carry (RFC 9293 §3.7.1): SACK
        blocks ride on every segment while out-of-order data is held."""
        conn = self.conn
        room = conn.snd_mss - 12 if conn.ts.ok else conn.snd_mss
        if (conn.rcv.ooo or self.dsack) and conn.sack_ok:
            blocks = len(conn.rcv.held.starts) + (self.dsack is not None)
            room -= 4 + 8 * min(blocks, self.sack_limit)
        # A peer that never offered two segments' worth gets segments of half its largest
        # window (Linux's tcp_bound_to_half_wnd; RFC 9293 §3.8.6.2.1's Fs = 1/2): a
        # 2,000-byte window takes two 1,000-byte segments at once, where full-sized
        # ones would leave the rest waiting a round trip (or the override timer)
        wnd = conn.max_snd_wnd
        cutoff = wnd >> 1 if wnd > wire.DEFAULT_MSS else wnd
        if 0 < cutoff < room:
            return min(room, max(cutoff, MIN_SEGMENT))
        return room

    def transmit(self, seq: int, n: int, now: float, fin: bool) -> None:
        conn = self.conn
        payload = conn.sndbuf.view(seq, n) if n else b""
        flags = ACK | (FIN if fin else 0)
        if n and seq + n == conn.sndbuf.end:
            flags |= PSH
        retransmit = seq < conn.snd_max
        if retransmit:
            if conn.pmtu is not None:
                conn.pmtu.retransmitting(seq, n)
            conn.counters.segments_retransmitted += 1
            conn.counters.bytes_retransmitted += n
        else:
            conn.counters.bytes_sent += n
        conn.recovery.on_sent(seq, n, fin, now, retransmit)
        self.emit(seq, n, flags, payload=payload)
        if not isinstance(payload, bytes):  # a view (mypyc tests bytes natively)
            payload.release()
        deadlines = conn.timers.at
        if deadlines[T_RTX] is None:
            deadlines[T_RTX] = now + conn.recovery.rtt.rto
            user_timeout = conn.config.user_timeout
            if user_timeout is not None and deadlines[T_USER] is None:
                deadlines[T_USER] = now + user_timeout
        if n or fin:
            idle = deadlines[T_IDLE] if retransmit else None
            conn.last_activity(now)
            if idle is not None:
                # resending to a peer that has gone quiet is no activity: idle_timeout
                # still ends it (in FIN_WAIT_1, CLOSING, LAST_ACK too), not only
                # max_retransmissions backed off to rto_max
                deadlines[T_IDLE] = idle

    def emit(self, seq: int, n: int, flags: int, payload: bytes | memoryview = b"",
              raw_seq: bool = False) -> None:
        """Build one segment; every segment but a bare RST carries our current ACK."""
        conn = self.conn
        ack = 0
        window = 0
        if flags & ACK:
            ack = conn.rcv_nxt & sq.MASK
            window = self.window_field()
            self.ack_now = False
            self.unacked_segments = 0
            conn.timers.at[T_ACK] = None
        options = b""
        if flags & ACK:
            ts = conn.ts
            ts.last_ack_sent = conn.rcv_nxt
            ooo = conn.rcv.ooo
            sacking = bool(ooo or self.dsack is not None) and conn.sack_ok
            if ts.ok and not sacking:
                # the common segment: header and timestamps in one pack (wire.build_ts)
                self._out().append(wire.build_ts(
                    conn.local_port, conn.remote_port, seq if raw_seq else seq & sq.MASK,
                    ack, flags, window, (int(conn.now * 1000) + ts.offset) & sq.MASK,  # ts.clock
                    ts.recent, payload))
                conn.counters.segments_sent += 1
                return
            if ts.ok:
                options = ts.option(conn.now)
            if sacking:
                limit = self.sack_limit
                blocks = (sack.receiver_blocks(conn.rcv.held, conn.rcv.latest_ooo, limit)
                          if ooo else [])
                if self.dsack is not None:  # RFC 2883: first, once
                    blocks = [self.dsack, *blocks[:limit - 1]]
                    self.dsack = None
                options += sack.encode_blocks([(sq.wrap(a), sq.wrap(b)) for a, b in blocks])
        self._out().append(wire.build_fast(
            conn.local_port, conn.remote_port, seq if raw_seq else sq.wrap(seq), ack, flags,
            window, options, payload))
        conn.counters.segments_sent += 1

    def window_field(self) -> int:
        """The window to advertise, rounded up so the right edge never moves left."""
        conn = self.conn
        shift = conn.rcv_wscale
        space = conn.config.recv_buffer - conn.rcv.size
        budget = conn.memory_budget
        if budget is not None and budget.used >= budget.pressure:
            space = conn.receiver.space()  # the rare case: out of line
        wnd = conn.rcv_adv - conn.rcv_nxt  # never shrink what we offered (max of three)
        if space > wnd:
            wnd = space
        if wnd < 0:
            wnd = 0
        field = (wnd + (1 << shift) - 1) >> shift
        if field > wire.MAX_WINDOW_FIELD:
            field = wire.MAX_WINDOW_FIELD
        edge = conn.rcv_nxt + (field << shift)
        if edge > conn.rcv_adv:
            conn.rcv_adv = edge
        return field

    def send_limit(self) -> int:
        """Bytes in flight at most: the send buffer, or the floor under memory pressure."""
        conn = self.conn
        budget = conn.memory_budget
        if budget is not None and budget.used >= budget.pressure:
            return min(conn.config.send_buffer, MEMORY_FLOOR)
        return conn.config.send_buffer

    def challenge_ack(self, now: float) -> None:
        """RFC 5961 §7: answer a suspicious segment with an ACK, at most so many a second."""
        conn = self.conn
        if now - self.challenge_window_start >= 1.0:
            self.challenge_window_start = now
            self.challenges_in_window = 0
        if self.challenges_in_window >= CHALLENGE_ACK_LIMIT:
            conn.counters.challenge_acks_suppressed += 1
            return
        self.challenges_in_window += 1
        conn.counters.challenge_acks += 1
        self.ack_now = True
