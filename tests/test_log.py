"""utcp's structlog events: one per state change, retransmission timeout, fast retransmit,
drop, reset, failed handshake and idle timeout; nothing at all while logging is off.

Events are captured with `utcp.log.configure(processors=[recorder])`, a processor that
keeps each event and raises `structlog.DropEvent`; `utcp.log.disable()` in teardown.
The sans-IO tests run the core on the simulator's fake clock (deterministic); a few run
over real loopback sockets. The cost of disabled logging is measured by
`benchmarks/log_overhead.py`, not here: a timed unit test would be flaky.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import utcp
from tests.netsim import Address, LinkProfile, Network
from utcp import log, wire
from utcp.config import Config
from utcp.connection import Connection
from utcp.endpoint import Endpoint
from utcp.events import StateChanged
from utcp.state import State

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
CLIENT_NAME = f"{SERVER[0]}:{SERVER[1]}"   # a connection is named after its peer
SERVER_NAME = f"{CLIENT[0]}:{CLIENT[1]}"
CFG = Config(msl=0.5, rto_initial=0.2, rto_min=0.05)
HOST = "127.0.0.1"
TIMEOUT = 60.0


class Recorder:
    """A structlog processor that keeps every event and lets none through."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        self.events.append(dict(event_dict))
        raise structlog.DropEvent

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event
                and all(e.get(k) == v for k, v in match.items())]

    def path(self, conn: str) -> list[str]:
        """Every state `conn` was in, in order, as its `state` events tell."""
        steps = self.named("state", conn=conn)
        for before, after in itertools.pairwise(steps):
            assert before["new"] == after["old"], steps  # no transition is missing
        return [steps[0]["old"], *(e["new"] for e in steps)] if steps else []


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    log.configure(processors=[rec])
    try:
        yield rec
    finally:
        log.disable()


# ---------------------------------------------------------------------- sans-IO driver

class Pair:
    """A client and a listening server endpoint on the simulator."""

    def __init__(self, profile: LinkProfile | None = None, config: Config = CFG,
                 seed: int = 1) -> None:
        self.net = Network(seed, profile or LinkProfile(delay=0.005), trace=True)
        self.client_ep = Endpoint(config, CLIENT[1], rng=random.Random(seed))
        self.server_ep = Endpoint(config, SERVER[1], listening=True,
                                  rng=random.Random(seed + 1))
        self.net.add(SERVER, self.server_ep)
        self.net.add(CLIENT, self.client_ep)
        self.client: Connection = self.client_ep.connect(SERVER, self.net.now)
        self.server: Connection | None = None
        self.received = bytearray()

    def poll(self) -> None:
        if self.server is None:
            self.server = self.server_ep.accept()
        if self.server is not None:
            self.received += self.server.read()

    def run_until(self, predicate: Any, limit: float = 120.0) -> None:
        def stop() -> bool:
            self.poll()
            return bool(predicate())
        self.net.run(until=self.net.now + limit, stop=stop)
        assert stop(), f"not reached by t={self.net.now}:\n{self.net.format_trace(30)}"


def carries_data_from(src: Address) -> Any:
    def predicate(data: bytes, s: Address, d: Address, now: float) -> bool:
        return s == src and len(wire.parse(data).payload) > 0
    return predicate


# ---------------------------------------------------------------------- states

def test_every_state_of_one_connection_in_order(recorder: Recorder) -> None:
    """Client closes first; the server acks the FIN, sends more, then closes."""
    p = Pair()
    p.client.send(b"x" * 10_000)
    p.run_until(lambda: len(p.received) == 10_000)
    p.client.close()
    p.run_until(lambda: p.client.state == State.FIN_WAIT_2)
    assert p.server is not None and p.server.state == State.CLOSE_WAIT
    p.server.send(b"half-close: the server may still send")
    p.server.close()
    p.run_until(lambda: p.client.state == p.server.state == State.CLOSED)  # type: ignore

    assert recorder.path(CLIENT_NAME) == [
        "CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"]
    assert recorder.path(SERVER_NAME) == [
        "LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    triggers = [e["trigger"] for e in recorder.named("state", conn=CLIENT_NAME)]
    assert triggers == ["active open", "SYN+ACK", "close", "ACK of FIN", "FIN", "2MSL timeout"]
    # the log tells exactly what the core's own events tell
    changes = []
    while (ev := p.client.next_event()) is not None:
        if isinstance(ev, StateChanged):
            changes.append((ev.old.name, ev.new.name))
    assert changes == [(e["old"], e["new"]) for e in recorder.named("state", conn=CLIENT_NAME)]
    # nothing went wrong on a clean link
    assert not recorder.named("rto") and not recorder.named("drop")


def test_simultaneous_close_passes_closing(recorder: Recorder) -> None:
    p = Pair()
    p.run_until(lambda: p.server is not None and p.client.state == State.ESTABLISHED)
    assert p.server is not None
    p.client.close()
    p.server.close()
    p.run_until(lambda: p.client.state == p.server.state == State.CLOSED)
    for name in (CLIENT_NAME, SERVER_NAME):
        assert recorder.path(name)[-4:] == ["FIN_WAIT_1", "CLOSING", "TIME_WAIT", "CLOSED"]


async def test_states_over_real_sockets(recorder: Recorder) -> None:
    config = Config(msl=0.05)
    done = asyncio.Event()
    clients: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()             # until the client's FIN
        # answer only once the client has taken our ACK of it (FIN_WAIT_2): a fixed sleep
        # here raced a loaded machine, where "bye" and our FIN could catch up with the ACK
        async with asyncio.timeout(TIMEOUT):
            while not clients or clients[0].get_extra_info("state") != State.FIN_WAIT_2:
                await asyncio.sleep(0.005)
        writer.write(b"bye")
        writer.close()
        await writer.wait_closed()
        done.set()

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(handler, HOST, 0, config=config)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await utcp.open_connection(HOST, port, config=config)
        clients.append(writer)
        client_port = writer.get_extra_info("sockname")[1]
        writer.write(b"hello")
        writer.write_eof()
        assert await reader.read() == b"bye"
        writer.close()
        await writer.wait_closed()
        await done.wait()
        while writer.get_extra_info("state") != State.CLOSED:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
    assert recorder.path(f"{HOST}:{port}") == [
        "CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"]
    assert recorder.path(f"{HOST}:{client_port}") == [
        "LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]


# ---------------------------------------------------------------------- loss and errors

def test_tail_loss_logs_a_retransmission_timeout(recorder: Recorder) -> None:
    p = Pair()
    p.run_until(lambda: p.client.state == State.ESTABLISHED)
    # a lone segment, lost: no duplicate ACK can follow it, only the timer finds it
    # (three segments would be repaired by early retransmit, RFC 5827)
    p.net.drop_next(carries_data_from(CLIENT))
    p.client.send(b"y" * 1000)
    p.run_until(lambda: len(p.received) == 1000)
    rto = recorder.named("rto", conn=CLIENT_NAME)
    assert len(rto) == 1
    assert rto[0]["state"] == "ESTABLISHED" and rto[0]["rto"] >= CFG.rto_min
    assert p.client.stats().timeouts == 1
    assert not recorder.named("fast_retransmit")


def test_loss_in_a_long_flight_logs_a_fast_retransmit(recorder: Recorder) -> None:
    p = Pair()
    p.run_until(lambda: p.client.state == State.ESTABLISHED)
    p.net.drop_next(carries_data_from(CLIENT))
    p.client.send(b"z" * 14_000)  # ten segments: nine duplicate ACKs
    p.run_until(lambda: len(p.received) == 14_000)
    fast = recorder.named("fast_retransmit", conn=CLIENT_NAME)
    assert len(fast) == 1 and isinstance(fast[0]["snd_una"], int)
    assert not recorder.named("rto")
    assert p.client.stats().fast_retransmits == 1


def test_drops_are_logged_with_a_reason(recorder: Recorder) -> None:
    p = Pair()
    p.client.send(b"a" * 2000)
    p.run_until(lambda: len(p.received) == 2000)
    # an old duplicate of a data segment: below rcv_nxt, outside the window
    old = next(r.data for r in p.net.trace or [] if r.src == CLIENT and r.fate == "sent"
               and wire.parse(r.data).payload)
    p.server_ep.receive_datagram(old, CLIENT, p.net.now)
    # a datagram too short to be a TCP header
    p.server_ep.receive_datagram(b"\x00" * 7, CLIENT, p.net.now)
    reasons = [e["reason"] for e in recorder.named("drop")]
    assert "outside window" in reasons
    assert recorder.named("drop", conn=SERVER_NAME, reason="outside window")
    malformed = [e for e in recorder.named("drop") if "conn" not in e]
    assert len(malformed) == 1 and malformed[0]["peer"] == str(CLIENT)


def test_reset_is_logged_by_the_side_that_receives_it(recorder: Recorder) -> None:
    p = Pair()
    p.run_until(lambda: p.server is not None and p.client.state == State.ESTABLISHED)
    p.client.abort()
    p.run_until(lambda: p.server is not None and p.server.state == State.CLOSED)
    assert recorder.named("reset", conn=SERVER_NAME, state="ESTABLISHED")
    assert recorder.path(SERVER_NAME)[-1] == "CLOSED"
    assert [e["trigger"] for e in recorder.named("state", conn=CLIENT_NAME)][-1] == "abort"


def test_failed_handshake_is_logged(recorder: Recorder) -> None:
    config = CFG.replace(syn_retries=2)
    net = Network(1, LinkProfile(delay=0.005))
    ep = Endpoint(config, CLIENT[1])
    net.add(CLIENT, ep)  # nothing at SERVER: every SYN is lost
    conn = ep.connect(SERVER, 0.0)
    net.run(until=60.0, stop=lambda: conn.state == State.CLOSED)
    assert isinstance(conn.error, TimeoutError)
    assert recorder.named("handshake_failed", conn=CLIENT_NAME, retries=2)
    assert recorder.path(CLIENT_NAME) == ["CLOSED", "SYN_SENT", "CLOSED"]


def test_idle_timeout_is_logged(recorder: Recorder) -> None:
    p = Pair(config=CFG.replace(idle_timeout=2.0))
    p.run_until(lambda: p.server is not None and p.client.state == State.ESTABLISHED)
    p.run_until(lambda: p.client.state == State.CLOSED, limit=30.0)
    # the client heard last from the server first (its handshake ACK is the last segment
    # either side sent), so its timer is the first to fire and it closes actively; the
    # server, left in CLOSE_WAIT by an application that never closes, times out after it
    timeouts = [e["conn"] for e in recorder.named("idle_timeout")]
    assert timeouts[0] == CLIENT_NAME, timeouts
    assert "FIN_WAIT_1" in recorder.path(CLIENT_NAME)
    assert "CLOSE_WAIT" in recorder.path(SERVER_NAME)


async def test_real_socket_loss_is_logged(recorder: Recorder) -> None:
    from tests.test_pcap import LossyRelay

    # TIME_WAIT (2 x msl) outlasts the server's FIN retransmission timeout: when the relay
    # drops the client's last ACK, the client is still there to answer the resent FIN
    config = Config(msl=0.5, rto_initial=0.2)
    got = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            got.extend(chunk)
        writer.close()

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(sink, HOST, 0, config=config)
        # every 20th datagram each way, and the first SYN: a SYN timeout, fast retransmits
        relay = LossyRelay(server.sockets[0].getsockname()[1], every=20)
        try:
            reader, writer = await utcp.open_connection(HOST, await relay.start(),
                                                        config=config)
            writer.write(bytes(1 << 20))
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            stats = writer.get_extra_info("stats")
            server.close()
            await server.wait_closed()
        finally:
            relay.close()
            server.close()
    assert len(got) == 1 << 20
    name = f"{HOST}:{relay.front.get_extra_info('sockname')[1]}"  # type: ignore[union-attr]
    fast = recorder.named("fast_retransmit", conn=name)
    rto = recorder.named("rto", conn=name)
    assert len(fast) == stats.fast_retransmits > 0
    assert len(rto) == stats.timeouts >= 1
    assert rto[0]["state"] == "SYN_SENT"
    assert recorder.path(name)[:3] == ["CLOSED", "SYN_SENT", "ESTABLISHED"]


# ---------------------------------------------------------------------- off means off

@pytest.fixture
def emit_forbidden(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """`utcp.log.emit` replaced by one that records and raises: it must never run."""
    log.disable()
    calls: list[tuple[str, dict[str, Any]]] = []

    def emit(event: str, **fields: Any) -> None:
        calls.append((event, fields))
        raise AssertionError(f"utcp.log.emit({event!r}) called with logging disabled")

    monkeypatch.setattr(log, "emit", emit)
    return calls


def test_disabled_logging_never_calls_emit_sans_io(
        emit_forbidden: list[tuple[str, dict[str, Any]]]) -> None:
    p = Pair(LinkProfile(delay=0.005, loss=0.1, duplicate=0.05, reorder=0.1), seed=3)
    p.client.send(random.Random(3).randbytes(200_000))
    p.run_until(lambda: p.client.state == State.ESTABLISHED)
    p.client.close()  # (a close in SYN_SENT would drop the connection, RFC 9293 §3.10.4)
    p.run_until(lambda: len(p.received) == 200_000 and p.server is not None
                and p.server.eof_received)
    assert p.server is not None
    p.server.close()
    p.run_until(lambda: p.client.state == p.server.state == State.CLOSED)
    p.server_ep.receive_datagram(b"junk", CLIENT, p.net.now)  # a drop, too
    stats = p.client.stats()
    assert stats.segments_retransmitted > 0  # the paths that would log did run
    assert emit_forbidden == []


async def test_disabled_logging_never_calls_emit_on_sockets(
        emit_forbidden: list[tuple[str, dict[str, Any]]]) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
        writer.close()

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo, HOST, 0, config=Config(msl=0.05))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await utcp.open_connection(HOST, port, config=Config(msl=0.05))
        writer.write(bytes(300_000))
        writer.write_eof()
        assert len(await reader.read()) == 300_000
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    assert emit_forbidden == []


# ---------------------------------------------------------------------- rendering

def test_default_chain_renders_json_lines() -> None:
    out = io.StringIO()
    log.configure(json=True, stream=out)
    try:
        p = Pair()
        p.run_until(lambda: p.client.state == State.ESTABLISHED)
    finally:
        log.disable()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines and all(line["level"] == "info" and "timestamp" in line for line in lines)
    first = lines[0]
    assert (first["event"], first["conn"], first["old"], first["new"]) == (
        "state", CLIENT_NAME, "CLOSED", "SYN_SENT")


def test_level_filters_events() -> None:
    rec = Recorder()
    log.configure(processors=[rec], level="warning")  # events are info: none pass
    try:
        p = Pair()
        p.run_until(lambda: p.client.state == State.ESTABLISHED)
    finally:
        log.disable()
    assert rec.events == []
    assert not log.enabled()
    log.configure(processors=[rec], level=logging.DEBUG)
    try:
        assert log.enabled()
        log.emit("state", conn="x", old="A", new="B")
    finally:
        log.disable()
    assert rec.events == [{"event": "state", "conn": "x", "old": "A", "new": "B"}]
