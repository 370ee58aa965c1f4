"""Defects found reviewing how this session's changes interact (issues 11 and 12).

Each test mounts the case on the fake clock (sans-IO endpoints shuttled by hand) and
failed before its fix.
"""

from __future__ import annotations

import pytest

from tests.test_secure import SERVER_PRIV, SERVER_PUB
from utcp import wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.state import State

Address = tuple[str, int]
SADDR: Address = ("10.0.0.1", 80)


class Hub:
    """One listening endpoint and any number of client endpoints, each at its own
    address; `pump` runs timers due and delivers every datagram until all is quiet."""

    def __init__(self, server_cfg: Config) -> None:
        self.server = Endpoint(server_cfg, SADDR[1], listening=True)
        self.clients: dict[Address, Endpoint] = {}
        self.to_server: list[tuple[bytes, Address]] = []  # what the server received

    def connect(self, addr: Address, cfg: Config, now: float) -> Connection:
        ep = self.clients[addr] = Endpoint(cfg, addr[1])
        conn = ep.connect(SADDR, now)
        self.pump(now)
        return conn

    def pump(self, now: float) -> None:
        for _ in range(100):
            moved = False
            for ep in (self.server, *self.clients.values()):
                deadline = ep.get_timer()
                if deadline is not None and deadline <= now:
                    ep.handle_timer(now)
                    moved = True
            for data, addr in self.server.datagrams_to_send(now):
                if addr in self.clients:
                    self.clients[addr].receive_datagram(data, SADDR, now)
                    moved = True
            for addr, ep in self.clients.items():
                for data, _ in ep.datagrams_to_send(now):
                    self.to_server.append((data, addr))
                    self.server.receive_datagram(data, addr, now)
                    moved = True
            if not moved:
                return
        raise AssertionError("the endpoints never went quiet")


def test_a_full_secure_table_evicts_an_idle_connection_for_a_proven_client() -> None:
    """Issue 12 item 6 is for both modes: a full table must still let a new legitimate
    client in, the longest-idle connection that never carried data making room. A
    plaintext endpoint did (SYN cookie, then eviction); a secure one dropped every SYN
    "before DH work: queue full" for as long as the idle connections stayed, so 4 idle
    handshakes here (100,000 with the defaults) locked everyone out. The newcomer must
    first prove its address with a retry cookie: nothing is evicted before that."""
    hub = Hub(Config(max_connections=4, secret_key=SERVER_PRIV))
    client_cfg = Config(server_key=SERVER_PUB)
    idle = [hub.connect((f"10.0.1.{i}", 5000 + i), client_cfg, float(i)) for i in range(4)]
    assert [c.state for c in idle] == [State.ESTABLISHED] * 4
    while hub.server.accept() is not None:
        pass
    cookies = hub.server.counters["secure mode: cookie replies sent"]
    newcomer = hub.connect(("10.0.1.99", 5099), client_cfg, 10.0)
    assert newcomer.state is State.ESTABLISHED, dict(hub.server.counters)
    assert hub.server.counters["evicted idle connections"] == 1
    # one retry cookie for the newcomer's first SYN; its second, with the cookie, gets in
    assert hub.server.counters["secure mode: cookie replies sent"] == cookies + 1
    assert len(hub.server.connections) == 4
    assert ("10.0.1.0", 5000) not in hub.server.connections  # the longest idle went


def test_an_evicted_secure_peer_is_told_with_an_authenticated_rst() -> None:
    """Eviction sends the evicted peer a RST (its application sees ConnectionResetError
    at once rather than after keepalive's 55 s). In secure mode the RST was built, but
    the connection's session was forgotten before it was sealed, so it was dropped
    ("no session to seal with") and the peer never heard."""
    hub = Hub(Config(max_connections=2, secret_key=SERVER_PRIV))
    client_cfg = Config(server_key=SERVER_PUB)
    idle = [hub.connect((f"10.0.3.{i}", 7000 + i), client_cfg, float(i)) for i in range(2)]
    while hub.server.accept() is not None:
        pass
    newcomer = hub.connect(("10.0.3.99", 7099), client_cfg, 10.0)
    assert newcomer.state is State.ESTABLISHED
    assert hub.server.counters["secure: no session to seal with"] == 0
    assert idle[0].state is State.CLOSED and isinstance(idle[0].error, ConnectionResetError)
    assert idle[1].state is State.ESTABLISHED


def test_a_full_secure_table_is_not_emptied_by_a_client_that_cannot_prove_its_address(
) -> None:
    """The eviction needs the retry cookie: a SYN whose sender never sees the cookie
    reply (a spoofed source) evicts nobody and costs no DH work."""
    hub = Hub(Config(max_connections=2, secret_key=SERVER_PRIV))
    client_cfg = Config(server_key=SERVER_PUB)
    idle = [hub.connect((f"10.0.2.{i}", 6000 + i), client_cfg, float(i)) for i in range(2)]
    while hub.server.accept() is not None:
        pass
    spoofer = Endpoint(client_cfg, 6099)
    spoofer.connect(SADDR, 5.0)
    (syn, _), = spoofer.datagrams_to_send(5.0)
    before = hub.server.counters["secure: handshakes accepted"]
    cookies = hub.server.counters["secure mode: cookie replies sent"]
    for i in range(10):  # from addresses that never receive the cookie reply
        hub.server.receive_datagram(syn, (f"10.9.9.{i}", 6099), 5.0 + i / 10)
    hub.server.datagrams_to_send(6.0)
    # each was answered with a cookie (not dropped as "queue full", the old lock-out)
    assert hub.server.counters["secure mode: cookie replies sent"] == cookies + 10
    assert hub.server.counters["evicted idle connections"] == 0
    assert hub.server.counters["secure: handshakes accepted"] == before  # no DH work
    assert [c.state for c in idle] == [State.ESTABLISHED] * 2


def _bulk_client(hub: Hub, addr: Address, cfg: Config) -> Connection:
    """An established client with ten segments in flight, none acknowledged."""
    conn = hub.connect(addr, cfg, 0.0)
    assert conn.state is State.ESTABLISHED
    conn.send(bytes(64 * 1024))
    hub.clients[addr].datagrams_to_send(1.0)  # sent, never delivered
    assert conn.snd_max - conn.snd_una >= 10 * 1000
    return conn


def test_icmp_quoting_any_byte_in_flight_does_not_reset() -> None:
    """An ICMP port unreachable is unauthenticated. It ended an open connection if it
    quoted any sequence number from snd_una - 1 to snd_max, so a blind attacker who
    knows the addresses hit with probability flight / 2**32 per datagram: about 1 in
    1,024 against a 4 MiB flight (the default send_buffer), far cheaper than the RST it
    stands for (RFC 5961: the exact sequence number), and in secure mode the one
    unauthenticated datagram that could end a connection. The datagrams a dead peer's
    host answers and that we send whatever the flight are the ones believed: the head's
    retransmission (snd_una), a keepalive or window probe (snd_una - 1), a pure ACK
    (snd_max), so a dead peer is still noticed by the next timeout at the latest."""
    hub = Hub(Config())
    conn = _bulk_client(hub, ("10.0.4.1", 8001), Config())
    for inside in (conn.snd_una + 1, conn.snd_una + 5000, conn.snd_max - 1):
        assert not conn.icmp_unreachable(inside & 0xFFFFFFFF)
        assert conn.state is State.ESTABLISHED
    assert conn.icmp_unreachable(conn.snd_una & 0xFFFFFFFF)
    assert conn.state is State.CLOSED and isinstance(conn.error, ConnectionResetError)


def test_icmp_quoting_what_a_dead_peer_draws_resets() -> None:
    """The datagrams that reach a dead peer's host whatever was in flight: a probe
    (snd_una - 1), a pure ACK (snd_max), the head's retransmission (snd_una)."""
    for quoted in ("probe", "ack", "head"):
        hub = Hub(Config())
        conn = _bulk_client(hub, ("10.0.4.2", 8002), Config())
        seq = {"probe": conn.snd_una - 1, "ack": conn.snd_max, "head": conn.snd_una}[quoted]
        assert conn.icmp_unreachable(seq & 0xFFFFFFFF), quoted
        assert isinstance(conn.error, ConnectionResetError)


def test_blind_datagrams_do_not_keep_a_dead_peers_connection_alive() -> None:
    """Keepalive (on by default) must notice a silent dead peer within about a minute
    (issue 11). Every datagram for the connection restarted it and cleared the count of
    unanswered probes, acceptable or not: one blind datagram every 20 s (any sequence
    number, a RST or a stale segment would do) kept a dead peer's connection and its
    buffers forever. As Linux (rcv_tstamp moves in tcp_ack, after the checks), only a
    segment that passes the window and ACK checks counts as hearing from the peer."""
    hub = Hub(Config())
    addr: Address = ("10.0.6.1", 9101)
    client = hub.connect(addr, Config(), 0.0)
    hub.pump(1.0)
    server_conn = hub.server.accept()
    assert server_conn is not None and server_conn.state is State.ESTABLISHED
    del hub.clients[addr]  # the peer's process dies: nothing more from it
    stale = wire.build_fast(addr[1], SADDR[1], (server_conn.rcv_nxt + (1 << 30)) & 0xFFFFFFFF,
                            server_conn.snd_nxt & 0xFFFFFFFF, wire.ACK, 1000,
                            b"", b"blind")
    now = 1.0
    blind = 0
    while now < 300.0 and server_conn.state is not State.CLOSED:
        now += 20.0
        hub.server.receive_datagram(stale, addr, now)  # the blind attacker's datagram
        blind += 1
        for t in range(20):
            hub.pump(now + t)
    # every blind datagram reached the connection (it was open for each) and was refused
    assert server_conn.stats().dropped_segments == blind > 1
    assert server_conn.state is State.CLOSED, f"still {server_conn.state.name} at {now} s"
    assert isinstance(server_conn.error, TimeoutError)
    assert now <= 100.0
    del client


def test_a_returning_syn_cookie_is_dropped_not_reset_while_the_accept_queue_is_full(
) -> None:
    """A client answered with a SYN cookie is ESTABLISHED once it sends its ACK. If by
    then the accept queue has filled (the application is slow to take connections),
    Linux drops the ACK (listen overflow, tcp_abort_on_overflow = 0) and the client's
    next segment gets in once there is room. Here the bare ACK drew a RST and the client
    failed with ConnectionResetError: a burst of connects to a busy server reset the
    clients past the backlog instead of making them wait."""
    server = Endpoint(Config(), SADDR[1], listening=True, backlog=1)
    a_addr, b_addr = ("10.0.7.1", 9201), ("10.0.7.2", 9202)
    a, b = Endpoint(Config(), a_addr[1]), Endpoint(Config(), b_addr[1])
    a.connect(SADDR, 0.0)

    def deliver(src: Endpoint, src_addr: Address, now: float) -> None:
        out = src.datagrams_to_send(now)
        src.handle_timer(now)  # the handshake's last ACK waits for the timer
        for data, _ in out + src.datagrams_to_send(now):
            server.receive_datagram(data, src_addr, now)

    def answer(dst: Endpoint, dst_addr: Address, now: float) -> None:
        for data, addr in server.datagrams_to_send(now):
            assert addr == dst_addr
            dst.receive_datagram(data, SADDR, now)

    deliver(a, a_addr, 0.0)            # A's SYN: the SYN queue's one place
    answer(a, a_addr, 0.0)
    b_conn = b.connect(SADDR, 0.1)
    deliver(b, b_addr, 0.1)            # B's SYN: a cookie
    answer(b, b_addr, 0.1)
    assert server.counters["SYN cookies sent"] == 1 and b_conn.state is State.ESTABLISHED
    deliver(a, a_addr, 0.2)            # A completes: the accept queue is full
    server.datagrams_to_send(0.2)
    assert len(server.accept_queue) == 1
    deliver(b, b_addr, 0.3)            # B's bare ACK, with the cookie
    answer(b, b_addr, 0.3)
    assert b_conn.state is State.ESTABLISHED, b_conn.error
    assert b_addr not in server.connections
    # the application takes A: B's first data segment (its cookie again) gets in
    assert server.accept() is not None
    b_conn.send(b"request")
    deliver(b, b_addr, 0.4)
    server.datagrams_to_send(0.4)
    conn = server.accept()
    assert conn is not None and conn.peer == b_addr and conn.read() == b"request"


def test_no_timer_is_left_armed_once_a_connection_is_closed() -> None:
    """The sans-IO contract: `get_timer()` names when `handle_timer` has work. A
    connection that ended with a tail loss probe (or RACK's reordering timer) armed
    kept that deadline: `handle_timer` returns at once for a CLOSED connection, so a
    caller driving it by its timer would spin on a deadline in the past forever."""
    hub = Hub(Config())
    conn = hub.connect(("10.0.8.1", 9301), Config(), 0.0)
    conn.send(bytes(5000))
    hub.clients[("10.0.8.1", 9301)].datagrams_to_send(1.0)  # in flight, never delivered
    # the next timer is the tail loss probe's (two round trips, at least 10 ms; RFC
    # 8985 §7.2), before the RTO's
    srtt = conn.stats().srtt
    assert srtt is not None
    probe_at = conn.get_timer()
    assert probe_at is not None and probe_at == pytest.approx(1.0 + max(2 * srtt, 0.01))
    assert probe_at < 1.0 + conn.stats().rto
    conn.abort()
    assert conn.state is State.CLOSED
    assert conn.get_timer() is None
