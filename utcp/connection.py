"""One TCP connection (the TCB of RFC 9293) as a sans-IO state machine.

Inputs: `receive(segment, now)`, `send(data)`, `close()`, `abort()`, `handle_timer(now)`.
Outputs, pulled by the caller: `datagrams_to_send(now)`, `get_timer()`, `next_event()`,
`read()`. No socket and no clock: every time is an argument, so a test can run a
60-second TIME_WAIT in microseconds.

Sequence numbers are kept *unwrapped* (see `utcp.seq`); only the wire sees 32 bits.
The connection holds the TCB's variables and its life cycle; its collaborators each
own one concern and hold a reference back (docs/architecture.md maps them):
`utcp.inbound` (a segment's way in, in RFC 9293 §3.10.7's order as RFC 5961 and RFC 7323
amend it), `utcp.receiver` (text, reassembly, FIN), `utcp.sender` (every segment
built), `utcp.recovery` (loss detection, recovery, congestion control), `utcp.timers`.
Every change of state goes through `set_state`, and so through `utcp.state`'s table.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

from utcp import inbound, log, wire
from utcp import seq as sq
from utcp.buffers import (
    MEMORY_FLOOR,
    NO_ITEMS,
    OOO_PIECE_OVERHEAD,
    RCV_PIECE_OVERHEAD,
    MemoryBudget,
    ReceiveBuffer,
    SendBuffer,
)
from utcp.config import Config
from utcp.events import (
    HANDSHAKE_COMPLETED,
    STATE_CHANGES,
    TERMINATED,
    Event,
    Terminated,
)
from utcp.pmtu import PmtuSearch
from utcp.receiver import Receiver
from utcp.recovery import LossRecovery
from utcp.sender import CHALLENGE_ACK_LIMIT, ORPHAN_PROBES, SWS_OVERRIDE_MAX, Sender
from utcp.state import CAN_SEND, SYNCHRONIZED, TRANSITIONS, State, next_state
from utcp.state import Event as Ev
from utcp.stats import Counters, Stats
from utcp.timers import (
    T_ACK,
    T_FIN_WAIT_2,
    T_IDLE,
    T_KEEPALIVE,
    T_PERSIST,
    T_REORDER,
    T_RTX,
    T_TIME_WAIT,
    T_TLP,
    T_USER,
    Timers,
)
from utcp.timers import Timer as T
from utcp.timestamps import Timestamps
from utcp.wire import ACK, RST, SECURE_REQUIRED, SYN

__all__ = [  # with the limits its behaviour is named by, which live where they act
    "CHALLENGE_ACK_LIMIT",
    "MEMORY_FLOOR",
    "OOO_PIECE_OVERHEAD",
    "ORPHAN_PROBES",
    "RCV_PIECE_OVERHEAD",
    "SECURE_REQUIRED",
    "SWS_OVERRIDE_MAX",
    "Connection",
    "Stats",
    "window_scale_for",
]


_TIMER_ORDER: Final = tuple(range(len(T)))  # priority order (utcp.timers)
# Members read per segment, as module constants: through its class (`State.ESTABLISHED`)
# Python 3.11 finds an enum member by EnumType's slow attribute path, several times the
# cost of a global; under mypyc both are C statics
_ESTABLISHED: Final = State.ESTABLISHED
_TIME_WAIT: Final = State.TIME_WAIT
_CLOSED: Final = State.CLOSED
# and those set_state reads at each of a connection's transitions (it reads TRANSITIONS
# in place too: a call of next_state per transition cost the pure build a frame, so it
# calls next_state only for a pair the table lacks, to raise IllegalTransition)
_FIN_WAIT_2: Final = State.FIN_WAIT_2
_LISTEN: Final = State.LISTEN
_BORN: Final = Ev.LISTEN


def window_scale_for(buffer: int) -> int:
    """The smallest shift that lets a 16-bit field describe the whole buffer (RFC 7323)."""
    shift = 0
    while (buffer >> shift) > wire.MAX_WINDOW_FIELD and shift < wire.MAX_WSCALE:
        shift += 1
    return shift


class Connection:
    # Slots, not a __dict__: with more than 30 attributes CPython 3.11 gives each
    # instance a dict of its own (no key sharing), 3.3 KiB per connection, most of an
    # idle connection's memory (issue #14: 100,000 connections at <= 8 KiB each).
    # "__dict__" stays as a fallback, created only when an attribute missing here is
    # set (tests/test_memory_idle.py notices the cost); "__weakref__" as before.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "charged",
        "config",
        "counters",
        "error",
        "events",
        "irs",
        "iss",
        "local_port",
        "max_mss",
        "max_snd_wnd",
        "memory_budget",
        "name",
        "notify",
        "now",
        "orphaned",
        "passive",
        "peer",
        "pmtu",
        "rcv",
        "rcv_adv",
        "rcv_nxt",
        "rcv_wscale",
        "receiver",
        "recovery",
        "refusal_hint",
        "remote_port",
        "sack_ok",
        "sender",
        "snd_max",
        "snd_mss",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "sndbuf",
        "state",
        "timers",
        "ts",
    )

    def __init__(self, config: Config, *, local_port: int, remote_port: int,
                 iss: int | None = None, name: str = "") -> None:
        self.config = config
        self.local_port = local_port
        self.remote_port = remote_port
        self.name = name
        self.peer: tuple[str, int] = ("", remote_port)  # set by the endpoint that owns us
        self.state = State.CLOSED
        self.passive = False
        self.notify: Callable[[Connection], None] | None = None
        # A list, not a deque: an empty deque is 760 bytes (a whole block), and a
        # connection rarely holds more than a few events between two polls.
        self.events: list[Event] = []
        self.error: Exception | None = None
        self.now = 0.0

        # send sequence space (unwrapped)
        self.iss = secrets.randbits(32) if iss is None else iss & sq.MASK
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_max = self.iss      # highest sequence number sent + 1
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.snd_wscale = 0          # the peer's shift: applies to windows it sends
        self.max_snd_wnd = 0
        self.snd_mss = config.mss    # to start with; the peer's SYN caps it (take_syn)
        self.max_mss = config.mss    # the local route's ceiling; the I/O layer may raise it
        self.pmtu: PmtuSearch | None = None
        self.sndbuf = SendBuffer(self.iss + 1)

        # receive sequence space (unwrapped once the peer's SYN arrives)
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = window_scale_for(config.recv_buffer)  # our shift
        self.rcv_adv = 0             # right edge of the window we advertised
        self.rcv = ReceiveBuffer()
        self.memory_budget: MemoryBudget | None = None  # shared by an endpoint
        self.charged = 0  # what this connection has charged to memory_budget

        # timers (absolute deadlines on the caller's clock)
        self.timers = Timers()
        # set by secure mode: an unauthenticated refusal came (it may be forged, so it
        # does not end the connect); if the SYNs then run out, this is the error
        self.refusal_hint: str | None = None
        # The application closed the transport and will never read or write again
        # (`orphan`, called by the I/O layer; a bare close() is also asyncio's
        # write_eof): a shut window then pins memory nobody will use, so it is bounded
        # (ORPHAN_PROBES), and so is FIN_WAIT_2 (Config.fin_timeout)
        self.orphaned = False

        # loss detection, recovery and congestion control (utcp.recovery)
        self.sender = Sender(self)  # what goes out (utcp.sender)
        self.receiver = Receiver(self)  # what comes in, once checked (utcp.receiver)
        self.recovery = LossRecovery(self, config)
        self.sack_ok = False         # both sides sent SACK-permitted (RFC 2018)
        self.ts = Timestamps(self.iss)  # RFC 7323, once both SYNs carry the option
        self.counters = Counters()

    # ------------------------------------------------------------------ application calls

    def connect(self, now: float) -> None:
        """Active open: send SYN (RFC 9293 §3.10.1)."""
        self.set_state(Ev.ACTIVE_OPEN)
        self.timers.arm(T.RTX, now + self.recovery.rtt.rto)
        self.touch()

    def accept_syn(self, segment: wire.Segment, now: float) -> None:
        """Passive open: a listener hands us the SYN it received (LISTEN -> SYN_RCVD)."""
        self.passive = True
        self.set_state(Ev.LISTEN)
        self.now = now
        inbound.take_syn(self, segment)
        self.set_state(Ev.PASSIVE_OPEN)
        self.timers.arm(T.RTX, now + self.recovery.rtt.rto)
        self.last_activity(now)
        self.touch()

    def accept_cookie(self, ack: wire.Segment, mss: int, peer_wscale: int | None,
                      now: float, *, sack: bool = False, timestamps: bool = False) -> None:
        """A SYN cookie (RFC 4987) came back: rebuild what the SYN told us, then take the ACK.

        The listener answered that SYN statelessly with ISN = the cookie (our `iss`), so
        the SYN+ACK counts as sent, with the window it advertised, and it gives no RTT.
        With timestamps, the SYN+ACK's TSval (echoed in the ACK's TSecr) was the
        listener's, not our clock: ours starts from it, so the peer's PAWS (RFC 7323
        §5) never sees our TSval go back.
        """
        self.passive = True
        self.set_state(Ev.LISTEN)
        ts = ack.options.timestamps if timestamps else None
        syn = wire.Segment(ack.src_port, ack.dst_port, (ack.seq - 1) & sq.MASK, 0, SYN,
                           ack.window, options=wire.Options(
                               mss=mss, wscale=peer_wscale, sack_permitted=sack,
                               timestamps=(ts[0], 0) if ts is not None else None))
        self.now = now
        inbound.take_syn(self, syn)
        if ts is not None:
            self.ts.follow(ts[1], now)
        self.set_state(Ev.PASSIVE_OPEN)
        self.snd_nxt = self.snd_max = self.iss + 1
        self.rcv_adv = self.rcv_nxt + min(self.config.recv_buffer, wire.MAX_WINDOW_FIELD)
        self.ts.last_ack_sent = self.rcv_nxt  # what the SYN+ACK acknowledged
        self.sender.syn_retries = 1
        self.last_activity(now)
        self.touch()
        inbound.segment(self, ack, now)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes to send. Raises once the sending side is closed."""
        if self.state not in CAN_SEND or self.sndbuf.fin_queued:
            raise ConnectionError(f"cannot send in state {self.state.name}"
                                  + (" after close" if self.sndbuf.fin_queued else ""))
        if data:
            self.sndbuf.append(data)
            self.recharge()
            self.touch()

    def close(self) -> None:
        """Graceful close: FIN after all queued data (RFC 9293 §3.10.4)."""
        if self.sndbuf.fin_queued or self.state in (State.CLOSED, State.TIME_WAIT):
            return
        if self.state in (State.SYN_SENT, State.LISTEN):
            self.set_state(Ev.CLOSE)
            return
        self.sndbuf.fin_queued = True
        self.set_state(Ev.CLOSE)
        self.touch()

    def orphan(self, now: float) -> None:
        """The application is gone for good (it closed the transport, not only its
        sending side): nobody will read what the peer still sends. As Linux with a socket
        no process holds, FIN_WAIT_2 is then bounded by `Config.fin_timeout`, counted from
        now if we are there already, else from when we get there (`set_state`)."""
        self.orphaned = True
        if self.state is State.FIN_WAIT_2 and self._arm_fin_timeout(now):
            self.touch()  # the endpoint files the new deadline

    def abort(self) -> None:
        """Send RST if the peer knows us, and forget everything (RFC 9293 §3.10.5)."""
        if self.state is State.CLOSED:
            return
        if self.state in (State.SYN_RCVD, State.ESTABLISHED, State.FIN_WAIT_1,
                          State.FIN_WAIT_2, State.CLOSE_WAIT):
            self.sender.emit(self.sender.ack_seq(), 0, RST | ACK)
        self.set_state(Ev.ABORT)

    def icmp_unreachable(self, seq: int | None = None) -> bool:
        """The network says nothing listens at the peer's port (ICMP port unreachable).

        Over UDP that is what a peer whose process died leaves behind: no kernel answers
        for its connections, so the ICMP is the RST it cannot send, and it ends the
        connection in any state but TIME_WAIT (a connect with ConnectionRefusedError,
        later ConnectionResetError), unless the peer had closed in order
        (`_left_in_order`). `seq` is the sequence number of the segment the ICMP quotes
        (RFC 5927 §4.1). Not any byte in flight, as Linux's range for TCP's soft
        errors: a blind attacker would hit that with probability flight / 2**32 (1 in
        1,024 against 4 MiB), where an RST needs the exact number (RFC 5961). Only what
        we send to a dead peer whatever the flight is believed: the head's
        retransmission (snd_una), a keepalive or window probe (snd_una - 1), a pure ACK
        (snd_max); so a dead peer is noticed by the next timeout at the latest, and a
        blind attacker must guess one of three numbers. True if the connection ended.
        """
        if seq is not None:
            quoted = sq.unwrap(seq, self.snd_una)
            if quoted not in (self.snd_una - 1, self.snd_una, self.snd_max):
                self.drop("ICMP quoting a sequence number we have not sent")
                return False
        state = self.state
        if state is State.SYN_SENT:
            self.refuse("connection refused (port unreachable)")
            return True
        if ((in_order := _left_in_order(self)) and state is State.CLOSE_WAIT) or state in (
                State.CLOSED, State.LISTEN, State.TIME_WAIT):
            return False
        self.fail(None if in_order else ConnectionResetError(
            "connection reset: the peer's port is unreachable (ICMP), its process has"
            " likely exited"), send_rst=False)
        return True

    def refuse(self, message: str) -> None:
        """The layer below knows the connect cannot succeed: fail it with this message."""
        if self.state is State.SYN_SENT:
            self.fail(ConnectionRefusedError(message), send_rst=False)

    def read(self, max_bytes: int = -1) -> bytes:
        """Take in-order bytes the peer sent; reading reopens the advertised window."""
        return self._taken(self.rcv.read(max_bytes)) if self.rcv.size else b""

    def read_pieces(self, max_bytes: int) -> bytes:
        """Like `read`, but large pieces come one at a time rather than glued together:
        the asyncio transport hands each to the protocol without a copy of its own."""
        return self._taken(self.rcv.read_pieces(max_bytes)) if self.rcv.size else b""

    def _taken(self, data: bytes) -> bytes:
        self.recharge()
        if self.state is not _CLOSED:  # `release`d: no window left to open
            self.receiver.window_update()
        return data

    @property
    def readable(self) -> int:
        return self.rcv.size

    @property
    def unsent(self) -> int:
        """Bytes queued by the application that were never transmitted."""
        buf = self.sndbuf
        return max(buf.end - max(self.snd_nxt, buf.base), 0)

    @property
    def to_send(self) -> int:
        """Sequence numbers waiting at snd_nxt: the unsent bytes and a FIN not yet sent
        (`Sender.fin_fits` holds it for the window, and the persist timer probes)."""
        buf = self.sndbuf
        return buf.end + buf.fin_queued - max(self.snd_nxt, buf.base)

    @property
    def in_flight(self) -> int:
        return self.snd_nxt - self.snd_una

    @property
    def queued(self) -> int:
        """Bytes queued and not yet acknowledged (unacked plus unsent)."""
        return self.sndbuf.size

    @property
    def eof_received(self) -> bool:
        return self.receiver.fin_received

    def receive(self, seg: wire.Segment, now: float) -> None:
        """Process one segment addressed to this connection (`utcp.inbound`)."""
        inbound.segment(self, seg, now)

    def takes_runs(self) -> bool:
        """Whether `Endpoint.receive_glued` may hand this connection a run of datagrams
        as one segment: only where header prediction would take each of them (ESTABLISHED,
        nothing held out of order, no FIN held, memory below pressure; `wire.glued_run`
        keeps the run within the window offered). Elsewhere the
        per-datagram path decides, datagram by datagram: what a tight memory budget
        admits of a burst, the D-SACK for a piece already held, a held FIN's end."""
        budget = self.memory_budget
        return (self.state is State.ESTABLISHED and not self.rcv.ooo
                and self.receiver.fin_seq is None
                and (budget is None or budget.used < budget.pressure))

    def took_run(self, count: int, advanced: bool) -> None:
        """`count` datagrams (two or more, full-sized but maybe the last) went in as one
        segment (`Endpoint.receive_glued`): counted as what they were, and, if they moved
        rcv_nxt, acknowledged at once, as two full-sized segments are (RFC 9293
        §3.8.6.3; the segment itself counted one and may only have armed the delayed-ACK
        timer). A run that was refused is answered as its segment was, no more (a
        challenge ACK stays within its rate limit)."""
        self.counters.segments_received += count - 1
        if advanced:
            self.sender.ack_now = True

    # --------------------------------------------------------------------- outputs

    def next_event(self) -> Event | None:
        return self.events.pop(0) if self.events else None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        if self.state is not State.CLOSED:
            if self.receiver.update_owed:
                self.receiver.defer_update(now)
            self.sender.output(now)
        out = self.sender.out
        if out is NO_ITEMS:
            return []
        self.sender.out = NO_ITEMS
        return out

    def get_timer(self) -> float | None:
        best = self.timers.earliest()
        pacer = self.sender.pacer
        if pacer is not None and pacer.deadline is not None and (
                best is None or pacer.deadline < best):
            return pacer.deadline
        return best

    def stats(self) -> Stats:
        c = self.counters
        rtt, cc = self.recovery.rtt, self.recovery.cc
        return Stats(
            state=self.state, mss=self.snd_mss, srtt=rtt.srtt, rttvar=rtt.rttvar,
            rto=rtt.rto, cwnd=cc.cwnd, ssthresh=cc.ssthresh,
            snd_wnd=self.snd_wnd, rcv_wnd=max(self.rcv_adv - self.rcv_nxt, 0),
            bytes_sent=c.bytes_sent, bytes_acked=c.bytes_acked,
            bytes_received=c.bytes_received, bytes_retransmitted=c.bytes_retransmitted,
            segments_sent=c.segments_sent, segments_received=c.segments_received,
            segments_retransmitted=c.segments_retransmitted,
            dup_acks_received=c.dup_acks_received, fast_retransmits=c.fast_retransmits,
            timeouts=c.timeouts, ooo_segments_received=c.ooo_segments_received,
            dropped_segments=c.dropped_segments, challenge_acks=c.challenge_acks,
            congestion=cc.name,
            pacing_rate=(self.sender.pacer.rate or None) if self.sender.pacer is not None else None,
            tail_loss_probes=c.tail_loss_probes, spurious_recoveries=c.spurious_recoveries,
            dsacks_received=c.dsacks_received, paws_drops=c.paws_drops,
            fins_ignored=c.fins_ignored,
            challenge_acks_suppressed=c.challenge_acks_suppressed,
            fin_timeouts=c.fin_timeouts)

    # --------------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> None:
        """Serve every due timer, in `Timer` order, until one ends the connection."""
        if self.state is _CLOSED:
            return
        self.now = now
        self.touch()
        pacer = self.sender.pacer
        if pacer is not None and pacer.deadline is not None and now >= pacer.deadline:
            pacer.deadline = None  # a paced segment's turn: _output sends it
        deadlines = self.timers.at
        for timer in _TIMER_ORDER:
            if (at := deadlines[timer]) is not None and now >= at and not self._fire(timer, now):
                return

    def _fire(self, timer: int, now: float) -> bool:
        """One due timer's action (each handler disarms or re-arms its own timer);
        False once the connection is over."""
        if timer == T_TIME_WAIT:
            self.timers.cancel(T_TIME_WAIT)
            self.set_state(Ev.TIMEOUT_2MSL)
        elif timer == T_FIN_WAIT_2:
            self._on_fin_timeout()
        elif timer == T_USER:
            self.fail(TimeoutError("the peer's window stayed shut for user_timeout"
                                    if self.sender.persist_since is not None else
                                    "no acknowledgment within user_timeout"), send_rst=True)
        elif timer == T_RTX:
            self._on_retransmission_timeout(now)
        elif timer == T_REORDER:
            self.recovery.on_reorder_timeout(now)
        elif timer == T_TLP:
            self.recovery.on_tail_loss_probe(now)
        elif timer == T_PERSIST:
            self.sender.on_persist_timeout(now)
        elif timer == T_ACK:
            self.timers.cancel(T_ACK)
            self.sender.ack_now = True
        elif timer == T_IDLE:
            self._on_idle_timeout(now)
        else:
            self._on_keepalive(now)
        return self.state is not _CLOSED

    def _arm_fin_timeout(self, now: float) -> bool:
        """Start an orphan's FIN_WAIT_2 clock, unless it runs already or is off; True if
        it was started."""
        fin_timeout = self.config.fin_timeout
        if fin_timeout is None or self.timers.armed(T_FIN_WAIT_2):
            return False
        self.timers.arm(T_FIN_WAIT_2, now + fin_timeout)
        return True

    def _on_fin_timeout(self) -> None:
        """An orphan sat in FIN_WAIT_2 for `Config.fin_timeout`: the peer acknowledged our
        FIN but never sent its own, and nobody is left to read. Drop it silently, as
        Linux drops an orphaned FIN_WAIT_2 socket when tcp_fin_timeout runs out (its
        timewait bucket expires: no RST then). The peer learns only if it sends again:
        the endpoint answers a segment for no connection with RST."""
        self.timers.cancel(T_FIN_WAIT_2)
        self.counters.fin_timeouts += 1
        if log.enabled():
            log.emit("fin_timeout", conn=self.name, fin_timeout=self.config.fin_timeout)
        self.fail(None, send_rst=False)

    def _on_idle_timeout(self, now: float) -> None:
        self.timers.cancel(T_IDLE)
        idle = self.config.idle_timeout
        if idle is None:
            return
        if self.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            if log.enabled():
                log.emit("idle_timeout", conn=self.name)
            self.close()
            # the FIN may be unable to leave (a shut window holds back the data before
            # it): one more idle_timeout without a segment ends the connection
            self.timers.arm(T_IDLE, now + idle)
        elif self.state in (State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING,
                            State.LAST_ACK):
            # we have closed and the peer has gone quiet: nothing graceful is left
            self.fail(TimeoutError("idle timeout while closing"), send_rst=True)

    def _on_retransmission_timeout(self, now: float) -> None:
        """Resend the SYN, or give up on a peer that acknowledges nothing; the data's
        retransmission is loss recovery's (RFC 6298 §5)."""
        rec = self.recovery
        self.counters.timeouts += 1
        rec.rtt.on_timeout()
        rec.rtt_seq = None  # Karn: no sample from anything sent before
        if self.state in (State.SYN_SENT, State.SYN_RCVD):
            limit = (self.config.synack_retries if self.passive else self.config.syn_retries)
            if self.sender.syn_retries >= limit:
                err = (None if self.passive else
                       ConnectionRefusedError(self.refusal_hint) if self.refusal_hint else
                       TimeoutError(f"no answer to SYN after {limit} retransmissions"))
                if log.enabled():
                    log.emit("handshake_failed", conn=self.name, retries=limit)
                self.fail(err, send_rst=False)
                return
            self.sender.syn_retries += 1
            if log.enabled():
                log.emit("rto", conn=self.name, state=self.state.name, rto=rec.rtt.rto,
                         snd_una=self.snd_una)
            self.snd_nxt = self.iss  # resend the SYN (or SYN+ACK) from _output
            self.timers.arm(T_RTX, now + rec.rtt.rto)
            return
        if self.snd_una == self.snd_max:
            self.timers.cancel(T_RTX)
            return
        rec.rto_streak += 1
        if rec.rto_streak > self.config.max_retransmissions:
            # Linux's tcp_retries2: a peer that acknowledges nothing for this many
            # backed-off timeouts is gone; without a limit the connection (and its
            # buffers) would be retried forever
            self.fail(TimeoutError(f"no acknowledgment after {rec.rto_streak - 1}"
                                   " retransmissions"), send_rst=True)
            return
        if log.enabled():
            log.emit("rto", conn=self.name, state=self.state.name, rto=rec.rtt.rto,
                     snd_una=self.snd_una)
        rec.on_retransmission_timeout(now)

    def _on_keepalive(self, now: float) -> None:
        self.timers.cancel(T_KEEPALIVE)
        interval = self.config.keepalive_interval
        if interval is None or self.state not in SYNCHRONIZED or self.state is State.TIME_WAIT:
            return
        if self.snd_max != self.snd_una or self.to_send:
            # Data to deliver: the retransmission and persist timers judge the peer (as
            # Linux's tcp_keepalive_timer), and a path that is down for a minute while
            # they back off must not end the connection sooner than they would.
            self.timers.arm(T_KEEPALIVE, now + interval)
            return
        if self.sender.keepalive_sent >= self.config.keepalive_probes:
            self.fail(TimeoutError("keepalive probes unanswered"), send_rst=True)
            return
        self.sender.keepalive_sent += 1
        self.sender.emit(self.snd_una - 1, 0, ACK)
        # TCP_KEEPINTVL after TCP_KEEPIDLE: probes close together once one goes
        # unanswered, so a dead peer is noticed soon after the idle time, not probes x it
        self.timers.arm(T_KEEPALIVE, now + min(interval, self.config.keepalive_probe_interval))

    # --------------------------------------------------------------------- memory

    def memory_in_use(self) -> int:
        """Real memory of the buffers: unread and out-of-order pieces, the send buffer."""
        return self.rcv.memory() + self.sndbuf.size

    def recharge(self) -> None:
        """Bring the endpoint's memory account up to what this connection holds now."""
        budget = self.memory_budget
        if budget is not None:  # memory_in_use() inlined: this runs once per datagram
            rcv = self.rcv
            mem = (rcv.size + RCV_PIECE_OVERHEAD * len(rcv.pieces)
                   + rcv.ooo_bytes + OOO_PIECE_OVERHEAD * len(rcv.ooo)
                   + self.sndbuf.size)
            budget.used += mem - self.charged
            self.charged = mem

    # --------------------------------------------------------------------- helpers

    def set_state(self, event: Ev, error: Exception | None = None) -> None:
        """The one way the state changes (`utcp.state.TRANSITIONS`), with what entering a
        state always does: ESTABLISHED tells the application, FIN_WAIT_2 starts an
        orphan's fin_timeout, TIME_WAIT runs 2MSL alone, CLOSED ends the connection (with
        `error`, if it failed)."""
        old = self.state
        new = TRANSITIONS.get((old, event)) or next_state(old, event)  # raises if absent
        self.state = new
        if event is _BORN:
            return  # a listener's connection is born listening: nobody saw it CLOSED
        self.events.append(STATE_CHANGES[old][new])  # shared: made once (utcp.events)
        if log.on:
            log.emit("state", conn=self.name, old=old.name, new=new.name, trigger=event.value)
        if new is _ESTABLISHED:
            self.events.append(HANDSHAKE_COMPLETED)
        elif new is _FIN_WAIT_2:
            if self.orphaned:
                self._arm_fin_timeout(self.now)
        elif new is _TIME_WAIT:
            # 2MSL alone, but an ACK still owed to the peer's FIN: every other timer
            # (a list of them to cancel drifted: it left TLP and REORDER armed, and had to
            # learn FIN_WAIT_2)
            ack_at = self.timers.get(T_ACK)
            self.timers.cancel_all()
            if ack_at is not None:
                self.timers.arm(T_ACK, ack_at)
            self.timers.arm(T_TIME_WAIT, self.now + 2 * self.config.msl)
        elif new is _CLOSED and old is not _LISTEN:
            self._terminate(error)

    def fail(self, error: Exception | None, *, send_rst: bool, event: Ev = Ev.ABORT) -> None:
        if send_rst and self.state in SYNCHRONIZED | {State.SYN_RCVD}:
            # snd_max within the peer's window (Sender.ack_seq), not a snd_nxt rewound by
            # a timeout: a peer that got everything would drop an RST below its rcv_nxt
            self.sender.emit(self.sender.ack_seq(), 0, RST | ACK)
        self.set_state(event, error)

    def _terminate(self, error: Exception | None) -> None:
        self.error = error
        self.timers.cancel_all()
        if self.sender.pacer is not None:
            self.sender.pacer.deadline = None
        self.sender.ack_now = False
        self.counters.unsent_dropped = self.unsent if self.sndbuf.end != self.sndbuf.base else 0
        self.sndbuf.clear()
        if self.memory_budget is not None:
            # what is left unread is the application's to take; no longer the endpoint's
            self.memory_budget.used -= self.charged
            self.charged = 0
            self.memory_budget = None
        self.rcv.drop_ooo()
        self.events.append(TERMINATED if error is None else Terminated(error))
        self.touch()

    def drop(self, reason: str) -> None:
        self.counters.dropped_segments += 1
        if log.enabled():
            log.emit("drop", conn=self.name, reason=reason, state=self.state.name)

    def last_activity(self, now: float) -> None:
        config = self.config
        state = self.state
        idle = config.idle_timeout
        if idle is not None and state is not _TIME_WAIT and state is not _CLOSED:
            self.timers.at[T_IDLE] = now + idle
        keepalive = config.keepalive_interval
        # ESTABLISHED first: the common case without hashing the enum for the set
        if keepalive is not None and (state is _ESTABLISHED or (
                state in SYNCHRONIZED and state is not _TIME_WAIT)):
            self.timers.at[T_KEEPALIVE] = now + keepalive

    def heard(self, now: float) -> None:
        """The peer is alive: a segment passed the window and ACK checks. Keepalive
        restarts only here (as Linux's rcv_tstamp, set in tcp_ack), else any datagram,
        even a blind one out of the window, kept a dead peer's connection forever."""
        self.sender.keepalive_sent = 0
        # TIME_WAIT probes nothing (2MSL alone): the FIN that took us there is heard
        # after the transition
        if self.config.keepalive_interval is not None and self.state is not _TIME_WAIT:
            self.timers.at[T_KEEPALIVE] = now + self.config.keepalive_interval

    def touch(self) -> None:
        if self.notify is not None:
            self.notify(self)


def _left_in_order(conn: Connection) -> bool:
    """Whether the peer closed in order (its FIN is in) and acknowledged all we sent but
    our own FIN. An ICMP port unreachable is then what its process left on exit, where
    a kernel's FIN_WAIT_2 socket would have outlived it and acknowledged our FIN.
    Nothing is lost: in CLOSE_WAIT the application still reads to the EOF and closes
    (keepalive ends a connection it never closes); our FIN, which nobody will
    acknowledge, ends the connection without an error."""
    state = conn.state
    our_fin = 0 if state is State.CLOSE_WAIT else 1
    return (state in (State.CLOSE_WAIT, State.LAST_ACK, State.CLOSING) and not conn.unsent
            and conn.snd_max - conn.snd_una <= our_fin)


def release(conn: Connection) -> None:
    """Its endpoint has forgotten `conn`, CLOSED: cut the references its parts hold back
    to it (and its endpoint's hook), so that reference counting frees it once the
    application lets go, rather than the cycle collector, which would otherwise walk a
    dozen objects of every finished connection on both ends, after they had survived
    into its older generations. Nothing runs these parts after CLOSED (`read` leaves the
    window alone, `datagrams_to_send`, `handle_timer`, `close` and `abort` return)."""
    del conn.sender.conn
    del conn.receiver.conn
    del conn.recovery.conn
    conn.notify = None
