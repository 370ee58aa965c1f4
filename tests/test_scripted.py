"""Packetdrill-style scripts: exact segments in, exact segments and states out.

Each test plays the remote peer by hand against one sans-IO `Endpoint` (see
`tests/script.py`) on a fake clock, and names in its title the states the connection
under test passes through. The items of docs/protocol.md §4 come in order, then the RST rules
and the details of reliable transfer (RFC 6298 timers, fast retransmit and NewReno,
delayed ACKs, zero windows), then a few regressions. ISNs sit just below 2**32 so
that SYN, data and FIN sequence numbers cross the 32-bit wrap.
"""

from __future__ import annotations

import random

import pytest

from tests.script import ANY, PEER, Script, relay
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.events import EofReceived, HandshakeCompleted, SendClosed, StateChanged, Terminated
from utcp.state import State

S = State
MOD = 1 << 32

OUR_ISN = MOD - 2        # our SYN is 2**32-2, our first data byte 2**32-1, then 0
PEER_ISN = MOD - 1000    # 999 bytes of the peer's data fit before its numbers wrap

SERVER: tuple[str, int] = ("10.0.0.2", 80)   # the peer when the script is a client
CLIENT: tuple[str, int] = PEER               # the peer when the script is a server

# Timestamps off: the scripts spell out exact options and payload sizes without them
# (tests/test_timestamps.py covers RFC 7323, on by default).
CFG = Config(mss=1000, recv_buffer=64000, send_buffer=1 << 20, rto_initial=1.0,
             rto_min=0.2, rto_max=60.0, msl=0.75, ack_delay=0.0625,
             syn_retries=3, synack_retries=2, timestamps=False,
             keepalive_interval=None)  # the scripted peer answers no probe unless told
OUR_SYN_OPTS = wire.Options(mss=1000, wscale=0, sack_permitted=True)  # CFG's SYN
OUR_SYNACK_OPTS = wire.Options(mss=1000, wscale=0)  # answering a SYN without SACK
PEER_OPTS = wire.Options(mss=1000, wscale=0)
RTT = 0.125  # the handshake's RTT sample: SRTT 0.125, RTTVAR 0.0625, RTO 0.375


def client(cfg: Config = CFG, *, isn: int = OUR_ISN, peer_isn: int = PEER_ISN,
           rtt: float = RTT, peer_window: int = 65535,
           peer_opts: wire.Options | None = PEER_OPTS, now: float = 0.0,
           isns: tuple[int, ...] = ()) -> tuple[Script, Connection]:
    """An active open, checked segment by segment, up to ESTABLISHED."""
    s = Script(cfg, port=40000, isns=(isn, *isns), peer=SERVER, now=now)
    conn = s.connect()
    s.expect("S", isn, 0, at=now)
    s.advance(rtt)
    s.inject("S.", peer_isn, isn + 1, window=peer_window, options=peer_opts)
    s.expect(".", isn + 1, peer_isn + 1, payload=b"")
    s.expect_nothing()
    assert conn.state is S.ESTABLISHED
    return s, conn


def server(cfg: Config = CFG, *, isn: int = OUR_ISN, peer_isn: int = PEER_ISN,
           rtt: float = RTT, peer_window: int = 65535,
           peer_opts: wire.Options | None = PEER_OPTS, backlog: int = 128,
           isns: tuple[int, ...] = ()) -> tuple[Script, Connection]:
    """A passive open, checked segment by segment, up to ESTABLISHED and accept()."""
    s = Script(cfg, port=80, listening=True, backlog=backlog, isns=(isn, *isns), peer=CLIENT)
    s.inject("S", peer_isn, 0, window=peer_window, options=peer_opts)
    s.expect("S.", isn, peer_isn + 1)
    s.advance(rtt)
    s.inject(".", peer_isn + 1, isn + 1, window=peer_window)
    s.expect_nothing()
    conn = s.ep.accept()
    assert conn is not None and conn.state is S.ESTABLISHED
    return s, conn


def data(n: int, start: int = 0) -> bytes:
    return bytes((start + i) % 251 for i in range(n))


# ---------------------------------------------------------------------------------------
# §4.1 three-way handshake, MSS and window scale


def test_three_way_handshake_active__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    assert conn.state is S.SYN_SENT
    # SYN: seq x, no ACK, an unscaled window, our MSS and window-scale options
    s.expect("S", seq=OUR_ISN, ack=0, window=64000, payload=b"", options=OUR_SYN_OPTS, at=0.0)
    s.expect_nothing()
    s.advance(0.25)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=30000, options=PEER_OPTS)
    # ACK: seq x+1, ack y+1, nothing else
    s.expect(".", seq=OUR_ISN + 1, ack=PEER_ISN + 1, window=64000, payload=b"",
             options=wire.Options(), at=0.25)
    s.expect_nothing()
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.ESTABLISHED]
    assert s.events_of(conn, HandshakeCompleted) == [HandshakeCompleted()]
    st = conn.stats()
    assert st.state is S.ESTABLISHED and st.mss == 1000 and st.srtt == 0.25
    assert st.snd_wnd == 30000


def test_three_way_handshake_passive__LISTEN_SYN_RCVD_ESTABLISHED() -> None:
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, window=20000, options=wire.Options(mss=1200, wscale=3))
    # SYN+ACK: seq y, ack x+1, our options (window scale: the peer offered it)
    s.expect("S.", seq=OUR_ISN, ack=PEER_ISN + 1, window=64000, payload=b"",
             options=OUR_SYNACK_OPTS, at=0.0)  # no SACK-permitted: the peer did not offer it
    conn = s.conn
    assert conn.state is S.SYN_RCVD
    assert s.ep.accept() is None  # not complete yet: nothing to accept
    assert conn in s.ep.syn_queue
    s.advance(0.5)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, window=1000)
    s.expect_nothing()  # the third message needs no answer
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]
    assert s.events_of(conn, HandshakeCompleted) == [HandshakeCompleted()]
    assert not s.ep.syn_queue
    assert s.ep.accept() is conn
    st = conn.stats()
    assert st.mss == 1000 and st.srtt == 0.5
    assert st.snd_wnd == 1000 << 3  # the window of the ACK is scaled by the peer's shift


def test_handshake_ack_of_wrong_sequence_is_reset__LISTEN_SYN_RCVD() -> None:
    """The third message must ack exactly y+1: anything else is answered with RST."""
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 7)
    s.expect("R", seq=OUR_ISN + 7, ack=0)
    assert s.conn.state is S.SYN_RCVD
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    assert s.conn.state is S.ESTABLISHED


def test_isn_is_random_without_rng() -> None:
    isns = []
    for _ in range(2):
        ep = Endpoint(CFG, 40000)
        ep.connect(SERVER, 0.0)
        (raw, _addr), = ep.datagrams_to_send(0.0)
        seg = wire.parse(raw)
        assert seg.flags == wire.SYN
        isns.append(seg.seq)
    assert isns[0] != isns[1]
    assert Connection(CFG, local_port=1, remote_port=2).iss != Connection(
        CFG, local_port=1, remote_port=2).iss
    # and with an rng, reproducible: the same seed gives the same ISN
    seeded = []
    for seed in (7, 7, 8):
        ep = Endpoint(CFG, 40000, rng=random.Random(seed))
        ep.connect(SERVER, 0.0)
        seeded.append(wire.parse(ep.datagrams_to_send(0.0)[0][0]).seq)
    assert seeded[0] == seeded[1] != seeded[2]


def test_no_mss_option_means_536__LISTEN_SYN_RCVD_ESTABLISHED() -> None:
    s, conn = server(peer_opts=None)
    assert conn.stats().mss == 536
    conn.send(data(1200))
    s.app()
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, payload=data(1200)[:536])
    s.expect(".", OUR_ISN + 537, PEER_ISN + 1, payload=data(1200)[536:1072])
    s.expect("P.", OUR_ISN + 1073, PEER_ISN + 1, payload=data(1200)[1072:])
    s.expect_nothing()


def test_no_mss_option_means_536_active__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    s, conn = client(peer_opts=None)
    conn.send(data(600))
    s.app()
    s.expect(".", OUR_ISN + 1, length=536)
    s.expect("P.", OUR_ISN + 537, length=64)
    s.expect_nothing()


def test_smaller_peer_mss_bounds_segments__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    s, conn = client(peer_opts=wire.Options(mss=300))
    assert conn.stats().mss == 300
    conn.send(data(700))
    s.app()
    s.expect(".", OUR_ISN + 1, payload=data(700)[:300])
    s.expect(".", OUR_ISN + 301, payload=data(700)[300:600])
    s.expect("P.", OUR_ISN + 601, payload=data(700)[600:])
    s.expect_nothing()


def test_larger_peer_mss_is_capped_by_ours__LISTEN_SYN_RCVD_ESTABLISHED() -> None:
    s, conn = server(peer_opts=wire.Options(mss=9000))
    assert conn.stats().mss == 1000
    conn.send(data(1500))
    s.app()
    s.expect(".", OUR_ISN + 1, length=1000)
    s.expect("P.", OUR_ISN + 1001, length=500)


def test_window_scaling_both_sides__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    cfg = CFG.replace(recv_buffer=1 << 20)  # needs shift 5 to be described in 16 bits
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN, 0, window=65535, options=wire.Options(mss=1000, wscale=5,
                                                                 sack_permitted=True))
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=65535, options=wire.Options(mss=1000, wscale=3))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, window=(1 << 20) >> 5)  # our window, scaled
    # the peer's windows are scaled by its shift from now on: 250 << 3 = 2000 bytes
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, window=250)
    assert conn.stats().snd_wnd == 2000
    conn.send(data(5000))
    s.app()
    s.expect(".", OUR_ISN + 1, length=1000)
    s.expect(".", OUR_ISN + 1001, length=1000)
    s.expect_nothing()  # 2000 bytes fill the scaled window
    # data from the peer is acked with our scaled window: (2**20 - 100) / 32, rounded up
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 2001, window=250, payload=data(100))
    s.expect(".", OUR_ISN + 2001, PEER_ISN + 101, window=32765, length=1000)
    s.expect(".", OUR_ISN + 3001, PEER_ISN + 101, window=32765, length=1000)
    s.expect_nothing()


def test_window_scaling_off_when_peer_lacks_it__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    cfg = CFG.replace(recv_buffer=1 << 20)
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN, 0, options=wire.Options(mss=1000, wscale=5, sack_permitted=True))
    s.inject("S.", PEER_ISN, OUR_ISN + 1, window=65535, options=wire.Options(mss=1000))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, window=65535)  # unscaled, so capped at 65535
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, window=250)
    assert conn.stats().snd_wnd == 250  # unscaled too
    conn.send(data(1000))
    s.app()
    # sender SWS avoidance (RFC 9293 §3.8.6.2.1): 250 bytes, not all that is queued, is
    # under half the 65535 offered before; the override timer sends them (as Linux's
    # probe timer does, one RTO later)
    s.expect_nothing()
    s.advance(conn.stats().rto)
    s.expect(".", OUR_ISN + 1, length=250)
    s.expect_nothing()


def test_window_scale_option_answered_only_if_offered__LISTEN_SYN_RCVD() -> None:
    cfg = CFG.replace(recv_buffer=1 << 20)
    with_ws = Script(cfg, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    with_ws.inject("S", PEER_ISN, 0, options=wire.Options(mss=1000, wscale=0))
    with_ws.expect("S.", OUR_ISN, PEER_ISN + 1, window=65535,
                   options=wire.Options(mss=1000, wscale=5))
    with_ws.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    with_ws.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"x")
    with_ws.advance(CFG.ack_delay)
    with_ws.expect(".", OUR_ISN + 1, PEER_ISN + 2, window=32768)  # (2**20 - 1) >> 5, up

    without = Script(cfg, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    without.inject("S", PEER_ISN, 0, options=wire.Options(mss=1000))
    without.expect("S.", OUR_ISN, PEER_ISN + 1, window=65535, options=wire.Options(mss=1000))
    without.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    without.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"x")
    without.advance(CFG.ack_delay)
    without.expect(".", OUR_ISN + 1, PEER_ISN + 2, window=65535)


def test_retransmitted_syn_gets_the_same_syn_ack__LISTEN_SYN_RCVD_ESTABLISHED() -> None:
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1, at=0.0)
    s.advance(0.5)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)  # the SYN+ACK was lost
    s.expect("S.", OUR_ISN, PEER_ISN + 1, options=OUR_SYNACK_OPTS, at=0.5)
    assert len(s.conns) == 1 and s.ep.counters["SYN accepted"] == 1
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    assert s.states() == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]


def test_duplicate_syn_ack_is_acked_again__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    s, conn = client()
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=PEER_OPTS)  # our ACK was lost
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.ESTABLISHED]


# ---------------------------------------------------------------------------------------
# §4.2 four-way close and half-close


def test_four_way_close_client_first__ESTABLISHED_FIN_WAIT_1_FIN_WAIT_2_TIME_WAIT_CLOSED(
) -> None:
    s, conn = client()
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1, payload=b"")
    assert conn.state is S.FIN_WAIT_1
    s.advance(0.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2)  # the FIN took one sequence number
    s.expect_nothing()
    assert conn.state is S.FIN_WAIT_2
    assert s.events_of(conn, SendClosed) == [SendClosed()]
    s.advance(0.5)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2, payload=b"")
    assert conn.state is S.TIME_WAIT
    assert s.events_of(conn, EofReceived) == [EofReceived()]
    s.advance(2 * CFG.msl)
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT_1,
                              S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED]
    assert s.terminated(conn) == [None]
    assert not s.ep.connections
    s.expect_nothing()


def test_four_way_close_server_first__ESTABLISHED_FIN_WAIT_1_FIN_WAIT_2_TIME_WAIT_CLOSED(
) -> None:
    s, conn = server()
    conn.send(b"bye")
    conn.close()
    s.app()
    # the FIN rides on the last data segment and takes the number after it
    s.expect("FP.", OUR_ISN + 1, PEER_ISN + 1, payload=b"bye")
    s.inject(".", PEER_ISN + 1, OUR_ISN + 4)  # data acked, FIN not yet
    assert conn.state is S.FIN_WAIT_1
    s.inject(".", PEER_ISN + 1, OUR_ISN + 5)
    assert conn.state is S.FIN_WAIT_2
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 5)
    s.expect(".", OUR_ISN + 5, PEER_ISN + 2)
    s.advance(2 * CFG.msl)
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.FIN_WAIT_1,
                              S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED]
    assert s.terminated(conn) == [None]


def test_peer_closes_first__ESTABLISHED_CLOSE_WAIT_LAST_ACK_CLOSED() -> None:
    s, conn = server()
    s.advance_to(1.0)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2, at=1.0)  # a FIN is acked at once
    assert conn.state is S.CLOSE_WAIT
    assert conn.eof_received and s.events_of(conn, EofReceived) == [EofReceived()]
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 2)
    assert conn.state is S.LAST_ACK
    s.inject(".", PEER_ISN + 2, OUR_ISN + 1)  # acks nothing new: FIN still outstanding
    assert conn.state is S.LAST_ACK
    s.inject(".", PEER_ISN + 2, OUR_ISN + 2)
    assert conn.state is S.CLOSED
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT,
                              S.LAST_ACK, S.CLOSED]
    assert s.terminated(conn) == [None]
    assert not s.ep.connections
    s.expect_nothing()


def test_half_close_we_keep_sending__ESTABLISHED_CLOSE_WAIT_LAST_ACK_CLOSED() -> None:
    s, conn = server()
    # the peer sends its last bytes with its FIN: one segment, len 5 + 1
    s.inject("FP.", PEER_ISN + 1, OUR_ISN + 1, payload=b"query")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 7)
    assert conn.state is S.CLOSE_WAIT
    assert conn.read() == b"query"
    # half-close: CLOSE_WAIT may still send, across the wrap, and the peer acks it
    reply = data(2500)
    conn.send(reply)
    s.app()
    s.expect(".", OUR_ISN + 1, PEER_ISN + 7, payload=reply[:1000])
    s.expect(".", OUR_ISN + 1001, PEER_ISN + 7, payload=reply[1000:2000])
    s.expect("P.", OUR_ISN + 2001, PEER_ISN + 7, payload=reply[2000:])
    s.advance(0.125)
    s.inject(".", PEER_ISN + 7, OUR_ISN + 2501)
    s.expect_nothing()
    assert conn.state is S.CLOSE_WAIT and conn.queued == 0
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 2501, PEER_ISN + 7)
    s.inject(".", PEER_ISN + 7, OUR_ISN + 2502)
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT,
                              S.LAST_ACK, S.CLOSED]
    assert conn.stats().bytes_acked == 2500


def test_half_close_peer_keeps_sending__ESTABLISHED_FIN_WAIT_1_FIN_WAIT_2_TIME_WAIT() -> None:
    s, conn = client()
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
    assert conn.state is S.FIN_WAIT_2
    # the peer's data still flows to us; two segments are acked at once
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2, payload=data(1000))
    s.expect_nothing()
    s.inject("P.", PEER_ISN + 1001, OUR_ISN + 2, payload=data(1000, 1000))
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2001)
    assert conn.read() == data(1000) + data(1000, 1000)
    s.inject("F.", PEER_ISN + 2001, OUR_ISN + 2)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2002)
    assert s.states(conn)[-4:] == [S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.TIME_WAIT]


def test_fin_retransmitted_on_timeout__FIN_WAIT_1_FIN_WAIT_2() -> None:
    s, conn = client()  # RTO 0.375 after the handshake's sample
    s.advance_to(1.0)
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1, at=1.0)
    s.advance_to(1.375)
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1, at=1.375)
    s.advance_to(2.125)
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1, at=2.125)
    s.expect_nothing()
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
    assert conn.state is S.FIN_WAIT_2
    s.advance(100.0)
    s.expect_nothing()


# ---------------------------------------------------------------------------------------
# §4.3 simultaneous open, simultaneous close, FIN_WAIT_1 -> TIME_WAIT


A_ISN = MOD - 1
B_ISN = MOD - 3


def _pair() -> tuple[Script, Script]:
    a = Script(CFG, port=5000, host="10.0.0.1", isns=(A_ISN,), peer=("10.0.0.2", 6000))
    b = Script(CFG, port=6000, host="10.0.0.2", isns=(B_ISN,), peer=("10.0.0.1", 5000))
    return a, b


def test_simultaneous_open__CLOSED_SYN_SENT_SYN_RCVD_ESTABLISHED() -> None:
    a, b = _pair()
    ca = a.connect()
    cb = b.connect()
    # the two SYNs cross
    relay(a, b, "S", A_ISN, 0, options=OUR_SYN_OPTS)
    relay(b, a, "S", B_ISN, 0, options=OUR_SYN_OPTS)
    assert ca.state is S.SYN_RCVD and cb.state is S.SYN_RCVD
    # each answers the other's SYN with SYN+ACK (its own ISN again, ack the other's + 1)
    relay(b, a, "S.", B_ISN, A_ISN + 1, options=OUR_SYN_OPTS)
    relay(a, b, "S.", A_ISN, B_ISN + 1, options=OUR_SYN_OPTS)
    assert ca.state is S.ESTABLISHED and cb.state is S.ESTABLISHED
    relay(a, b, ".", A_ISN + 1, B_ISN + 1)
    relay(b, a, ".", B_ISN + 1, A_ISN + 1)
    a.expect_nothing()
    b.expect_nothing()
    for s, conn in ((a, ca), (b, cb)):
        assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED]
        assert s.events_of(conn, HandshakeCompleted) == [HandshakeCompleted()]
    # and the connection works: data both ways, sequence numbers across the wrap
    ca.send(b"from a")
    cb.send(b"from b")
    a.app()
    b.app()
    relay(a, b, "P.", A_ISN + 1, B_ISN + 1, payload=b"from a")
    relay(b, a, "P.", B_ISN + 1, A_ISN + 1, payload=b"from b")  # sent before a's arrived
    assert cb.read() == b"from a" and ca.read() == b"from b"
    a.advance(CFG.ack_delay)
    b.advance(CFG.ack_delay)
    a.expect(".", A_ISN + 7, B_ISN + 7)
    b.expect(".", B_ISN + 7, A_ISN + 7)


def test_simultaneous_open_scripted__CLOSED_SYN_SENT_SYN_RCVD_ESTABLISHED() -> None:
    """The same with a hand-played peer whose SYN+ACK comes after our SYN+ACK."""
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN, 0)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1, options=OUR_SYNACK_OPTS)
    assert conn.state is S.SYN_RCVD
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)  # a plain ACK of our SYN also completes it
    s.expect_nothing()
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED]


def test_simultaneous_close__ESTABLISHED_FIN_WAIT_1_CLOSING_TIME_WAIT_CLOSED() -> None:
    s, conn = client()
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    # the peer's FIN crossed ours: it does not ack our FIN
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    assert conn.state is S.CLOSING
    s.advance(0.25)
    s.inject(".", PEER_ISN + 2, OUR_ISN + 2)
    s.expect_nothing()
    assert conn.state is S.TIME_WAIT
    s.advance(2 * CFG.msl)
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT_1,
                              S.CLOSING, S.TIME_WAIT, S.CLOSED]


def test_simultaneous_close_two_endpoints__FIN_WAIT_1_CLOSING_TIME_WAIT() -> None:
    a, b = _pair()
    ca, cb = a.connect(), b.connect()
    relay(a, b, "S", A_ISN, 0)
    relay(b, a, "S", B_ISN, 0)
    relay(b, a, "S.", B_ISN, A_ISN + 1)
    relay(a, b, "S.", A_ISN, B_ISN + 1)
    relay(a, b, ".")
    relay(b, a, ".")
    ca.close()
    cb.close()
    a.app()
    b.app()
    fin_a = a.expect("F.", A_ISN + 1, B_ISN + 1)
    fin_b = b.expect("F.", B_ISN + 1, A_ISN + 1)
    b.inject_raw(wire.build(fin_a), a.addr)
    a.inject_raw(wire.build(fin_b), b.addr)
    assert ca.state is S.CLOSING and cb.state is S.CLOSING
    relay(a, b, ".", A_ISN + 2, B_ISN + 2)
    relay(b, a, ".", B_ISN + 2, A_ISN + 2)
    for s, conn in ((a, ca), (b, cb)):
        assert s.states(conn)[-4:] == [S.ESTABLISHED, S.FIN_WAIT_1, S.CLOSING, S.TIME_WAIT]
        s.advance(2 * CFG.msl)
        assert conn.state is S.CLOSED


def test_fin_acking_our_fin__FIN_WAIT_1_TIME_WAIT_without_FIN_WAIT_2() -> None:
    s, conn = client()
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2)  # FIN, and it acks our FIN
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    assert conn.state is S.TIME_WAIT
    changes = s.events_of(conn, StateChanged)
    assert StateChanged(S.FIN_WAIT_1, S.TIME_WAIT) in changes
    assert all(S.FIN_WAIT_2 not in (c.old, c.new) for c in changes if isinstance(c, StateChanged))
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT_1, S.TIME_WAIT]
    assert s.events_of(conn, SendClosed) == [SendClosed()]


def test_data_and_fin_acking_our_fin__FIN_WAIT_1_TIME_WAIT() -> None:
    s, conn = server()
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    s.inject("FP.", PEER_ISN + 1, OUR_ISN + 2, payload=b"last words")
    s.expect(".", OUR_ISN + 2, PEER_ISN + 12)
    assert conn.read() == b"last words"
    assert s.states(conn)[-3:] == [S.ESTABLISHED, S.FIN_WAIT_1, S.TIME_WAIT]


# ---------------------------------------------------------------------------------------
# §4.4 TIME_WAIT


def _client_in_time_wait(at: float, isns: tuple[int, ...] = ()) -> tuple[Script, Connection]:
    s, conn = client(isns=isns)
    s.advance_to(at)
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1, at=at)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2, at=at)
    assert conn.state is S.TIME_WAIT
    return s, conn


def test_time_wait_lasts_exactly_2msl__TIME_WAIT_CLOSED() -> None:
    s, conn = _client_in_time_wait(2.0)
    end = 2.0 + 2 * CFG.msl  # 3.5
    assert s.ep.get_timer() == end
    s.advance_to(end - 1e-9)
    assert conn.state is S.TIME_WAIT and s.ep.connections == {SERVER: conn}
    assert s.terminated(conn) == []
    s.advance_to(end)
    assert conn.state is S.CLOSED
    assert s.terminated(conn) == [None]
    assert s.states(conn)[-2:] == [S.TIME_WAIT, S.CLOSED]
    assert not s.ep.connections and s.ep.get_timer() is None
    s.expect_nothing()  # TIME_WAIT ends silently


def test_time_wait_acks_retransmitted_fin_and_restarts_2msl__TIME_WAIT_CLOSED() -> None:
    s, conn = _client_in_time_wait(2.0)
    s.advance_to(3.0)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2)  # our last ACK was lost
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2, payload=b"", at=3.0)
    s.advance_to(3.5)  # the first 2MSL would have ended here
    assert conn.state is S.TIME_WAIT
    s.advance_to(4.5 - 1e-9)
    assert conn.state is S.TIME_WAIT
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 2)  # and again
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    s.advance_to(4.5 - 1e-9 + 2 * CFG.msl)
    assert conn.state is S.CLOSED


def test_time_wait_rejects_connect_to_same_peer__TIME_WAIT_CLOSED_SYN_SENT() -> None:
    new_isn = 123456
    s, old = _client_in_time_wait(2.0, isns=(new_isn,))
    with pytest.raises(OSError) as info:
        s.connect()
    assert info.value.errno == 98
    s.expect_nothing()
    s.advance_to(3.5)
    new = s.connect()
    assert new is not old and new.state is S.SYN_SENT
    s.expect("S", new_isn, 0, at=3.5)


def _server_in_time_wait() -> tuple[Script, Connection]:
    """The server closes first and its FIN is acked with the peer's FIN at t=1."""
    s, conn = server(isns=(777,))
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"request")
    s.advance_to(1.0)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 8, at=0.125 + CFG.ack_delay)
    assert conn.read() == b"request"
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 8, at=1.0)
    s.inject("F.", PEER_ISN + 8, OUR_ISN + 2)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 9)
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.FIN_WAIT_1, S.TIME_WAIT]
    return s, conn


def test_time_wait_new_syn_gets_ack_not_syn_ack__TIME_WAIT() -> None:
    s, conn = _server_in_time_wait()
    s.advance_to(1.5)
    s.inject("S", PEER_ISN + 500000, 0, options=PEER_OPTS)  # same peer address and ports
    s.expect(".", OUR_ISN + 2, PEER_ISN + 9, payload=b"")  # the TIME_WAIT ACK, no SYN
    assert conn.state is S.TIME_WAIT
    assert s.ep.connections == {CLIENT: conn}
    assert not s.ep.syn_queue and not s.ep.accept_queue and s.ep.accept() is None
    assert s.ep.counters["SYN accepted"] == 1
    assert [c for c in s.conns if c is not conn] == []


def test_time_wait_drops_late_duplicate_data__TIME_WAIT() -> None:
    s, conn = _server_in_time_wait()
    received = conn.stats().bytes_received
    dropped = conn.stats().dropped_segments
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"request")  # an old duplicate
    s.expect(".", OUR_ISN + 2, PEER_ISN + 9)
    # in-window but after the FIN: ignored too (RFC 9293 §3.10.7.4, seventh, TIME-WAIT)
    s.inject("P.", PEER_ISN + 9, OUR_ISN + 2, payload=b"bogus")
    assert conn.read() == b""
    assert conn.stats().bytes_received == received
    assert conn.stats().dropped_segments == dropped + 2
    assert conn.state is S.TIME_WAIT


def test_time_wait_over_same_peer_connects_again__TIME_WAIT_CLOSED_LISTEN_SYN_RCVD() -> None:
    s, old = _server_in_time_wait()
    s.advance_to(1.0 + 2 * CFG.msl)
    assert old.state is S.CLOSED and not s.ep.connections
    new_peer_isn = PEER_ISN + 1_000_000
    s.inject("S", new_peer_isn, 0, options=PEER_OPTS)
    s.expect("S.", 777, new_peer_isn + 1)
    new = s.conn
    assert new is not old
    s.inject(".", new_peer_isn + 1, 778)
    assert s.ep.accept() is new and new.state is S.ESTABLISHED
    # a late duplicate of the old connection cannot corrupt the new one
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"request")
    s.expect(".", 778, new_peer_isn + 1)  # outside the window: a duplicate ACK, nothing else
    assert new.read() == b"" and new.state is S.ESTABLISHED
    s.inject("P.", new_peer_isn + 1, 778, payload=b"fresh")
    assert new.read() == b"fresh"
    assert s.states(new) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]


# ---------------------------------------------------------------------------------------
# §4.5 handshake failures


def test_syn_backoff_then_timeout__CLOSED_SYN_SENT_CLOSED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN, 0, options=OUR_SYN_OPTS, at=0.0)
    # rto_initial, then doubled each time: 1, 2, 4 (syn_retries = 3), then 8 to give up
    for t in (1.0, 3.0, 7.0):
        s.advance_to(t - 1e-9)
        s.expect_nothing()
        s.advance_to(t)
        s.expect("S", OUR_ISN, 0, window=64000, options=OUR_SYN_OPTS, at=t)
    s.advance_to(15.0 - 1e-9)
    s.expect_nothing()
    assert conn.state is S.SYN_SENT and conn.error is None
    s.advance_to(15.0)
    s.expect_nothing()  # gives up silently: no RST to a peer that never answered
    assert conn.state is S.CLOSED
    assert isinstance(conn.error, TimeoutError)
    assert s.events_of(conn, Terminated) == [Terminated(conn.error)]
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.CLOSED]
    assert conn.stats().segments_sent == 1 + CFG.syn_retries
    assert not s.ep.connections and s.ep.get_timer() is None


def test_syn_backoff_capped_at_rto_max__CLOSED_SYN_SENT_CLOSED() -> None:
    cfg = CFG.replace(rto_max=4.0, syn_retries=5)
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN, at=0.0)
    s.advance_to(100.0)
    for t in (1.0, 3.0, 7.0, 11.0, 15.0):
        s.expect("S", OUR_ISN, 0, at=t)
    s.expect_nothing()
    assert isinstance(conn.error, TimeoutError)
    assert s.events_of(conn, StateChanged)[-1] == StateChanged(S.SYN_SENT, S.CLOSED)
    assert s.terminated(conn) == [conn.error]
    # the end came one capped RTO after the last SYN: 19.0
    s2 = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    c2 = s2.connect()
    s2.advance_to(19.0 - 1e-9)
    assert c2.state is S.SYN_SENT
    s2.advance_to(19.0)
    assert c2.state is S.CLOSED


def test_syn_answered_after_retransmission_completes__CLOSED_SYN_SENT_ESTABLISHED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN, at=0.0)
    s.advance_to(1.0)
    s.expect("S", OUR_ISN, at=1.0)
    s.advance_to(1.5)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=PEER_OPTS)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.state is S.ESTABLISHED and conn.error is None
    assert conn.stats().srtt is None  # Karn: the SYN was retransmitted, no RTT sample
    s.advance(100.0)
    s.expect_nothing()  # the SYN timer is gone


def test_synack_retries_then_half_open_entry_forgotten__LISTEN_SYN_RCVD_CLOSED() -> None:
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1, options=OUR_SYNACK_OPTS, at=0.0)
    conn = s.conn
    for t in (1.0, 3.0):  # synack_retries = 2
        s.advance_to(t - 1e-9)
        s.expect_nothing()
        s.advance_to(t)
        s.expect("S.", OUR_ISN, PEER_ISN + 1, options=OUR_SYNACK_OPTS, at=t)
    s.advance_to(7.0 - 1e-9)
    assert conn in s.ep.syn_queue
    s.advance_to(7.0)
    s.expect_nothing()
    assert conn.state is S.CLOSED and conn.error is None
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.CLOSED]
    assert s.terminated(conn) == [None]
    assert not s.ep.syn_queue and not s.ep.connections and s.ep.accept() is None
    # a late ACK for it is answered as for any unknown connection: RST, seq = SEG.ACK
    s.advance_to(8.0)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    s.expect("R", seq=OUR_ISN + 1, ack=0, window=0, payload=b"")
    assert s.ep.counters["RST sent for no connection"] == 1
    assert not s.ep.connections


# ---------------------------------------------------------------------------------------
# §4.6 backlog: the SYN queue and the accept queue


def _peer(i: int) -> tuple[str, int]:
    return (f"10.0.1.{i}", 1000 + i)


def test_backlog_bounds_syn_and_accept_queues__LISTEN_SYN_RCVD_ESTABLISHED() -> None:
    isns = (MOD - 10, MOD - 20, MOD - 30, MOD - 40)
    s = Script(CFG, port=80, listening=True, backlog=2, isns=isns, peer=_peer(1))

    def syn(i: int) -> None:
        s.inject("S", 1000 * i, 0, options=PEER_OPTS, peer=_peer(i))

    syn(1)
    s.expect("S.", isns[0], 1001, peer=_peer(1))
    syn(2)
    s.expect("S.", isns[1], 2001, peer=_peer(2))
    syn(3)  # the SYN queue holds backlog = 2: answered with a SYN cookie, no state kept
    cookie_synack = s.expect("S.", ack=3001, peer=_peer(3), mss=CFG.mss)
    assert s.ep.counters["SYN cookies sent"] == 1
    assert len(s.ep.syn_queue) == 2 and _peer(3) not in s.ep.connections
    syn(3)  # its retransmission too: the same cookie again, still no state
    assert s.expect("S.", ack=3001, peer=_peer(3)).seq == cookie_synack.seq
    assert s.ep.counters["SYN cookies sent"] == 2 and _peer(3) not in s.ep.connections

    # completing moves entries to the accept queue, in order of completion
    s.inject(".", 2001, isns[1] + 1, peer=_peer(2))
    s.inject(".", 1001, isns[0] + 1, peer=_peer(1))
    s.expect_nothing()
    c1, c2 = s.conn_for(_peer(1)), s.conn_for(_peer(2))
    assert list(s.ep.accept_queue) == [c2, c1] and not s.ep.syn_queue

    syn(3)  # the SYN queue is empty but the accept queue is full: dropped (the app is slow)
    s.expect_nothing()
    assert s.ep.counters["SYN dropped: accept queue full"] == 1

    assert s.ep.accept() is c2
    syn(3)
    s.expect("S.", isns[2], 3001, peer=_peer(3))
    syn(4)
    s.expect("S.", isns[3], 4001, peer=_peer(4))
    syn(5)  # SYN queue full again: a cookie, no state
    s.expect("S.", ack=5001, peer=_peer(5))
    assert _peer(5) not in s.ep.connections
    assert s.ep.counters["SYN accepted"] == 4
    assert s.ep.accept() is c1
    assert s.ep.accept() is None  # the half-open ones are not accepted
    s.inject(".", 4001, isns[3] + 1, peer=_peer(4))
    c4 = s.conn_for(_peer(4))
    assert s.ep.accept() is c4
    assert s.states(c4) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]


# ---------------------------------------------------------------------------------------
# §4.7 idle timeout


def test_idle_timeout_server_closes__ESTABLISHED_FIN_WAIT_1_FIN_WAIT_2_TIME_WAIT() -> None:
    cfg = CFG.replace(idle_timeout=5.0)
    s, conn = server(cfg)  # established at 0.125
    s.advance_to(2.0)
    s.expect_nothing()
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"ping")  # activity: restarts it
    s.advance_to(7.0 - 1e-9)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 5, at=2.0 + CFG.ack_delay)
    s.expect_nothing()
    assert conn.state is S.ESTABLISHED
    s.advance_to(7.0)
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 5, payload=b"", at=7.0)
    assert conn.state is S.FIN_WAIT_1
    s.inject(".", PEER_ISN + 5, OUR_ISN + 2)
    s.inject("F.", PEER_ISN + 5, OUR_ISN + 2)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 6)
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.FIN_WAIT_1,
                              S.FIN_WAIT_2, S.TIME_WAIT]
    assert conn.error is None


def test_idle_timeout_client_closes__ESTABLISHED_FIN_WAIT_1() -> None:
    cfg = CFG.replace(idle_timeout=3.0)
    s, conn = client(cfg)  # established at 0.125
    s.advance_to(1.0)
    conn.send(b"hello")  # our own data is activity too
    s.app()
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 1, payload=b"hello", at=1.0)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 6)
    s.advance_to(4.0 - 1e-9)
    s.expect_nothing()
    s.advance_to(4.0)
    s.expect("F.", OUR_ISN + 6, PEER_ISN + 1, at=4.0)
    assert conn.state is S.FIN_WAIT_1


def test_no_idle_timeout_by_default__ESTABLISHED() -> None:
    s, conn = server()
    s.advance(3600.0)
    s.expect_nothing()
    assert conn.state is S.ESTABLISHED and s.ep.get_timer() is None


# ---------------------------------------------------------------------------------------
# RST rules (RFC 9293 §3.10.7, RFC 5961, RFC 1337)


@pytest.mark.parametrize("listening", [False, True])
def test_rst_for_no_connection_segment_with_ack__CLOSED(listening: bool) -> None:
    s = Script(CFG, port=80, listening=listening, peer=CLIENT)
    s.inject(".", 1234, MOD - 10, payload=b"stray")
    s.expect("R", seq=MOD - 10, ack=0, window=0, payload=b"", options=wire.Options())
    s.inject("S.", 1234, 99)  # a SYN+ACK nobody asked for, to a listener or not
    s.expect("R", seq=99, ack=0)
    s.expect_nothing()
    assert not s.ep.connections


def test_rst_for_no_connection_segment_without_ack__CLOSED() -> None:
    s = Script(CFG, port=80, listening=False, peer=CLIENT)
    s.inject("S", MOD - 1, 0, options=PEER_OPTS)  # a SYN to a port nobody listens on
    s.expect("R.", seq=0, ack=0, window=0)  # ack = SEG.SEQ + 1, wrapped to 0
    s.inject("FP", 100, 0, payload=b"0123456789")  # no ACK bit: ack = SEG.SEQ + SEG.LEN
    s.expect("R.", seq=0, ack=111)
    s.inject("P", MOD - 3, 0, payload=b"abcde")
    s.expect("R.", seq=0, ack=2)
    assert s.ep.counters["RST sent for no connection"] == 3
    assert not s.ep.connections


def test_rst_is_never_answered_with_rst__CLOSED() -> None:
    s = Script(CFG, port=80, listening=True, peer=CLIENT)
    for flags in ("R", "R.", "RP."):
        s.inject(flags, 5, 6, payload=b"x" if "P" in flags else b"")
        s.expect_nothing()
    assert s.ep.counters["RST for no connection"] == 3
    assert s.ep.counters["RST sent for no connection"] == 0
    assert not s.ep.connections


def test_rst_answering_our_syn_refuses__CLOSED_SYN_SENT_CLOSED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.inject("R", 0, 0)  # no ACK: cannot be about our SYN (RFC 9293), dropped
    s.inject("R.", 0, OUR_ISN + 5)  # acks something we never sent: dropped
    s.expect_nothing()  # and an RST is never answered
    assert conn.state is S.SYN_SENT
    s.inject("R.", 0, OUR_ISN + 1)
    s.expect_nothing()
    assert conn.state is S.CLOSED
    assert isinstance(conn.error, ConnectionRefusedError)
    assert s.terminated(conn) == [conn.error]
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.CLOSED]
    assert not s.ep.connections
    s.advance(100.0)
    s.expect_nothing()  # no SYN retransmission after the refusal


def test_bad_ack_in_syn_sent_gets_rst__SYN_SENT() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.inject("S.", PEER_ISN, OUR_ISN + 2, options=PEER_OPTS)  # acks beyond our SYN
    s.expect("R", seq=OUR_ISN + 2, ack=0)
    s.inject(".", PEER_ISN, OUR_ISN)  # acks before our SYN
    s.expect("R", seq=OUR_ISN, ack=0)
    assert conn.state is S.SYN_SENT
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=PEER_OPTS)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.ESTABLISHED]


@pytest.mark.parametrize("flags", ["R", "R."])
def test_rst_at_rcv_nxt_resets__ESTABLISHED_CLOSED(flags: str) -> None:
    s, conn = server()
    conn.send(b"unacked")
    s.app()
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 1, payload=b"unacked")
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"abc")
    s.inject(flags, PEER_ISN + 4, OUR_ISN + 1)
    s.expect_nothing()
    assert conn.state is S.CLOSED
    assert isinstance(conn.error, ConnectionResetError)
    assert s.terminated(conn) == [conn.error]
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.CLOSED]
    assert not s.ep.connections
    s.advance(100.0)
    s.expect_nothing()  # nothing retransmitted, no delayed ACK either


def test_rst_in_window_not_at_rcv_nxt_gets_challenge_ack__ESTABLISHED() -> None:
    s, conn = server()
    s.inject("R", PEER_ISN + 100, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, payload=b"")  # RFC 5961 §3.2 challenge ACK
    s.inject("R.", PEER_ISN + 1 + 63999, OUR_ISN + 1)  # the last byte of the window
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.state is S.ESTABLISHED and conn.error is None
    assert s.terminated(conn) == []
    # outside the window (beyond it, or before rcv_nxt): silently dropped
    s.inject("R", PEER_ISN + 1 + 64000, OUR_ISN + 1)
    s.inject("R", PEER_ISN, OUR_ISN + 1)
    s.expect_nothing()
    assert conn.state is S.ESTABLISHED
    # the connection still works
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"ok")
    assert conn.read() == b"ok"


def test_rst_in_other_synchronized_states__FIN_WAIT_1_FIN_WAIT_2_CLOSE_WAIT_CLOSED() -> None:
    for close_first, ack_fin in ((True, False), (True, True), (False, False)):
        s, conn = server()
        if close_first:
            conn.close()
            s.app()
            s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
            if ack_fin:
                s.inject(".", PEER_ISN + 1, OUR_ISN + 2)
            before = S.FIN_WAIT_2 if ack_fin else S.FIN_WAIT_1
            rst_seq = PEER_ISN + 1
        else:
            s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)
            s.expect(".", OUR_ISN + 1, PEER_ISN + 2)
            before = S.CLOSE_WAIT
            rst_seq = PEER_ISN + 2
        assert conn.state is before
        s.inject("R", rst_seq, 0)
        s.expect_nothing()
        assert s.states(conn)[-2:] == [before, S.CLOSED]
        assert isinstance(conn.error, ConnectionResetError)


def test_rst_in_last_ack_and_closing_ends_quietly__LAST_ACK_CLOSING_CLOSED() -> None:
    s, conn = server()
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2)
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 2)
    s.inject("R", PEER_ISN + 2, 0)
    assert s.states(conn)[-3:] == [S.CLOSE_WAIT, S.LAST_ACK, S.CLOSED]
    assert s.terminated(conn) == [None]  # the peer had already closed: nothing lost

    s, conn = client()
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    s.inject("R", PEER_ISN + 2, 0)
    s.expect_nothing()
    assert s.states(conn)[-3:] == [S.FIN_WAIT_1, S.CLOSING, S.CLOSED]


def test_rst_in_syn_rcvd_drops_half_open_entry__LISTEN_SYN_RCVD_CLOSED() -> None:
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1)
    conn = s.conn
    s.inject("R", PEER_ISN + 1, 0)
    s.expect_nothing()
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.CLOSED]
    assert conn.error is None and s.terminated(conn) == [None]
    assert not s.ep.syn_queue and not s.ep.connections and s.ep.accept() is None
    s.advance(100.0)
    s.expect_nothing()  # no SYN+ACK retransmission either


def test_abort_sends_rst__ESTABLISHED_CLOSED() -> None:
    s, conn = server()
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"12345")
    conn.send(b"pending")
    s.app()
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 6, payload=b"pending")
    conn.abort()
    s.app()
    s.expect("R.", OUR_ISN + 8, PEER_ISN + 6, payload=b"")
    s.expect_nothing()
    assert conn.state is S.CLOSED and conn.error is None
    assert s.terminated(conn) == [None]
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.CLOSED]
    assert not s.ep.connections
    # the peer's next segment finds no connection: RST with seq = its ACK
    s.inject(".", PEER_ISN + 6, OUR_ISN + 8)
    s.expect("R", OUR_ISN + 8, 0)
    s.advance(100.0)
    s.expect_nothing()


def test_abort_in_syn_sent_sends_nothing__CLOSED_SYN_SENT_CLOSED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    conn.abort()
    s.expect_nothing()
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.CLOSED]
    assert s.terminated(conn) == [None] and not s.ep.connections


def test_rst_in_time_wait_is_ignored__TIME_WAIT_CLOSED() -> None:
    s, conn = _client_in_time_wait(2.0)
    s.advance_to(2.5)
    s.inject("R", PEER_ISN + 2, 0)  # exactly at rcv_nxt: would reset any other state
    s.inject("R.", PEER_ISN + 2, OUR_ISN + 2)
    s.inject("R", PEER_ISN + 50, 0)
    s.expect_nothing()
    assert conn.state is S.TIME_WAIT and conn.error is None
    s.advance_to(2.0 + 2 * CFG.msl - 1e-9)
    assert conn.state is S.TIME_WAIT  # RFC 1337: no assassination, the full 2MSL
    s.advance_to(2.0 + 2 * CFG.msl)
    assert conn.state is S.CLOSED and s.terminated(conn) == [None]


def test_syn_in_synchronized_state_gets_challenge_ack__ESTABLISHED() -> None:
    s, conn = server()
    s.inject("S", PEER_ISN + 50, 0, options=PEER_OPTS)  # RFC 5961 §4
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.state is S.ESTABLISHED and s.terminated(conn) == []


# ---------------------------------------------------------------------------------------
# reliable transfer: RTO (RFC 6298), fast retransmit and NewReno (RFC 5681, 6582),
# delayed and immediate ACKs, zero window and window updates


def test_rto_from_samples_and_backoff__ESTABLISHED() -> None:
    s, conn = client()  # SYN at 0, SYN+ACK at 0.125: the first sample
    st = conn.stats()
    assert (st.srtt, st.rttvar, st.rto) == (0.125, 0.0625, 0.375)  # R, R/2, SRTT + 4 RTTVAR
    s.advance_to(1.0)
    conn.send(b"a" * 100)
    s.app()
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 1, length=100, at=1.0)
    # timeouts double the RTO: 0.375, 0.75, 1.5
    s.advance_to(1.375 - 1e-9)
    s.expect_nothing()
    s.advance_to(3.625)
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 1, length=100, at=1.375)
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 1, length=100, at=2.125)
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 1, length=100, at=3.625)
    assert conn.stats().rto == 3.0 and conn.stats().timeouts == 3
    # Karn: the ACK of a retransmitted segment gives no sample (0.5 from the last copy,
    # 2.75 from the first), and the backed-off RTO stays until a clean sample
    s.advance_to(4.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 101)
    st = conn.stats()
    assert (st.srtt, st.rttvar, st.rto) == (0.125, 0.0625, 3.0)
    # a clean sample of 0.25: RTTVAR = 3/4 * 1/16 + 1/4 * |1/8 - 1/4|, SRTT = 7/8 * 1/8 + 1/32
    s.advance_to(5.0)
    conn.send(b"b" * 100)
    s.app()
    s.expect("P.", OUR_ISN + 101, at=5.0)
    s.advance_to(5.25)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 201)
    st = conn.stats()
    assert (st.srtt, st.rttvar, st.rto) == (0.140625, 0.078125, 0.453125)
    s.advance_to(6.0)
    conn.send(b"c" * 100)
    s.app()
    s.expect("P.", OUR_ISN + 201, at=6.0)
    s.advance_to(7.0)
    s.expect("P.", OUR_ISN + 201, length=100, at=6.453125)
    s.expect_nothing()


def test_rto_clamped_to_rto_min__ESTABLISHED() -> None:
    s, conn = client(rtt=1 / 64)  # 3 x 1/64 < rto_min = 0.2
    assert conn.stats().rto == CFG.rto_min
    s.advance_to(1.0)
    conn.send(b"x")
    s.app()
    s.expect("P.", OUR_ISN + 1, payload=b"x", at=1.0)
    s.advance_to(2.0)
    s.expect("P.", OUR_ISN + 1, payload=b"x", at=1.0 + 0.2)
    s.expect("P.", OUR_ISN + 1, payload=b"x", at=1.0 + 0.2 + 0.4)
    s.expect_nothing()


def test_rto_capped_at_rto_max__ESTABLISHED() -> None:
    cfg = CFG.replace(rto_max=2.0)
    s, conn = client(cfg)
    s.advance_to(1.0)
    conn.send(b"x")
    s.app()
    s.expect("P.", OUR_ISN + 1, at=1.0)
    s.advance_to(12.0)
    times = []
    while s.sent:
        times.append(s.expect("P.", OUR_ISN + 1) and s.last_sent.time)  # type: ignore[union-attr]
    assert times == [1.375, 2.125, 3.625, 5.625, 7.625, 9.625, 11.625]


def test_first_rto_without_sample_is_rto_initial_backed_off__SYN_SENT_ESTABLISHED() -> None:
    """No sample at all (the SYN was resent): the data RTO is the SYN's, not a guess."""
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    assert conn.stats().rto == CFG.rto_initial  # before any sample: rto_initial
    s.expect("S", OUR_ISN, at=0.0)
    s.advance_to(1.0)
    s.expect("S", OUR_ISN, at=CFG.rto_initial)
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=PEER_OPTS)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    st = conn.stats()
    assert st.srtt is None and st.rto >= CFG.rto_initial
    rto = st.rto
    conn.send(b"x")
    s.app()
    s.expect("P.", OUR_ISN + 1, at=1.0)
    s.advance_to(1.0 + 3 * rto)
    s.expect("P.", OUR_ISN + 1, at=1.0 + rto)
    s.expect("P.", OUR_ISN + 1, at=1.0 + 3 * rto)  # and doubles


def test_fast_retransmit_on_third_dupack_and_newreno_partial_ack__ESTABLISHED() -> None:
    s, conn = client()
    payload = data(6000)
    s.advance_to(1.0)
    conn.send(payload)
    s.app()
    for i in range(6):  # cwnd = 10 segments: all six go at once, across the wrap
        s.expect("P." if i == 5 else ".", OUR_ISN + 1 + 1000 * i, PEER_ISN + 1,
                 payload=payload[1000 * i:1000 * (i + 1)], at=1.0)
    s.advance_to(1.125)
    # segment 2 and segment 5 are lost; 1 is acked, then 3, 4 and 6 make three dupacks
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)
    s.expect_nothing()  # two duplicate ACKs are not enough
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)
    s.expect(".", OUR_ISN + 1001, PEER_ISN + 1, payload=payload[1000:2000], at=1.125)
    s.expect_nothing()
    st = conn.stats()
    assert st.fast_retransmits == 1 and st.dup_acks_received == 3
    assert st.ssthresh == 2500 and st.cwnd == 2500 + 3 * 1000  # flight 5000 / 2, + 3 MSS
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)  # a fourth: inflation, no new retransmit
    s.expect_nothing()
    assert conn.stats().cwnd == 6500
    # the retransmission fills the first hole: a partial ACK up to the second hole,
    # which is retransmitted at once (RFC 6582 §3.2 step 4)
    s.advance_to(1.25)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 4001)
    s.expect(".", OUR_ISN + 4001, PEER_ISN + 1, payload=payload[4000:5000], at=1.25)
    s.expect_nothing()
    assert conn.stats().fast_retransmits == 1  # still the same recovery episode
    s.inject(".", PEER_ISN + 1, OUR_ISN + 6001)  # full ACK: recovery ends, cwnd = ssthresh
    s.expect_nothing()
    st = conn.stats()
    assert st.cwnd == st.ssthresh == 2500
    assert st.timeouts == 0 and st.segments_retransmitted == 2
    assert conn.queued == 0
    s.advance(100.0)
    s.expect_nothing()  # the retransmission timer stopped with everything acked


def test_dupacks_need_same_window_and_no_data__ESTABLISHED() -> None:
    """RFC 5681 §2: an ACK that changes the window or carries data is not a duplicate."""
    s, conn = client()
    conn.send(data(6000))  # 5 outstanding after the first ACK: the threshold is 3, not
    s.app()                # early retransmit's lower one (RFC 5827, fewer than 4)
    for i in range(6):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001, window=60000)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001, window=50000)
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1001, window=50000, payload=b"d")
    s.expect_nothing()  # (the data's ACK is delayed)
    s.inject(".", PEER_ISN + 2, OUR_ISN + 1001, window=50000)
    s.inject(".", PEER_ISN + 2, OUR_ISN + 1001, window=50000)
    s.expect_nothing()
    assert conn.stats().fast_retransmits == 0
    s.inject(".", PEER_ISN + 2, OUR_ISN + 1001, window=50000)
    s.expect(".", OUR_ISN + 1001, PEER_ISN + 2, length=1000)
    assert conn.stats().fast_retransmits == 1


def test_delayed_ack_single_segment__ESTABLISHED() -> None:
    s, conn = server()
    s.advance_to(1.0)
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=data(500))
    s.expect_nothing()
    s.advance_to(1.0 + CFG.ack_delay - 1e-9)
    s.expect_nothing()
    s.advance_to(2.0)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 501, window=64000 - 500, at=1.0 + CFG.ack_delay)
    s.expect_nothing()
    assert conn.read() == data(500)


def test_delayed_ack_two_full_segments_acked_at_once__ESTABLISHED() -> None:
    s, conn = server()
    s.advance_to(1.0)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))  # crosses the wrap
    s.expect_nothing()
    s.advance_to(1.01)
    s.inject(".", PEER_ISN + 1001, OUR_ISN + 1, payload=data(1000, 1000))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2001, at=1.01)
    s.advance(1.0)
    s.expect_nothing()  # the delayed-ACK timer was cancelled by that ACK
    assert conn.read() == data(1000) + data(1000, 1000)


def test_delayed_ack_piggybacks_on_data__ESTABLISHED() -> None:
    s, conn = server()
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"question")
    conn.send(b"answer")
    s.app()
    s.expect("P.", OUR_ISN + 1, PEER_ISN + 9, payload=b"answer")
    s.advance(0.25)
    s.inject(".", PEER_ISN + 9, OUR_ISN + 7)
    s.advance(100.0)
    s.expect_nothing()  # no separate ACK of the question ever follows


def test_out_of_order_segment_acked_at_once_with_dupack__ESTABLISHED() -> None:
    s, conn = server()
    s.advance_to(1.0)
    s.inject(".", PEER_ISN + 1001, OUR_ISN + 1, payload=data(1000, 1000))  # a hole before it
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, at=1.0)  # immediate duplicate ACK
    s.inject(".", PEER_ISN + 2001, OUR_ISN + 1, payload=data(500, 2000))
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, at=1.0)
    assert conn.read() == b""
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))  # fills the hole
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2501, at=1.0)  # at once, covering everything
    s.advance(1.0)
    s.expect_nothing()
    assert conn.read() == data(2500)
    assert conn.stats().ooo_segments_received == 2


def test_out_of_order_fin_waits_for_the_hole__ESTABLISHED_CLOSE_WAIT() -> None:
    s, conn = server()
    s.inject("F.", PEER_ISN + 11, OUR_ISN + 1)  # FIN after 10 bytes we have not seen
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)
    assert conn.state is S.ESTABLISHED and not conn.eof_received
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"0123456789")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 12)
    s.expect_nothing()
    assert conn.state is S.CLOSE_WAIT and conn.read() == b"0123456789"


def test_out_of_order_data_with_fin_gets_one_dupack__ESTABLISHED_CLOSE_WAIT() -> None:
    s, conn = server()
    s.inject("FP.", PEER_ISN + 6, OUR_ISN + 1, payload=b"world")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1)  # one duplicate ACK, not two
    s.expect_nothing()
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=b"hello")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 12)
    s.expect_nothing()
    assert conn.state is S.CLOSE_WAIT and conn.read() == b"helloworld"


def test_zero_window_stops_sender_and_probes__ESTABLISHED() -> None:
    s, conn = client(peer_window=2000)
    payload = data(5000)
    s.advance_to(1.0)
    conn.send(payload)
    s.app()
    s.expect(".", OUR_ISN + 1, payload=payload[:1000], at=1.0)
    s.expect(".", OUR_ISN + 1001, payload=payload[1000:2000], at=1.0)
    s.expect_nothing()  # the peer's window is full
    s.advance_to(1.125)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=0)
    s.expect_nothing()
    rto = conn.stats().rto
    # window probes: an ACK one below snd_una, which the peer must answer; backing off
    t1 = 1.125 + rto
    t2 = t1 + 2 * rto
    t3 = t2 + 4 * rto
    s.advance_to(t3)
    for t in (t1, t2, t3):
        s.expect(".", OUR_ISN + 2000, PEER_ISN + 1, payload=b"", at=t)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=0)  # the answer: still closed
    s.expect_nothing()
    assert conn.state is S.ESTABLISHED and conn.unsent == 3000
    # a window update restarts the flow at once
    s.inject(".", PEER_ISN + 1, OUR_ISN + 2001, window=3000)
    s.expect(".", OUR_ISN + 2001, payload=payload[2000:3000], at=t3)
    s.expect(".", OUR_ISN + 3001, payload=payload[3000:4000], at=t3)
    s.expect("P.", OUR_ISN + 4001, payload=payload[4000:], at=t3)
    s.expect_nothing()
    s.inject(".", PEER_ISN + 1, OUR_ISN + 5001, window=3000)
    s.advance(100.0)
    s.expect_nothing()  # no probes once the window is open and the data acked


def test_reading_full_receive_buffer_sends_window_update__ESTABLISHED() -> None:
    s, conn = server(CFG.replace(recv_buffer=4000))
    assert conn.stats().rcv_wnd == 4000
    for i in range(4):
        s.inject(".", PEER_ISN + 1 + 1000 * i, OUR_ISN + 1, payload=data(1000, 1000 * i))
        if i == 1:
            s.expect(".", OUR_ISN + 1, PEER_ISN + 2001, window=2000)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 4001, window=0)
    # a segment into the closed window is trimmed away and answered at once
    s.inject(".", PEER_ISN + 4001, OUR_ISN + 1, payload=b"more")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 4001, window=0)
    assert conn.readable == 4000
    # reading half a segment is not worth announcing (receiver SWS avoidance)
    assert conn.read(500) == data(500)
    s.expect_nothing()
    assert conn.read(500) == data(500, 500)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 4001, window=1000)  # one full segment: announce
    assert conn.read() == data(3000, 1000)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 4001, window=4000)
    s.inject(".", PEER_ISN + 4001, OUR_ISN + 1, payload=b"more")
    assert conn.read() == b"more"


# ---------------------------------------------------------------------------------------
# more states and edges; the close in SYN_RCVD, the abort after a rewind and the three
# "right after" tests are regressions for bugs these scripts found (as is the bare
# out-of-order FIN above)


def test_close_in_syn_rcvd_still_retransmits_syn_ack__SYN_RCVD_FIN_WAIT_1_FIN_WAIT_2() -> None:
    """RFC 9293 §3.10.4: CLOSE in SYN-RECEIVED sends FIN and enters FIN-WAIT-1; the
    SYN+ACK stays unacknowledged, so it is what the retransmission timer resends."""
    a, b = _pair()
    ca, cb = a.connect(), b.connect()
    relay(a, b, "S", A_ISN, 0)
    relay(b, a, "S", B_ISN, 0)
    a.expect("S.", A_ISN, B_ISN + 1, at=0.0)  # lost
    b.expect("S.", B_ISN, A_ISN + 1, at=0.0)  # lost
    ca.close()
    a.app()
    assert ca.state is S.FIN_WAIT_1
    a.expect("F.", A_ISN + 1, B_ISN + 1)  # lost too
    a.expect_nothing()
    a.advance_to(1.0)  # a's timer, armed when its SYN_SENT became SYN_RCVD
    relay(a, b, "S.", A_ISN, B_ISN + 1, options=OUR_SYN_OPTS, at=1.0)
    assert cb.state is S.ESTABLISHED
    relay(b, a, ".", B_ISN + 1, A_ISN + 1)
    relay(a, b, "F.", A_ISN + 1, B_ISN + 1)  # the FIN follows once the SYN is acked
    relay(b, a, ".", B_ISN + 1, A_ISN + 2)
    b.advance_to(1.0)
    a.advance_to(1.0)
    assert a.states(ca) == [S.CLOSED, S.SYN_SENT, S.SYN_RCVD, S.FIN_WAIT_1, S.FIN_WAIT_2]
    assert b.states(cb) == [S.CLOSED, S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT]
    a.expect_nothing()
    b.expect_nothing()


def test_abort_after_go_back_n_rewind_still_resets_peer__ESTABLISHED_CLOSED() -> None:
    """The RST carries the highest sequence number sent (like BSD's snd_max), not a
    snd_nxt rewound by a timeout: a peer that got all the data (only its ACKs were lost)
    would drop an RST below its rcv_nxt and never learn of the abort. (Without SACK, so
    that no tail loss probe comes before the timeout this is about.)"""
    a = Script(CFG.replace(sack=False), port=40000, host="10.0.0.1", isns=(OUR_ISN,),
               peer=("10.0.0.2", 80))
    b = Script(CFG, port=80, host="10.0.0.2", listening=True, isns=(PEER_ISN,),
               peer=("10.0.0.1", 40000))
    ca = a.connect()
    relay(a, b, "S", OUR_ISN)
    relay(b, a, "S.", PEER_ISN, OUR_ISN + 1)
    relay(a, b, ".", OUR_ISN + 1, PEER_ISN + 1)
    cb = b.ep.accept()
    assert cb is not None
    a.advance_to(1.0)
    b.advance_to(1.0)
    ca.send(data(3000))
    a.app()
    for i in range(3):
        relay(a, b, ANY, OUR_ISN + 1 + 1000 * i, length=1000)
    b.advance_to(1.1)
    b.expect(".", PEER_ISN + 1, OUR_ISN + 2001)  # lost
    b.expect(".", PEER_ISN + 1, OUR_ISN + 3001)  # lost
    a.advance_to(1.0 + ca.stats().rto)
    relay(a, b, ".", OUR_ISN + 1, length=1000)  # the timeout resends the first segment
    b.expect(".", PEER_ISN + 1, OUR_ISN + 3001)  # lost as well
    ca.abort()
    relay(a, b, "R.", OUR_ISN + 3001, PEER_ISN + 1)
    assert cb.state is S.CLOSED and isinstance(cb.error, ConnectionResetError)
    b.expect_nothing()


def test_data_on_the_third_message__LISTEN_SYN_RCVD_ESTABLISHED() -> None:
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1)
    s.inject("P.", PEER_ISN + 1, OUR_ISN + 1, payload=b"GET /")  # the ACK carries data
    conn = s.ep.accept()
    assert conn is not None and conn.read() == b"GET /"
    s.advance(CFG.ack_delay)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 6)
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]


def test_fin_on_the_third_message__LISTEN_SYN_RCVD_ESTABLISHED_CLOSE_WAIT() -> None:
    s = Script(CFG, port=80, listening=True, isns=(OUR_ISN,), peer=CLIENT)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1)
    s.inject("FP.", PEER_ISN + 1, OUR_ISN + 1, payload=b"bye")
    s.expect(".", OUR_ISN + 1, PEER_ISN + 5)
    conn = s.ep.accept()
    assert conn is not None and conn.read() == b"bye" and conn.eof_received
    assert s.states(conn) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT]


def test_overlapping_retransmission_takes_only_new_bytes__ESTABLISHED() -> None:
    s, conn = server()
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(600))
    s.inject("P.", PEER_ISN + 301, OUR_ISN + 1, payload=data(700, 300))  # 300 old, 400 new
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1001)
    assert conn.read() == data(1000)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))  # entirely old
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1001)  # acked again at once, nothing delivered
    assert conn.read() == b"" and conn.stats().bytes_received == 1000


def test_data_beyond_the_window_is_trimmed__ESTABLISHED() -> None:
    s, conn = server(CFG.replace(recv_buffer=1500))
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1, payload=data(1000))
    s.inject("P.", PEER_ISN + 1001, OUR_ISN + 1, payload=data(1000, 1000))  # 500 fit
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1501, window=0)
    assert conn.read() == data(1500)


def test_timeout_goes_back_to_one_segment_then_slow_start__ESTABLISHED() -> None:
    s, conn = client()
    payload = data(3000)
    s.advance_to(1.0)
    conn.send(payload)
    s.app()
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i, length=1000, at=1.0)
    s.advance_to(1.375)
    # RFC 5681 §3.1: cwnd = 1 MSS after a timeout, so only the first segment is resent
    s.expect(".", OUR_ISN + 1, payload=payload[:1000], at=1.375)
    s.expect_nothing()
    st = conn.stats()
    assert st.cwnd == 1000 and st.ssthresh == 2000 and st.timeouts == 1
    s.advance_to(1.5)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)
    # slow start: 2 MSS now, the rest goes out; the RTT sample is not taken (Karn)
    s.expect(".", OUR_ISN + 1001, payload=payload[1000:2000], at=1.5)
    s.expect("P.", OUR_ISN + 2001, payload=payload[2000:], at=1.5)
    s.expect_nothing()
    assert conn.stats().srtt == 0.125
    s.inject(".", PEER_ISN + 1, OUR_ISN + 3001)
    s.advance(100.0)
    s.expect_nothing()


def test_ack_of_data_not_yet_resent_after_rewind__ESTABLISHED() -> None:
    """After a timeout rewinds, an ACK for everything (the data had arrived; the ACKs
    were lost) ends the retransmissions at once."""
    s, conn = client()
    conn.send(data(3000))
    s.app()
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i)
    s.advance_to(s.now + 0.375)
    s.expect(".", OUR_ISN + 1, length=1000)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 3001)
    s.expect_nothing()
    s.advance(100.0)
    s.expect_nothing()
    assert conn.queued == 0 and conn.stats().bytes_acked == 3000


def test_ack_of_unsent_data_is_answered_and_ignored__ESTABLISHED() -> None:
    s, conn = server()
    conn.send(b"abc")
    s.app()
    s.expect("P.", OUR_ISN + 1, payload=b"abc")
    s.inject(".", PEER_ISN + 1, OUR_ISN + 100)  # acks beyond snd_max
    s.expect(".", OUR_ISN + 4, PEER_ISN + 1)
    assert conn.queued == 3
    s.inject(".", PEER_ISN + 1, OUR_ISN + 4)
    assert conn.queued == 0


def test_user_timeout_ends_connection_with_rst__ESTABLISHED_CLOSED() -> None:
    cfg = CFG.replace(user_timeout=2.0)
    s, conn = client(cfg)
    s.advance_to(1.0)
    conn.send(b"x" * 10)
    s.app()
    s.expect("P.", OUR_ISN + 1, length=10, at=1.0)
    s.advance_to(3.0 - 1e-9)
    s.expect("P.", OUR_ISN + 1, at=1.375)
    s.expect("P.", OUR_ISN + 1, at=2.125)
    s.expect_nothing()
    assert conn.state is S.ESTABLISHED
    s.advance_to(3.0)
    s.expect("R.", OUR_ISN + 11, PEER_ISN + 1, at=3.0)
    assert isinstance(conn.error, TimeoutError)
    assert s.states(conn)[-2:] == [S.ESTABLISHED, S.CLOSED]
    assert s.terminated(conn) == [conn.error]


def test_user_timeout_restarts_on_progress__ESTABLISHED() -> None:
    cfg = CFG.replace(user_timeout=2.0)
    s, conn = client(cfg)
    s.advance_to(1.0)
    conn.send(data(2000))
    s.app()
    s.advance_to(2.5)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1001)  # progress: the 2 s count again from here
    s.advance_to(4.5 - 1e-9)
    assert conn.state is S.ESTABLISHED
    s.advance_to(4.5)
    assert isinstance(conn.error, TimeoutError)


def test_keepalive_probes_then_timeout__ESTABLISHED_CLOSED() -> None:
    cfg = CFG.replace(keepalive_interval=2.0, keepalive_probes=3)
    s, conn = server(cfg)  # established at 0.125
    s.advance_to(2.125 - 1e-9)
    s.expect_nothing()
    s.advance_to(2.125)
    s.expect(".", OUR_ISN, PEER_ISN + 1, payload=b"", at=2.125)  # seq = snd_una - 1
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)  # answered: the count starts over
    s.advance_to(10.125)
    for t in (4.125, 6.125, 8.125):
        s.expect(".", OUR_ISN, PEER_ISN + 1, at=t)
    s.expect("R.", OUR_ISN + 1, PEER_ISN + 1, at=10.125)
    assert isinstance(conn.error, TimeoutError)
    assert s.states(conn)[-2:] == [S.ESTABLISHED, S.CLOSED]


def test_syn_right_after_reset_in_same_batch__ESTABLISHED_CLOSED_LISTEN_SYN_RCVD() -> None:
    """A connection that just closed must not swallow the next SYN from its peer when
    both arrive in one batch (before the endpoint was asked for output)."""
    s, old = server(isns=(555,))
    s.inject("R", PEER_ISN + 1, 0, flush=False)
    assert old.state is S.CLOSED
    s.inject("S", PEER_ISN + 70000, 0, options=PEER_OPTS, flush=False)
    s.expect("S.", 555, PEER_ISN + 70001)
    new = s.conn
    assert new is not old and s.ep.connections == {CLIENT: new}
    s.inject(".", PEER_ISN + 70001, 556)
    assert s.ep.accept() is new
    assert s.states(old)[-1] is S.CLOSED
    assert s.states(new) == [S.LISTEN, S.SYN_RCVD, S.ESTABLISHED]


def test_syn_right_after_time_wait_expiry_in_same_wakeup__TIME_WAIT_CLOSED_SYN_RCVD() -> None:
    s, old = _server_in_time_wait()
    end = 1.0 + 2 * CFG.msl
    s.now = end
    s.ep.handle_timer(end)  # TIME_WAIT ends; before any output, a new SYN arrives
    assert old.state is S.CLOSED
    s.inject("S", PEER_ISN + 70000, 0, options=PEER_OPTS, flush=False)
    s.expect("S.", 777, PEER_ISN + 70001)
    assert s.conn is not old and s.conn.state is S.SYN_RCVD


def test_connect_right_after_abort__ESTABLISHED_CLOSED_SYN_SENT() -> None:
    s, old = client(isns=(4242,))
    old.abort()
    new = s.ep.connect(SERVER, s.now)  # before the endpoint was asked for output
    s.conns[new] = None
    s.expect("R.", OUR_ISN + 1, PEER_ISN + 1)  # the old connection's RST goes first
    s.expect("S", 4242, 0)
    assert s.ep.connections == {SERVER: new}
    assert s.states(old)[-2:] == [S.ESTABLISHED, S.CLOSED]


def test_first_syn_waits_exactly_rto_initial_below_rto_min__CLOSED_SYN_SENT() -> None:
    cfg = CFG.replace(rto_initial=0.0625, rto_min=0.2)
    s = Script(cfg, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.advance_to(0.4375)
    for t in (0.0, 0.0625, 0.1875, 0.4375):
        s.expect("S", OUR_ISN, 0, at=t)
    s.expect_nothing()
    assert conn.state is S.SYN_SENT


def test_close_in_syn_sent_then_late_syn_ack_is_reset__CLOSED_SYN_SENT_CLOSED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    conn.close()
    s.app()
    s.expect_nothing()  # nothing to tell a peer that never answered
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.CLOSED]
    assert s.terminated(conn) == [None] and not s.ep.connections
    s.inject("S.", PEER_ISN, OUR_ISN + 1, options=PEER_OPTS)
    s.expect("R", OUR_ISN + 1, 0)
    s.advance(100.0)
    s.expect_nothing()


def test_rst_in_syn_rcvd_of_simultaneous_open_refuses__SYN_SENT_SYN_RCVD_CLOSED() -> None:
    s = Script(CFG, port=40000, isns=(OUR_ISN,), peer=SERVER)
    conn = s.connect()
    s.expect("S", OUR_ISN)
    s.inject("S", PEER_ISN, 0, options=PEER_OPTS)
    s.expect("S.", OUR_ISN, PEER_ISN + 1)
    s.inject("R", PEER_ISN + 1, 0)
    s.expect_nothing()
    assert isinstance(conn.error, ConnectionRefusedError)
    assert s.states(conn) == [S.CLOSED, S.SYN_SENT, S.SYN_RCVD, S.CLOSED]


def test_closing_and_last_ack_retransmit_fin__CLOSING_LAST_ACK() -> None:
    s, conn = client()  # RTO 0.375
    s.advance_to(1.0)
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 1, at=1.0)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)  # crossing FINs
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    assert conn.state is S.CLOSING
    s.advance_to(1.375)
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 2, at=1.375)  # our FIN, now with the new ACK
    s.inject(".", PEER_ISN + 2, OUR_ISN + 2)
    assert conn.state is S.TIME_WAIT

    s, conn = server()
    s.advance_to(1.0)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 2)
    conn.close()
    s.app()
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 2, at=1.0)
    s.advance_to(1.375)
    s.expect("F.", OUR_ISN + 1, PEER_ISN + 2, at=1.375)
    s.inject("F.", PEER_ISN + 1, OUR_ISN + 1)  # the peer's FIN again: our ACK was lost
    s.expect(".", OUR_ISN + 2, PEER_ISN + 2)
    assert conn.state is S.LAST_ACK
    s.inject(".", PEER_ISN + 2, OUR_ISN + 2)
    assert s.states(conn)[-3:] == [S.CLOSE_WAIT, S.LAST_ACK, S.CLOSED]



def test_early_retransmit_for_a_small_flight__ESTABLISHED() -> None:
    """RFC 5827: three segments outstanding and nothing more to send can never give three
    duplicate ACKs; two are enough then (outstanding - 1)."""
    s, conn = client()
    conn.send(data(3000))
    s.app()
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)      # the first is lost: duplicate ACKs
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, length=1000)
    assert conn.stats().fast_retransmits == 1 and conn.stats().timeouts == 0


def test_limited_transmit_sends_new_data_on_the_first_two_dupacks__ESTABLISHED() -> None:
    """RFC 3042: with more to send but a full window, each of the first two duplicate
    ACKs lets one new segment out, so a small window can still reach three."""
    cfg = CFG.replace(initial_cwnd_segments=3)
    s, conn = client(cfg)
    conn.send(data(8000))
    s.app()
    for i in range(3):
        s.expect(ANY, OUR_ISN + 1 + 1000 * i)
    s.expect_nothing()                            # cwnd full
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(ANY, OUR_ISN + 3001, length=1000)    # new data, not a retransmission
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(ANY, OUR_ISN + 4001, length=1000)
    s.inject(".", PEER_ISN + 1, OUR_ISN + 1)
    s.expect(".", OUR_ISN + 1, PEER_ISN + 1, length=1000)  # the third: fast retransmit
