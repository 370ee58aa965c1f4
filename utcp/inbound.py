"""A segment's way into a connection, in the order of RFC 9293 §3.10.7 as RFC 5961 and
RFC 7323 amend it (Linux's tcp_input.c): header prediction for the common case, the
handshake's answers, then for a synchronized connection SYN, the timestamp option,
PAWS, acceptability, RST, ACK (what it frees, then loss recovery's part, then the
window), TS.Recent, text and FIN. Each step drops what fails it, counted.

The order is the security argument (a blind forgery must pass every check before it
can change anything), so it lives in one place; the state it changes is the
connection's, and every change of state goes through `Connection.set_state`.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

from utcp import log, wire
from utcp import seq as sq
from utcp.errors import PeerHoldsPort
from utcp.events import EOF_RECEIVED, SEND_CLOSED
from utcp.pmtu import PmtuSearch
from utcp.state import CAN_RECEIVE, State
from utcp.state import Event as Ev
from utcp.timers import (
    T_ACK,
    T_IDLE,
    T_KEEPALIVE,
    T_PERSIST,
    T_REORDER,
    T_RTX,
    T_TIME_WAIT,
    T_TLP,
    T_USER,
)
from utcp.wire import ACK, FIN, PSH, RST, SECURE_REQUIRED, SYN

if TYPE_CHECKING:
    from utcp.connection import Connection


PEER_HOLDS_PORT: Final = ("the peer answered our SYN for an older connection on these ports,"
                          " which it holds in TIME_WAIT for 2 x msl")
# The states every segment is tested against, as module constants: Python 3.11 reads an
# enum member through its class (`State.ESTABLISHED`) by EnumType's slow attribute path,
# several times a global's cost; under mypyc both are C statics
_CLOSED: Final = State.CLOSED
_LISTEN: Final = State.LISTEN
_SYN_SENT: Final = State.SYN_SENT
_SYN_RCVD: Final = State.SYN_RCVD
_ESTABLISHED: Final = State.ESTABLISHED


def segment(conn: Connection, seg: wire.Segment, now: float) -> None:
    """Process one segment addressed to this connection."""
    state = conn.state
    if state is _CLOSED or state is _LISTEN:
        return
    conn.now = now
    conn.counters.segments_received += 1
    notify = conn.notify  # conn.touch(), inline: once per segment
    if notify is not None:
        notify(conn)
    payload = seg.payload
    if (state is _ESTABLISHED and (seg.flags | PSH) == ACK | PSH and payload
            and not conn.rcv.ooo and conn.receiver.fin_seq is None
            and not (seg.seq - conn.rcv_nxt) & sq.MASK
            and not (seg.ack - conn.snd_una) & sq.MASK
            and (seg.window << conn.snd_wscale) == conn.snd_wnd
            and len(payload) <= conn.rcv_adv - conn.rcv_nxt and not seg.options.sack
            and (seg.options.timestamps is not None or not conn.ts.ok)
            and (conn.memory_budget is None
                 or conn.memory_budget.used < conn.memory_budget.pressure)):
        # Header prediction (Van Jacobson; Linux's tcp_rcv_established fast path):
        # the next bytes in order, acknowledging nothing new, window unchanged. The
        # general path would do exactly this, after many checks that cannot fail.
        ts = conn.ts
        if ts.ok:
            if ts.paws_rejects(seg, now):  # paws(), inline
                conn.counters.paws_drops += 1
                conn.sender.ack_now = True
                conn.drop("PAWS: old timestamp")
                return
            ts.take_recent(seg, conn.rcv_nxt, now)  # in order, exact ACK
        n = len(payload)
        conn.snd_wl1, conn.snd_wl2 = conn.rcv_nxt, conn.snd_una
        conn.rcv.append(bytes(payload))
        conn.rcv_nxt += n
        conn.counters.bytes_received += n
        sender = conn.sender
        deadlines = conn.timers.at
        config = conn.config
        sender.unacked_segments += 1
        if sender.unacked_segments >= 2:
            sender.ack_now = True
        elif deadlines[T_ACK] is None:
            deadlines[T_ACK] = now + config.ack_delay
        # Connection.heard and then last_activity, for ESTABLISHED in one: the peer
        # is alive (keepalive restarts) and the connection is not idle
        sender.keepalive_sent = 0
        keepalive = config.keepalive_interval
        if keepalive is not None:
            deadlines[T_KEEPALIVE] = now + keepalive
        idle = config.idle_timeout
        if idle is not None:
            deadlines[T_IDLE] = now + idle
        return
    if conn.state is _SYN_SENT:
        syn_sent(conn, seg, now)
    else:
        synchronized(conn, seg, now)

def syn_sent(conn: Connection, seg: wire.Segment, now: float) -> None:
    flags = seg.flags
    ack_ok = False
    if flags & ACK:
        ack = sq.unwrap(seg.ack, conn.snd_una)
        if ack <= conn.iss or ack > conn.snd_max:
            if not flags & RST:
                conn.sender.emit(seg.ack, 0, RST, raw_seq=True)
                if not flags & SYN and conn.sender.yields_to_time_wait:
                    # a bare ACK for our SYN: what an older connection on these ports
                    # answers from TIME_WAIT, where it ignores our RST (RFC 1337)
                    conn.fail(PeerHoldsPort(errno.EADDRINUSE, PEER_HOLDS_PORT),
                              send_rst=False)
                    return
            conn.drop("unacceptable ACK in SYN_SENT")
            return
        ack_ok = True
    if flags & RST:
        if ack_ok:
            why = ("connection refused: the server is in secure mode; set"
                   " Config.server_key to its public key"
                   if SECURE_REQUIRED in seg.options.experimental
                   else "connection refused by peer")
            conn.fail(ConnectionRefusedError(why), send_rst=False)
        else:
            conn.drop("RST without ACK in SYN_SENT")
        return
    if not flags & SYN:
        conn.drop("no SYN in SYN_SENT")
        return
    take_syn(conn, seg)
    if ack_ok:
        handshake_acked(conn, sq.unwrap(seg.ack, conn.snd_una), now)
        update_window(conn, seg, conn.rcv_nxt - 1, conn.snd_una, force=True)
        conn.set_state(Ev.RCV_SYN_ACK)
        conn.heard(now)  # synchronized only now: _handshake_acked could not arm it
        # The handshake's last ACK waits for the next timer service at this same
        # instant: an application that writes as soon as it is connected (a request,
        # a TLS ClientHello) has its first bytes carry it, one datagram fewer, as
        # Linux does when a write is pending.
        conn.sender.defer_ack(now)
    else:
        # simultaneous open (RFC 9293 §3.5, figure 8): answer with SYN+ACK
        conn.set_state(Ev.RCV_SYN)
        conn.snd_nxt = conn.iss
        conn.timers.arm(T_RTX, now + conn.recovery.rtt.rto)

def take_syn(conn: Connection, seg: wire.Segment) -> None:
    """Record what the peer's SYN tells us: its ISN, MSS and window scale."""
    conn.irs = seg.seq
    conn.rcv_nxt = seg.seq + 1
    opts = seg.options
    peer_mss = max(opts.mss if opts.mss else wire.DEFAULT_MSS, 64)
    base = min(conn.config.mss, peer_mss)
    conn.snd_mss = min(conn.snd_mss, peer_mss)  # above base: a loopback peer's start
    ceiling = min(peer_mss, conn.max_mss)
    if conn.config.pmtu_probing and ceiling > base:
        conn.pmtu = PmtuSearch(base, ceiling, conn.snd_mss)
    conn.recovery.cc.set_mss(conn.snd_mss)
    conn.recovery.cc.cwnd = conn.config.initial_cwnd_segments * conn.snd_mss
    conn.sender.wscale_ok = opts.wscale is not None
    if opts.wscale is not None:
        conn.snd_wscale = opts.wscale
    else:
        conn.rcv_wscale = 0  # RFC 7323 §2.2: scaling needs both sides' option
    conn.sack_ok = conn.config.sack and opts.sack_permitted
    ts = conn.config.timestamps and opts.timestamps is not None
    if conn.sack_ok:
        # 4 blocks fill the 40 bytes of options; secure mode's counter takes 12 of them,
        # timestamps 12 more
        conn.sender.sack_limit = ((1 if ts else 3) if conn.config.secure else
                                  (3 if ts else 4))
    if ts and opts.timestamps is not None:
        conn.ts.ok = True
        conn.ts.recent = opts.timestamps[0]
        conn.ts.recent_time = conn.now
    conn.snd_wnd = seg.window  # never scaled in a SYN
    conn.max_snd_wnd = conn.snd_wnd
    conn.rcv_adv = conn.rcv_nxt

def handshake_acked(conn: Connection, ack: int, now: float) -> None:
    """Our SYN is acknowledged: the first RTT sample, unless the SYN was resent."""
    conn.snd_una = ack
    if conn.snd_nxt < ack:
        conn.snd_nxt = ack
    if conn.sender.syn_retries == 0:
        conn.recovery.on_handshake_rtt(now - conn.sender.syn_time, now)
    conn.timers.cancel(T_RTX)
    conn.sender.syn_retries = 0
    conn.last_activity(now)

def synchronized(conn: Connection, seg: wire.Segment, now: float) -> None:
    """RFC 9293 §3.10.7.4 with RFC 5961 and RFC 7323, in this order, each step dropping
    what fails it: SYN (a challenge ACK, any sequence number); a missing timestamp
    option once negotiated (RFC 7323 §3.2: silent drop); PAWS (R1: test only);
    acceptability (R2); RST (exact rcv_nxt only); ACK (present, and RFC 5961 §5.2's
    range, for data and FIN too); TS.Recent (R3: only now, from an acceptable
    segment); the ACK's effects; text; FIN (held until in order, forgotten when data
    or another FIN contradicts it)."""
    flags = seg.flags
    seg_seq = sq.unwrap(seg.seq, conn.rcv_nxt)
    if flags & SYN:
        _syn_again(conn, seg, seg_seq, now)
        return
    if conn.ts.ok and seg.options.timestamps is None and not flags & RST:
        # RFC 7323 §3.2: once negotiated, every segment but a RST carries the option
        # (FreeBSD drops one without it too); a blind forgery must then also pick a
        # TSval that passes PAWS, half of them
        conn.drop("no timestamp option")
        return
    # RFC 7323 §5.3 R1, before the window check; TS.Recent moves only below (R3)
    if conn.ts.ok and paws(conn, seg, now):
        conn.sender.ack_now = True
        conn.drop("PAWS: old timestamp")
        return
    if not _acceptable(conn, seg, seg_seq, now):
        return
    if flags & RST:
        _reset(conn, seg_seq, now)
        return
    fin_now_acked = _ack(conn, seg, seg_seq, now)
    if fin_now_acked is None:
        return
    complete = _text(conn, seg, seg_seq)
    if complete is None:
        return
    _fin(conn, seg, seg_seq, complete, fin_now_acked, now)

def _syn_again(conn: Connection, seg: wire.Segment, seg_seq: int, now: float) -> None:
    """A SYN we have already seen: retransmitted SYN, or the peer's SYN+ACK again;
    any other SYN is a challenge ACK, never a reset (RFC 5961 §4)."""
    flags = seg.flags
    if seg_seq == conn.irs and not flags & RST:
        if conn.state is State.SYN_RCVD and not flags & ACK:
            conn.snd_nxt = conn.iss  # our SYN+ACK was lost: send it again
            return
        if conn.state is State.SYN_RCVD:
            ack = sq.unwrap(seg.ack, conn.snd_una)
            if conn.snd_una < ack <= conn.snd_max:  # simultaneous open completes
                handshake_acked(conn, ack, now)
                update_window(conn, seg, seg_seq, ack, force=True)
                conn.set_state(Ev.RCV_ACK_OF_SYN)
                conn.heard(now)
                conn.sender.ack_now = True
                return
        conn.sender.ack_now = True  # our ACK of it was lost
        conn.drop("duplicate SYN")
        return
    # RFC 5961 §4 / RFC 9293 §3.10.7.4 fourth: challenge ACK, never a reset
    conn.sender.challenge_ack(now)
    conn.drop("SYN in synchronized state")

def _acceptable(conn: Connection, seg: wire.Segment, seg_seq: int, now: float) -> bool:
    """The first check: the segment's sequence numbers against the window we offered
    (RFC 9293 §3.10.7.4, the table); one that fails is answered with an ACK."""
    flags = seg.flags
    payload = seg.payload
    seg_len = len(payload) + (1 if flags & FIN else 0)
    wnd = max(conn.rcv_adv - conn.rcv_nxt, 0)
    if seg_len == 0:
        ok = (seg_seq == conn.rcv_nxt) if wnd == 0 else (
            conn.rcv_nxt <= seg_seq < conn.rcv_nxt + wnd)
    elif wnd == 0:
        ok = seg_seq == conn.rcv_nxt  # keep its ACK; the text is trimmed away below
    else:
        end = seg_seq + seg_len - 1
        ok = (conn.rcv_nxt <= seg_seq < conn.rcv_nxt + wnd) or (
            conn.rcv_nxt <= end < conn.rcv_nxt + wnd)
    if not ok:
        if not flags & RST:
            conn.sender.ack_now = True
            if payload and seg_seq + len(payload) <= conn.rcv_nxt and conn.sack_ok:
                conn.sender.dsack = (seg_seq, seg_seq + len(payload))  # RFC 2883: a duplicate
            if (conn.state is State.TIME_WAIT and flags & FIN
                    and seg_seq + len(payload) == conn.receiver.fin_seq
                    and ack_acceptable(conn, seg)):
                # RFC 9293: the peer's FIN again restarts 2MSL; only that FIN, else
                # blind FINs at any sequence number would hold TIME_WAIT forever
                conn.timers.arm(T_TIME_WAIT, now + 2 * conn.config.msl)
        conn.drop("outside window")
        return False
    return True

def _reset(conn: Connection, seg_seq: int, now: float) -> None:
    """Second: RST. Only an exact match resets; in-window gets a challenge ACK
    (RFC 5961 §3)."""
    if conn.state is State.TIME_WAIT:
        conn.drop("RST in TIME_WAIT")  # RFC 1337: no TIME-WAIT assassination
        return
    if seg_seq != conn.rcv_nxt:
        conn.sender.challenge_ack(now)
        conn.drop("RST not at rcv_nxt")
        return
    if conn.state is State.SYN_RCVD:
        err: Exception | None = (None if conn.passive else
                                 ConnectionRefusedError("connection refused by peer"))
    elif conn.state in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2,
                        State.CLOSE_WAIT):
        err = ConnectionResetError("connection reset by peer")
    else:
        err = None
    if log.enabled():
        log.emit("reset", conn=conn.name, state=conn.state.name)
    conn.fail(err, send_rst=False, event=Ev.RCV_RST)

def _ack(conn: Connection, seg: wire.Segment, seg_seq: int, now: float) -> bool | None:
    """Fifth: the ACK, which must be present and within RFC 5961 §5.2's range (for
    data and FIN too); None when the segment is dropped, else whether it
    acknowledged our FIN."""
    flags = seg.flags
    if not flags & ACK:
        conn.drop("no ACK")
        return None
    ack = sq.unwrap(seg.ack, conn.snd_una)
    if conn.state is _SYN_RCVD:
        if not conn.snd_una < ack <= conn.snd_max:
            conn.sender.emit(seg.ack, 0, RST, raw_seq=True)
            conn.drop("bad ACK in SYN_RCVD")
            return None
        handshake_acked(conn, conn.iss + 1, now)
        update_window(conn, seg, seg_seq, ack, force=True)
        conn.set_state(Ev.RCV_ACK_OF_SYN)
    if ack > conn.snd_max:
        conn.sender.challenge_ack(now)  # RFC 9293 / RFC 5961 §5: ACK of what was never sent
        conn.drop("ACK of unsent data")
        return None
    if ack < oldest_acceptable_ack(conn):
        conn.sender.challenge_ack(now)  # RFC 5961 §5: an ACK too old to be from this peer
        conn.drop("ACK too old")
        return None
    if conn.ts.ok:
        conn.ts.take_recent(seg, seg_seq, now)  # RFC 7323 R3: acceptable at last
    conn.heard(now)
    return process_ack(conn, seg, seg_seq, ack, len(seg.payload), now)

def _text(conn: Connection, seg: wire.Segment, seg_seq: int) -> bool | None:
    """Seventh: text. False if its tail (and so any FIN after it) was cut off; None
    when the connection was reset for data past a FIN it took."""
    payload = seg.payload
    complete = True
    fin_seq = conn.receiver.fin_seq
    if payload and conn.state in CAN_RECEIVE:
        if conn.orphaned and seg_seq + len(payload) > conn.rcv_nxt:
            # New bytes for an application that has closed: nobody will read them.
            # Reset, as Linux does (TCPAbortOnData): the peer's writes then fail at
            # once, where swallowing them let it go on sending until fin_timeout. The
            # application asked for its close, so it is told of no error.
            conn.drop("data after the application closed")
            conn.fail(None, send_rst=True)
            return None
        if fin_seq is not None and seg_seq + len(payload) > fin_seq:
            # Data past a FIN still waiting for the bytes before it: one of the two is
            # not the peer's, and a blind FIN is the cheaper forgery (the data must hit
            # the window and carry an acceptable ACK just the same, but a genuine peer
            # never sends it). The data wins, as in Linux's out-of-order queue, and the
            # peer's own FIN is taken when it comes; a FIN kept here would never be
            # reached, and the connection could not close.
            conn.receiver.forget_fin(fin_seq, "data past it")
        complete = conn.receiver.take_text(seg_seq, payload)
    elif payload:
        if (fin_seq is not None and seg_seq <= conn.rcv_nxt
                and seg_seq + len(payload) > fin_seq
                and conn.state in (State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK)):
            # Data across the FIN we took, or right after it (the peer, told by our ACK
            # that its byte there arrived, resends from the next): that FIN was forged
            # (or the peer is broken) and the stream delivered was cut short. Reset, as
            # RFC 1122 §4.2.2.13 and Linux (TCPAbortOnData), rather than ignore the
            # peer's bytes and leave it retransmitting them until it times out. Data
            # further on is only ignored: a blind guess in the window must not reset.
            conn.drop("data across the FIN taken")
            conn.fail(ConnectionResetError("data arrived past the peer's FIN"),
                      send_rst=True)
            return None
        conn.drop("data after FIN")
    elif seg.flags & FIN and seg_seq >= conn.rcv_adv and seg_seq != conn.rcv_nxt:
        # A FIN past the window we offered. A bare FIN at rcv_nxt is taken even when
        # the window is shut: it costs no memory, and a sender that sends one there
        # (utcp up to 0.1 did) would resend it until it gave up on a live connection.
        # Linux's receiver takes it too (seen on 6.18), and smoltcp's
        complete = False
    return complete

def _fin(conn: Connection, seg: wire.Segment, seg_seq: int, complete: bool, fin_now_acked: bool,
         now: float) -> None:
    """Eighth: FIN, held until the bytes before it are in; and what acknowledging
    our FIN does to the state."""
    flags = seg.flags
    payload = seg.payload
    if flags & FIN and complete and not conn.receiver.fin_received:
        conn.receiver.record_fin(seg_seq + len(payload))
    fin_in_order = (conn.receiver.fin_seq is not None and not conn.receiver.fin_received
                    and conn.rcv_nxt == conn.receiver.fin_seq)
    if flags & FIN and not payload and not fin_in_order:
        conn.sender.ack_now = True  # a bare FIN past a hole: duplicate ACK at once (RFC 5681)
    if fin_in_order:
        receive_fin(conn, fin_now_acked)
    elif fin_now_acked and conn.state in (State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK):
        conn.set_state(Ev.RCV_ACK_OF_FIN)
    if payload or flags & FIN:
        conn.last_activity(now)

def process_ack(conn: Connection, seg: wire.Segment, seg_seq: int, ack: int, text_len: int,
                 now: float) -> bool:
    """RFC 9293's fifth step: what the ACK frees, then loss recovery's part
    (`utcp.recovery`), then the send window; True if our FIN got acked."""
    rec = conn.recovery
    delivered = rec.on_sack(seg, ack, now) if conn.sack_ok else False
    fin_acked_now = False
    if ack > conn.snd_una:
        acked = ack - conn.snd_una
        fin_acked_now = free_acked(conn, ack)
        flight = conn.snd_max - conn.snd_una
        conn.snd_una = ack
        if conn.snd_nxt < ack:
            conn.snd_nxt = ack  # data past a go-back-N rewind had arrived after all
        if conn.pmtu is not None:
            pmtu_acked(conn, ack)
        rec.on_new_ack(seg, ack, acked, flight, now)
        deadlines = conn.timers.at
        deadlines[T_USER] = None
        conn.last_activity(now)  # progress: not idle, even if all we send is resends
        if conn.snd_una < conn.snd_max:
            deadlines[T_RTX] = now + rec.rtt.rto  # RFC 6298 §5.3
            user_timeout = conn.config.user_timeout
            if user_timeout is not None:
                deadlines[T_USER] = now + user_timeout
            rec.arm_tail_loss_probe(now)
        else:
            deadlines[T_RTX] = deadlines[T_TLP] = deadlines[T_REORDER] = None
        conn.sender.persist_backoff = 0
    elif (ack == conn.snd_una and conn.snd_una < conn.snd_max and text_len == 0
          and not seg.flags & (FIN | SYN) and (seg.window << conn.snd_wscale) == conn.snd_wnd):
        rec.on_duplicate_ack(now)
    if conn.sack_ok:
        rec.after_ack(delivered, now)
    update_window(conn, seg, seg_seq, ack)
    return fin_acked_now

def free_acked(conn: Connection, ack: int) -> bool:
    """Drop acknowledged bytes from the send buffer; True if this ACK covers our FIN."""
    data_end = conn.sndbuf.end
    conn.counters.bytes_acked += conn.sndbuf.free(ack)
    if conn.sndbuf.fin_queued and not conn.sndbuf.fin_acked and ack > data_end:
        conn.sndbuf.fin_acked = True
        conn.events.append(SEND_CLOSED)
        return True
    return False

def pmtu_acked(conn: Connection, ack: int) -> None:
    assert conn.pmtu is not None
    conn.pmtu.progress()
    confirmed = conn.pmtu.acked(ack)
    if confirmed is not None and confirmed > conn.snd_mss:
        conn.snd_mss = confirmed
        conn.recovery.cc.set_mss(confirmed)
        if log.enabled():
            log.emit("pmtu", conn=conn.name, mss=confirmed)

def update_window(conn: Connection, seg: wire.Segment, seg_seq: int, ack: int,
                   force: bool = False) -> None:
    """RFC 9293 §3.10.7.4: take the window only from a segment newer than the last; and,
    as Linux's tcp_may_update_window, from any ACK newer than the last one taken. The
    peer's resent segment carries an older SEG.SEQ but its current ACK and window: with
    RFC 9293's rule alone, an ACK that moved snd_una there kept the old window, and
    snd_una + snd_wnd lay past the edge the peer had advertised (a FIN, or data, went
    into its shut window)."""
    if ack < conn.snd_una and not force:
        return  # a duplicate of an old ACK: its window is old news too
    wl1 = conn.snd_wl1
    if force or wl1 < seg_seq or conn.snd_wl2 < ack or (wl1 == seg_seq
                                                          and conn.snd_wl2 <= ack):
        shift = 0 if seg.flags & SYN else conn.snd_wscale
        conn.snd_wnd = seg.window << shift
        conn.snd_wl1 = seg_seq
        conn.snd_wl2 = ack
        if conn.snd_wnd > conn.max_snd_wnd:
            conn.max_snd_wnd = conn.snd_wnd
        conn.sender.probes_out = 0  # the peer answers (a probe, or anything newer)
        if conn.snd_wnd:
            conn.timers.at[T_PERSIST] = None
        elif not conn.orphaned:
            # A window shut under data in flight (shrunk, or the FIN's): every timeout
            # finds it still shut, and what it resends (or the probes standing in) is a
            # zero-window probe. An answer keeps a live peer's connection, as it does for
            # probes, and as Linux's tcp_retransmit_timer keeps it; an orphan's count runs
            conn.recovery.rto_streak = 0

def receive_fin(conn: Connection, fin_now_acked: bool) -> None:
    conn.receiver.fin_received = True
    conn.rcv_nxt += 1
    conn.events.append(EOF_RECEIVED)
    conn.sender.ack_now = True
    if conn.state in (State.SYN_RCVD, State.ESTABLISHED):
        # Passive close. The ACK goes at once, not deferred for our own FIN to carry
        # it (three datagrams to close, as Linux's delayed ACK of a FIN allows): the
        # peer's close() returns when its FIN is acknowledged, so a deferred ACK made
        # it wait for this application's next turn (about 40 us of every close on
        # loopback, 10-15% of a sequential connect and close). One datagram more.
        conn.set_state(Ev.RCV_FIN)
        return
    if conn.state is State.FIN_WAIT_1:
        if fin_now_acked:
            conn.set_state(Ev.RCV_FIN_ACK_OF_FIN)
        else:
            conn.set_state(Ev.RCV_FIN)  # simultaneous close: CLOSING
    elif conn.state is State.FIN_WAIT_2:
        conn.set_state(Ev.RCV_FIN)

def paws(conn: Connection, seg: wire.Segment, now: float) -> bool:
    if conn.ts.paws_rejects(seg, now):
        conn.counters.paws_drops += 1
        return True
    return False

def oldest_acceptable_ack(conn: Connection) -> int:
    """RFC 5961 §5.2: SND.UNA - MAX.SND.WND <= SEG.ACK, and never below ISS + 1.

    RFC 5961 allows an ACK up to the largest window the peer ever offered behind
    SND.UNA, but a peer never acknowledges what precedes our SYN: clamping at ISS + 1
    leaves a blind attacker on a connection that sent little (an upload's receiver)
    a handful of acceptable values in 2^32 instead of MAX.SND.WND."""
    oldest = conn.snd_una - (conn.max_snd_wnd if conn.max_snd_wnd > 1 else 1)
    return oldest if oldest > conn.iss + 1 else conn.iss + 1

def ack_acceptable(conn: Connection, seg: wire.Segment) -> bool:
    """RFC 5961 §5.2's whole test, for a segment not otherwise taken."""
    if not seg.flags & ACK:
        return False
    ack = sq.unwrap(seg.ack, conn.snd_una)
    return oldest_acceptable_ack(conn) <= ack <= conn.snd_max
