"""A dead peer must not hang the other side forever (issue #11 item 2).

A process that exits, or whose event loop closes, with connections open resets them
(as the kernel does for a process that dies holding TCP sockets); one that is killed
sends nothing, and then the survivor's next datagram draws an ICMP port unreachable,
which resets the connection on a client's connected socket and on a server's shared
unconnected one (IP_RECVERR). The peers here are real subprocesses on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, port_of, wait_until

ROOT = Path(__file__).resolve().parents[2]
PROMPT = 10.0   # "promptly": far below what keepalive would take, generous under load

CHILD_CLIENT = r"""
import asyncio, sys, uvloop, utcp
mode, loop_name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def connect():
    reader, writer = await utcp.open_connection("127.0.0.1", port)
    writer.write(b"hello")
    assert await reader.readexactly(2) == b"ok"   # established, both ways
    return reader, writer

keep = []
if mode == "run":      # asyncio.run's loop closes with the connection open; we live on
    async def main():
        keep.append(await connect())
    (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
    print("loop closed", flush=True)
    sys.stdin.read()
elif mode == "closed":   # closes without waiting, and asyncio.run ends at once
    async def main():
        reader, writer = await connect()
        writer.write(bytes(range(256)) * 1000)
        writer.close()
    (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
    print("loop closed", flush=True)
    sys.stdin.read()
elif mode == "exit":   # the interpreter exits with the loop (and connection) still open
    loop = (uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop)()
    keep.append(loop.run_until_complete(connect()))
    print("exiting", flush=True)
    sys.exit(0)
elif mode == "kill":   # waits to be SIGKILLed: nothing is sent on its behalf
    loop = (uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop)()
    keep.append(loop.run_until_complete(connect()))
    print("connected", flush=True)
    loop.run_forever()
"""

CHILD_SERVER = r"""
import asyncio, sys, uvloop, utcp

async def handle(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)

async def main():
    server = await utcp.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

(uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main())
"""


@contextlib.contextmanager
def child(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


async def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(TIMEOUT):
        line = await asyncio.to_thread(proc.stdout.readline)
    assert line, f"the child died (exit status {proc.poll()})"
    return line.strip()


@contextlib.asynccontextmanager
async def watching_server() -> AsyncIterator[tuple[utcp.Server, asyncio.Queue[object]]]:
    """A server whose handler answers "ok" to "hello", then reports how read() ended."""
    outcomes: asyncio.Queue[object] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(5) == b"hello"
        writer.write(b"ok")
        try:
            outcomes.put_nowait(await reader.read())
        except ConnectionError as exc:
            outcomes.put_nowait(exc)
        writer.close()

    server = await utcp.start_server(handler, HOST, 0, config=FAST)
    try:
        yield server, outcomes
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TIMEOUT):
                await server.wait_closed()


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("mode", ["run", "exit"])
async def test_peer_leaving_with_connection_open_resets_it(mode: str, child_loop: str) -> None:
    async with watching_server() as (server, outcomes):
        with child(CHILD_CLIENT, mode, child_loop, str(port_of(server))) as proc:
            await read_line(proc)
            async with asyncio.timeout(PROMPT):
                outcome = await outcomes.get()
            assert isinstance(outcome, ConnectionResetError), outcome
            if mode == "run":
                assert proc.poll() is None  # the loop closed, not the process


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
async def test_peer_closing_as_its_loop_ends_still_delivers(child_loop: str) -> None:
    """`write(); close()` and the loop ends: as with kernel TCP the data and the EOF
    arrive (the loop's shutdown waits for the FIN's ACK), and no reset follows."""
    async with watching_server() as (server, outcomes):
        with child(CHILD_CLIENT, "closed", child_loop, str(port_of(server))) as proc:
            await read_line(proc)
            async with asyncio.timeout(PROMPT):
                outcome = await outcomes.get()
            assert outcome == bytes(range(256)) * 1000
            assert proc.poll() is None


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
async def test_killed_client_is_noticed_by_server_icmp(child_loop: str) -> None:
    """The server's socket is unconnected: the ICMP comes through its error queue."""
    async with watching_server() as (server, outcomes):
        with child(CHILD_CLIENT, "kill", child_loop, str(port_of(server))) as proc:
            await read_line(proc)
            writers = [t for t in server._active]
            assert len(writers) == 1
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, TIMEOUT)
            writers[0].write(b"anyone there?")  # the survivor sends: ICMP comes back
            async with asyncio.timeout(PROMPT):
                outcome = await outcomes.get()
            assert isinstance(outcome, ConnectionResetError), outcome
            assert server._ports[0].endpoint.connections == {}


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
async def test_killed_server_is_noticed_by_client_icmp(child_loop: str) -> None:
    """The client's socket is connected: the ICMP comes as a receive error."""
    with child(CHILD_SERVER, child_loop) as proc:
        port = int(await read_line(proc))
        reader, writer = await utcp.open_connection(HOST, port, config=FAST)
        writer.write(b"echo")
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(4) == b"echo"
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, TIMEOUT)
        writer.write(b"anyone there?")
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(PROMPT):
                await reader.read()
        writer.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def forge_port_unreachable(victim: tuple[str, int], peer: tuple[str, int], seq: int) -> None:
    """An ICMP port unreachable as the peer's host would send it, quoting a datagram
    the victim sent to the peer: an IP header, the UDP header, our TCP header."""
    tcp = struct.pack("!HHIIBBHHH", victim[1], peer[1], seq, 0, 5 << 4, 0x10, 100, 0, 0)
    udp = struct.pack("!HHHH", victim[1], peer[1], 8 + len(tcp), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(tcp), 0, 0x4000, 64, 17,
                     0, socket.inet_aton(victim[0]), socket.inet_aton(peer[0]))
    body = ip + udp + tcp
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + body
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.sendto(icmp, (victim[0], 0))


async def test_forged_icmp_must_quote_a_sequence_number_in_flight() -> None:
    """RFC 5927 §4.1: a blind attacker's ICMP quoting a guessed sequence number does
    nothing; one quoting what the victim sent (as the peer's own host would) resets."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except PermissionError:
        pytest.skip("forging ICMP needs CAP_NET_RAW")
    async with watching_server() as (server, outcomes):
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        writer.write(b"hello")
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(2) == b"ok"
        (victim_transport,) = server._active
        conn = victim_transport.get_extra_info("connection")
        counters = server._ports[0].endpoint.counters
        victim = (HOST, port_of(server))
        peer = writer.get_extra_info("sockname")
        for guess in (conn.snd_una + (1 << 31), conn.snd_una + 100_000, conn.snd_una - 2):
            forge_port_unreachable(victim, peer, guess & 0xFFFFFFFF)
        await wait_until(lambda: counters["ICMP port unreachable ignored"] >= 3,
                         what="the forged ICMPs to be read and ignored")
        assert outcomes.empty()
        assert server._ports[0].endpoint.connections  # the connection lives on
        forge_port_unreachable(victim, peer, conn.snd_una & 0xFFFFFFFF)
        async with asyncio.timeout(PROMPT):
            outcome = await outcomes.get()
        assert isinstance(outcome, ConnectionResetError), outcome
        writer.close()
