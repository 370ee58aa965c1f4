"""Ending connections over real sockets: who closes first and the states on the way
(docs/protocol.md §4.2-4.4, 4.7), TIME_WAIT's 2 x MSL, abort, idle timeout, user_timeout and
keepalive on a path that dies, and an event loop that ends cleanly.

States are read live through `transport.get_extra_info("state")` and, for the whole
path, from utcp's structlog events (one per transition), captured by `state_log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import time

import pytest

import utcp
from tests.aio.util import (
    HOST,
    TIMEOUT,
    Relay,
    StateLog,
    close_writer,
    conn_name,
    echo_handler,
    free_udp_port,
    payload,
    port_of,
    serving,
    wait_until,
)
from utcp import State, wire

MSL = 0.5          # TIME_WAIT lasts 1 s here: long enough to see, short enough to wait out
CONFIG = utcp.Config(msl=MSL)
Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Connected:
    """A client and the server's side of the same connection, both as streams."""

    def __init__(self, server: utcp.Server, client: Pair, accepted: Pair) -> None:
        self.server = server
        self.c_reader, self.c_writer = client
        self.s_reader, self.s_writer = accepted
        self.c = self.c_writer.transport
        self.s = self.s_writer.transport
        self.c_name = conn_name(self.c)
        self.s_name = conn_name(self.s)

    def state(self, side: str) -> State:
        transport = self.c if side == "c" else self.s
        state: State = transport.get_extra_info("state")
        return state


async def _connect(config: utcp.Config = CONFIG) -> Connected:
    accepted: asyncio.Queue[Pair] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await utcp.start_server(handle, HOST, 0, config=config)
    client = await utcp.open_connection(HOST, port_of(server), config=config)
    pair = Connected(server, client, await accepted.get())
    assert pair.state("c") is pair.state("s") is State.ESTABLISHED
    return pair


async def _time_wait_ends(state_log: StateLog, transport: asyncio.BaseTransport) -> None:
    """TIME_WAIT holds, then ends in CLOSED after 2 x MSL; the socket closes with it."""
    await wait_until(lambda: transport.get_extra_info("state") is State.TIME_WAIT,
                     what="TIME_WAIT")
    assert transport.get_extra_info("state") is State.TIME_WAIT  # shortly after entering
    await wait_until(lambda: transport.get_extra_info("state") is State.CLOSED,
                     timeout=2 * MSL + TIMEOUT, what="the end of TIME_WAIT")
    name = conn_name(transport)
    lasted = state_log.time_of(name, "CLOSED") - state_log.time_of(name, "TIME_WAIT")
    # 2 x MSL, not MSL (the lower bound leaves room for a loop iteration's stale clock)
    assert 1.5 * MSL <= lasted <= 2 * MSL + TIMEOUT
    assert transport.get_extra_info("state") is State.CLOSED  # live after connection_lost


async def test_client_closes_first(state_log: StateLog) -> None:
    async with asyncio.timeout(TIMEOUT):
        p = await _connect()
        p.c_writer.write(b"bye")
        p.c_writer.close()
        assert p.state("c") is State.FIN_WAIT_1
        assert await p.s_reader.read() == b"bye"  # then EOF
        assert p.state("s") is State.CLOSE_WAIT
        await wait_until(lambda: p.state("c") is State.FIN_WAIT_2, what="FIN_WAIT_2")
        await p.c_writer.wait_closed()  # our FIN is acknowledged: the transport is done
        assert p.state("c") is State.FIN_WAIT_2
        assert p.state("s") is State.CLOSE_WAIT  # until the server closes too

        p.s_writer.close()
        assert p.state("s") is State.LAST_ACK
        await p.s_writer.wait_closed()
        await wait_until(lambda: p.state("s") is State.CLOSED, what="server CLOSED")
        await _time_wait_ends(state_log, p.c)
        await wait_until(lambda: p.c.get_extra_info("socket").fileno() == -1,
                         what="the client's UDP socket closed after TIME_WAIT")

        assert state_log.path(p.c_name) == [
            "CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT",
            "CLOSED"]
        assert state_log.path(p.s_name) == [
            "LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
        p.server.close()
        await p.server.wait_closed()


async def test_server_closes_first(state_log: StateLog) -> None:
    async with asyncio.timeout(TIMEOUT):
        p = await _connect()
        p.s_writer.write(b"goodbye")
        p.s_writer.close()
        assert p.state("s") is State.FIN_WAIT_1
        assert await p.c_reader.read() == b"goodbye"
        assert p.state("c") is State.CLOSE_WAIT
        await wait_until(lambda: p.state("s") is State.FIN_WAIT_2, what="FIN_WAIT_2")
        p.server.close()
        assert p.state("c") is State.CLOSE_WAIT

        p.c_writer.close()
        assert p.state("c") is State.LAST_ACK
        await p.c_writer.wait_closed()
        await wait_until(lambda: p.state("c") is State.CLOSED, what="client CLOSED")
        await p.server.wait_closed()  # the server's connection is done with, in TIME_WAIT
        await _time_wait_ends(state_log, p.s)
        await wait_until(lambda: p.s.get_extra_info("socket").fileno() == -1,
                         what="the closed server's UDP socket released after TIME_WAIT")

        assert state_log.path(p.s_name) == [
            "LISTEN", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT",
            "CLOSED"]
        assert state_log.path(p.c_name) == [
            "CLOSED", "SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]


async def test_both_close_at_once(state_log: StateLog) -> None:
    async with asyncio.timeout(TIMEOUT):
        p = await _connect()
        p.c_writer.close()
        p.s_writer.close()
        assert p.state("c") is p.state("s") is State.FIN_WAIT_1
        await asyncio.gather(p.c_writer.wait_closed(), p.s_writer.wait_closed())
        await asyncio.gather(_time_wait_ends(state_log, p.c), _time_wait_ends(state_log, p.s))
        for name in (p.c_name, p.s_name):
            path = state_log.path(name)
            closing = path[path.index("ESTABLISHED") + 1:]
            # simultaneous close: CLOSING (the FINs crossed), or straight to TIME_WAIT on
            # a FIN that acks ours; never the passive side's CLOSE_WAIT / LAST_ACK
            assert closing in (
                ["FIN_WAIT_1", "CLOSING", "TIME_WAIT", "CLOSED"],
                ["FIN_WAIT_1", "TIME_WAIT", "CLOSED"],
            ), closing
        p.server.close()
        await p.server.wait_closed()


async def test_close_sends_the_buffered_data_before_fin() -> None:
    data = payload(2 << 20, 21)
    async with asyncio.timeout(TIMEOUT):
        p = await _connect()
        p.c_writer.write(data)
        assert p.c.get_write_buffer_size() > 0
        p.c_writer.close()  # at once, with most of the data not yet sent
        assert p.c.is_closing()
        assert await p.s_reader.read() == data
        await p.c_writer.wait_closed()
        await close_writer(p.s_writer)
        p.server.close()
        await p.server.wait_closed()


@pytest.mark.parametrize("aborting", ["client", "server"])
async def test_abort_resets_the_peer(state_log: StateLog, aborting: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        p = await _connect()
        p.c_writer.write(b"x")
        assert await p.s_reader.readexactly(1) == b"x"
        (mine, my_reader, theirs, their_reader) = (
            (p.c, p.c_reader, p.s, p.s_reader) if aborting == "client"
            else (p.s, p.s_reader, p.c, p.c_reader))
        mine.abort()
        assert mine.is_closing()
        assert mine.get_extra_info("state") is State.CLOSED
        with pytest.raises(ConnectionResetError):
            await their_reader.read()
        assert theirs.get_extra_info("state") is State.CLOSED
        assert await my_reader.read() == b""  # connection_lost(None) locally, as in asyncio
        for transport in (mine, theirs):
            assert state_log.path(conn_name(transport))[-2:] == ["ESTABLISHED", "CLOSED"]
        p.server.close()
        await p.server.wait_closed()


async def test_time_wait_keeps_the_same_connection_from_being_reused(
        state_log: StateLog) -> None:
    """While the server's side lingers in TIME_WAIT, a new SYN from the same peer address
    gets no SYN+ACK; it connects only once 2 x MSL have passed (docs/protocol.md §4.4)."""
    client_port = free_udp_port()
    config = utcp.Config(msl=MSL, rto_initial=0.1)
    server_name = f"{HOST}:{client_port}"  # the server's name for this peer

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await close_writer(writer)  # the server closes first

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(handle, HOST, 0, config=config)
        async with serving(server):
            for message in (b"first", b"second"):
                attempt = time.monotonic()
                reader, writer = await utcp.open_connection(
                    HOST, port_of(server), local_addr=(HOST, client_port), config=config)
                writer.write(message)
                assert await reader.read() == message  # then EOF: the server closed
                await close_writer(writer)
                await wait_until(lambda: state_log.path(server_name)[-1] == "TIME_WAIT")
            # FIN_WAIT_2 is skipped when the client's ACK of our FIN comes with its own
            # FIN (it closes as soon as it reads EOF, and the core lets its FIN carry it)
            path = [s for s in state_log.path(server_name) if s != "FIN_WAIT_2"]
            one = ["LISTEN", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1", "TIME_WAIT"]
            assert path[:11] == [*one, "CLOSED", *one]
            first_tw_start, _ = state_log.times_of(server_name, "TIME_WAIT")
            first_tw_end = state_log.times_of(server_name, "CLOSED")[0]
            assert first_tw_end - first_tw_start >= 1.5 * MSL  # not cut short: 2 x MSL
            assert state_log.times_of(server_name, "SYN_RCVD")[1] >= first_tw_end
            if attempt < first_tw_end:
                # the first SYN met TIME_WAIT: only a retransmission got through
                assert writer.get_extra_info("stats").segments_retransmitted >= 1


async def test_idle_timeout_closes_gracefully(state_log: StateLog) -> None:
    server_config = utcp.Config(msl=MSL, idle_timeout=0.3)
    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(echo_handler, HOST, 0, config=server_config)
        async with serving(server):
            reader, writer = await utcp.open_connection(HOST, port_of(server),
                                                        config=CONFIG)
            # on the loop's clock, which the server stamps its activity with, and taken
            # before the ping: all it last heard (the ping, our ACK) comes later, so the
            # bound is exact (time.monotonic() after the echo was a margin a stall ate)
            loop = asyncio.get_running_loop()
            before_ping = loop.time()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert await reader.read() == b""  # the server gave up on us: FIN
            assert loop.time() - before_ping >= 0.3  # idle_timeout=0.3, not at once
            assert writer.get_extra_info("state") is State.CLOSE_WAIT
            await close_writer(writer)
            assert writer.get_extra_info("state") is State.CLOSED
            assert state_log.path(conn_name(writer.transport))[-3:] == [
                "CLOSE_WAIT", "LAST_ACK", "CLOSED"]


_LOOP_END_SCRIPT = textwrap.dedent("""
    import asyncio, gc, sys
    import utcp

    async def handle(reader, writer):
        try:
            data = await reader.read(100)
            writer.write(data)
            await writer.drain()
            if data != b"server closes":
                await reader.read()
            writer.close()
            await writer.wait_closed()
        except ConnectionResetError:
            writer.close()  # the aborted one

    async def main():
        config = utcp.Config(msl=30)  # TIME_WAIT outlives the loop
        server = await utcp.start_server(handle, "127.0.0.1", 0, config=config)
        port = server.sockets[0].getsockname()[1]
        for message in (b"client closes", b"server closes"):
            reader, writer = await utcp.open_connection("127.0.0.1", port, config=config)
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
            if message == b"server closes":
                assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        # a connection aborted, and one refused
        reader, writer = await utcp.open_connection("127.0.0.1", port, config=config)
        writer.transport.abort()
        server.close()
        await server.wait_closed()
        refused = False
        try:
            await utcp.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            refused = True
        assert refused, "a closed server's port still answered"
        states = sorted(t.get_extra_info("state").name for t in [writer.transport])
        print("ok", states)

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    gc.collect()
    print("done")
""")


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_loop_end_leaves_no_warnings(loop_name: str) -> None:
    """Connections still in TIME_WAIT when asyncio.run() returns leave nothing behind."""
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", _LOOP_END_SCRIPT,
         loop_name],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-3:] == ["ok ['CLOSED']", "done", ""], result.stdout
    for bad in ("Task was destroyed", "unclosed", "ResourceWarning", "Exception ignored",
                "Traceback", "Error"):
        assert bad not in result.stderr, result.stderr


class _Behind:
    """A server reached through a `Relay` that the test can cut (`relay.drop = True`)."""

    def __init__(self) -> None:
        self.accepted: list[asyncio.StreamWriter] = []
        self.server: utcp.Server | None = None
        self.relay: Relay | None = None

    async def connect(self, client_config: utcp.Config) -> Pair:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.append(writer)
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)

        self.server = await utcp.start_server(handle, HOST, 0, config=CONFIG)
        client_port = free_udp_port()
        self.relay = Relay(client_port, port_of(self.server), hold_first=False)
        await self.relay.start()
        return await utcp.open_connection(HOST, self.relay.port_for_a,
                                          local_addr=(HOST, client_port), config=client_config)

    async def close(self) -> None:
        for writer in self.accepted:
            writer.transport.abort()  # the server never heard of the client's end
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.relay is not None:
            self.relay.close()


async def test_user_timeout_ends_a_connection_whose_data_is_never_acked() -> None:
    behind = _Behind()
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await behind.connect(utcp.Config(msl=MSL, user_timeout=0.5))
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            assert behind.relay is not None
            behind.relay.drop = True  # the path dies
            # the loop's clock is the connection's (uvloop caches it per iteration, so
            # time.monotonic() could be ahead of the `now` the send was stamped with):
            # on it the bound is exact however loaded the machine
            loop = asyncio.get_running_loop()
            cut = loop.time()
            writer.write(b"into the void")
            with pytest.raises(TimeoutError):
                await reader.read()
            assert loop.time() - cut >= 0.5  # user_timeout=0.5 after the send, not at once
            assert writer.get_extra_info("state") is State.CLOSED
            assert writer.get_extra_info("stats").segments_retransmitted >= 1
            writer.close()
    finally:
        await behind.close()


async def test_keepalive_keeps_an_idle_connection_and_detects_a_dead_path() -> None:
    behind = _Behind()
    # five unanswered probes 0.1 s apart end it: a loaded machine would have to leave the
    # answers unread for half a second to fail the first half of this test
    probes = 5
    config = utcp.Config(msl=MSL, keepalive_interval=0.1, keepalive_probes=probes)
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await behind.connect(config)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            relay = behind.relay
            assert relay is not None

            def probes_from(start: int, after: bytes) -> list[wire.Segment]:
                # a probe is a bare ACK one below snd_una, i.e. after the last data sent
                (last,) = [seg for seg in relay.seen["a"] if bytes(seg.payload) == after]
                probe_seq = (last.seq + len(after) - 1) % (1 << 32)
                return [seg for seg in relay.seen["a"][start:] if seg.seq == probe_seq
                        and not seg.payload and seg.flags == wire.ACK]

            # counted on the path, not timed: more probes than may go unanswered, and the
            # connection still up, so each run of them was answered
            await wait_until(lambda: len(probes_from(0, b"hello")) > probes,
                             what="idle probes")
            assert writer.get_extra_info("state") is State.ESTABLISHED
            writer.write(b"still there")
            assert await reader.readexactly(11) == b"still there"

            # the echo was heard just now: no probe is outstanding, so after the cut it
            # takes exactly `probes` unanswered ones, then a reset, to give up
            relay.drop = True
            cut = len(relay.seen["a"])
            with pytest.raises(TimeoutError):
                await reader.read()
            await wait_until(lambda: bool(relay.seen["a"][-1].flags & wire.RST),
                             what="the reset that ends it")
            assert len(probes_from(cut, b"still there")) == probes
            assert writer.get_extra_info("state") is State.CLOSED
            writer.close()
    finally:
        await behind.close()


async def test_request_answer_close_takes_eight_datagrams() -> None:
    """A one-shot exchange over real sockets: the handshake's last ACK rides on the
    request and the window update the server owes after its first read (its SYN+ACK
    could offer only 64 KiB) on its answer; the client's FIN is acknowledged at once,
    before the server's application closes: 4 datagrams from each side (was 5 + 5)."""
    stats: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        stats.append(writer.get_extra_info("stats"))

    async with asyncio.timeout(TIMEOUT):
        server = await utcp.start_server(handle, HOST, 0, config=CONFIG)
        async with serving(server):
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=CONFIG)
            writer.write(b"q")
            assert await reader.readexactly(1) == b"q"
            writer.close()
            await writer.wait_closed()
            await wait_until(lambda: bool(stats), what="the server's side to close")
            client = writer.get_extra_info("stats")
    assert (client.segments_sent, client.segments_retransmitted) == (4, 0)
    assert stats[0].segments_sent == 4  # type: ignore[attr-defined]
