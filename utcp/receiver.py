"""What a connection does with the text and FIN a peer sends, once the segment has
passed the checks of RFC 9293 §3.10.7.4 (the connection's): trimming to the window,
reassembly, the FIN held until the bytes before it are in (and forgotten when data
contradicts it), the memory each piece may take, and when a window update is worth an ACK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from utcp import log
from utcp.buffers import MEMORY_FLOOR, OOO_PIECE_OVERHEAD, RCV_PIECE_OVERHEAD
from utcp.state import CAN_RECEIVE
from utcp.timers import T_ACK
from utcp.wire import ACK, MAX_WINDOW_FIELD

if TYPE_CHECKING:
    from utcp.connection import Connection

# The first window update, when the peer may still send this many full segments into
# the SYN's window, waits for the next timer service at the same instant.
UPDATE_CAN_WAIT_SEGMENTS = 4


class Receiver:
    __slots__ = ("conn", "fin_received", "fin_seq", "update_owed")
    __deletable__ = ("conn",)  # Connection.release cuts the cycle

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fin_seq: int | None = None  # sequence number of the peer's FIN, once seen
        self.fin_received = False
        self.update_owed = False  # a window update to defer at the next output

    def take_text(self, seg_seq: int, payload: bytes | memoryview) -> bool:
        """Take in-window text; False if its tail (and so any FIN after it) was cut off."""
        conn = self.conn
        # trim to the window: before rcv_nxt is old, past rcv_adv was never offered
        if seg_seq < conn.rcv_nxt:
            if conn.sack_ok:
                conn.sender.dsack = (seg_seq, conn.rcv_nxt)  # the part we had (RFC 2883)
            payload = payload[conn.rcv_nxt - seg_seq:]
            seg_seq = conn.rcv_nxt
        room = conn.rcv_adv - seg_seq
        complete = len(payload) <= room
        if not complete:
            payload = payload[:max(room, 0)]
            conn.sender.ack_now = True
        if not payload:
            conn.sender.ack_now = True
            return complete
        if seg_seq == conn.rcv_nxt:
            if not self.admit(len(payload) + RCV_PIECE_OVERHEAD):
                return False
            conn.rcv.append(bytes(payload))
            conn.rcv_nxt += len(payload)
            conn.counters.bytes_received += len(payload)
            if conn.rcv.ooo:
                rcv_nxt = conn.rcv.drain(conn.rcv_nxt)
                conn.counters.bytes_received += rcv_nxt - conn.rcv_nxt
                conn.rcv_nxt = rcv_nxt
                conn.sender.ack_now = True  # RFC 5681 §4.2: ACK at once when a hole fills
            else:
                # RFC 9293 §3.8.6.3: at least every second segment, else the delay timer
                conn.sender.unacked_segments += 1
                if conn.sender.unacked_segments >= 2:
                    conn.sender.ack_now = True
        else:
            held = self._hold_out_of_order(seg_seq, payload)
            if held is None:
                return complete  # a duplicate of a piece we hold: its ACK went out
            # held: its duplicate ACK went out too, and nothing more is owed (the delay
            # timer armed here sent the same ACK again 40 ms later: one duplicate ACK
            # more than segments arrived, and with two genuine ones a segment only
            # reordered was resent as lost)
            return complete if held else False
        deadlines = conn.timers.at
        if not conn.sender.ack_now and deadlines[T_ACK] is None:
            deadlines[T_ACK] = conn.now + conn.config.ack_delay
        return complete

    def _hold_out_of_order(self, seg_seq: int, payload: bytes | memoryview) -> bool | None:
        """Keep a piece past a hole for reassembly; False if it had to be dropped, None
        if it was there already."""
        conn = self.conn
        conn.counters.ooo_segments_received += 1
        # One duplicate ACK per out-of-order segment, sent now rather than once per
        # batch of datagrams, so the sender counts three and retransmits fast; it
        # goes out after the piece is stored, so its SACK blocks include it.
        rcv = conn.rcv
        rcv.latest_ooo = seg_seq
        piece = bytes(payload)
        i, held = rcv.find_ooo(seg_seq, piece)
        if held:
            if conn.sack_ok:
                conn.sender.dsack = (seg_seq, seg_seq + len(payload))
            conn.sender.emit(conn.sender.ack_seq(), 0, ACK)
            return None
        # The cap is against floods of tiny pieces: full-sized segments are held up to
        # the window we advertised, else one tail drop costs a go-back-N of the rest.
        if len(rcv.ooo) >= max(conn.config.max_ooo_segments,
                               2 * conn.config.recv_buffer // conn.config.mss):
            conn.drop("out-of-order queue full")
            return False
        cost = len(payload) + OOO_PIECE_OVERHEAD
        budget = rcv.budget
        if budget is not None and budget.used + cost > budget.limit:
            conn.drop("endpoint reassembly budget exhausted")
            return False
        if not self.admit(cost):
            return False
        rcv.insert_ooo(i, seg_seq, piece, cost)
        conn.sender.emit(conn.sender.ack_seq(), 0, ACK)
        return True

    def record_fin(self, fin_at: int) -> None:
        """Hold the peer's FIN at `fin_at` until the bytes before it are in.

        A genuine peer sends one FIN, at one place; two FINs at different places, or a
        FIN before data already held, mean one was forged. The newest FIN replaces an
        older one (the peer retransmits its own until we acknowledge it, so a forgery
        cannot outlast it), unless it lies before data we hold (delivered, or out of
        order): it could never be reached, or the bytes after it never delivered. A FIN
        at rcv_nxt is taken whatever follows it (Linux: tcp_fin drops the out-of-order
        queue)."""
        conn = self.conn
        if fin_at == self.fin_seq:
            return
        if fin_at < conn.rcv_nxt or (fin_at > conn.rcv_nxt and conn.rcv.holds_past(fin_at)):
            conn.counters.fins_ignored += 1
            if log.enabled():
                log.emit("drop", conn=conn.name, reason="FIN before data held",
                         state=conn.state.name)
            return
        if self.fin_seq is not None:
            self.forget_fin(self.fin_seq, "another FIN")
        self.fin_seq = fin_at

    def forget_fin(self, fin_at: int, why: str) -> None:
        conn = self.conn
        self.fin_seq = None
        conn.counters.fins_ignored += 1
        if log.enabled():
            log.emit("drop", conn=conn.name, reason=f"FIN overridden by {why}",
                     state=conn.state.name, fin=fin_at)

    def window_update(self) -> None:
        """Receiver SWS avoidance (RFC 9293 §3.8.6.2.2): announce only a worthwhile opening."""
        conn = self.conn
        if conn.state not in CAN_RECEIVE:
            return
        new_edge = conn.rcv_nxt + self.space()
        grow = new_edge - conn.rcv_adv
        current = conn.rcv_adv - conn.rcv_nxt
        if grow >= min(conn.config.recv_buffer // 2, 2 * conn.snd_mss) or (
                current < conn.snd_mss and grow > 0 and current + grow >= conn.snd_mss):
            if (current >= UPDATE_CAN_WAIT_SEGMENTS * conn.config.mss
                    and conn.rcv_adv - conn.irs <= 1 + MAX_WINDOW_FIELD):
                # The first update, after the SYN's unscaled window (64 KiB at most):
                # typically a server's first read of a request, with room left for
                # several segments. It waits for the next timer service at this same
                # instant (`Connection.datagrams_to_send` defers it, so the endpoint
                # files that deadline as it services the connection), and the answer
                # the application writes on reading carries it: one datagram fewer.
                self.update_owed = True
            else:
                conn.sender.ack_now = True
            conn.touch()

    def defer_update(self, now: float) -> None:
        """The owed window update waits for the next timer service (or a segment)."""
        self.update_owed = False
        self.conn.sender.defer_ack(now)

    def admit(self, cost: int) -> bool:
        """Whether a received piece of `cost` bytes of memory may be kept (tcp_mem[2])."""
        conn = self.conn
        budget = conn.memory_budget
        if budget is None:
            return True
        mine = conn.memory_in_use()
        if budget.used + (mine - conn.charged) + cost <= budget.limit or \
                mine + cost <= MEMORY_FLOOR:
            return True
        budget.drops += 1
        conn.drop("endpoint memory exhausted")
        return False

    def space(self) -> int:
        """Room to offer in the receive window: under memory pressure no more than the
        floor, so the windows promised in all cannot outgrow the budget (tcp_mem[1])."""
        conn = self.conn
        space = conn.config.recv_buffer - conn.rcv.size
        budget = conn.memory_budget
        if budget is not None and budget.used >= budget.pressure:
            space = min(space, MEMORY_FLOOR - conn.rcv.size)
        return space
