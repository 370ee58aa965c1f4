"""Several processes serving one UDP port with SO_REUSEPORT (utcp.workers).

The worker group runs in a subprocess (`python -c` calling `serve_echo` below), since
run_workers forks and a pytest process should not; the test is its client, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import utcp
from tests.aio.util import has_ipv6
from utcp import workers

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="SO_REUSEPORT groups and CBPF as Linux has them")


# ---------------------------------------------------------------------- the server side

def serve_echo(count: int, steer: bool, secure_key: str | None = None) -> None:
    """An echo server in `count` workers on a free port; prints 'ready PORT PIDS' then,
    at SIGTERM, one 'worker I (pid P): served N' line per worker."""
    config = utcp.Config(secret_key=secure_key) if secure_key else utcp.Config()

    async def main(worker: workers.Worker) -> None:
        served = 0

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            served += 1
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
            except ConnectionError:
                writer.transport.abort()

        server = await utcp.start_server(echo, worker.host, worker.port, config=config,
                                         reuse_port=True, backlog=1024)
        workers.reuse_port_sockets(server.sockets, worker.count, steer=steer)
        worker.ready(server.sockets[0].getsockname()[1])
        try:
            await server.serve_forever()
        finally:
            worker.say(f"served {served}")

    def on_ready(port: int, pids: list[int]) -> None:
        print(f"ready {port} {' '.join(map(str, pids))}", flush=True)

    sys.exit(workers.run_workers(count, main, host="127.0.0.1", port=0, on_ready=on_ready))


class Group:
    def __init__(self, count: int, *, steer: bool, secure_key: str | None = None) -> None:
        code = (f"from tests.test_workers import serve_echo; "
                f"serve_echo({count}, {steer}, {secure_key!r})")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.fullmatch(r"ready (\d+) ([\d ]+)\n", line)
        if match is None:
            self.proc.kill()
            raise AssertionError(f"no ready line: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(match[1])
        self.pids = [int(p) for p in match[2].split()]

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def served_counts(out: str) -> dict[int, int]:
    return {int(m[1]): int(m[2]) for m in re.finditer(r"worker (\d+) \(pid \d+\): served (\d+)",
                                                      out)}


async def echo_many(port: int, total: int, tasks: int, config: utcp.Config | None = None,
                    ) -> list[int]:
    """`total` short connections from `tasks` concurrent tasks; each sends bytes of its
    own and checks they come back intact. Returns the clients' local ports."""
    ports: list[int] = []
    queue = list(range(total))

    async def client() -> None:
        while queue:
            n = queue.pop()
            payload = hashlib.sha256(str(n).encode()).digest() * (1 + n % 64)
            reader, writer = await utcp.open_connection("127.0.0.1", port, config=config)
            ports.append(writer.get_extra_info("sockname")[1])
            writer.write(payload)
            writer.write_eof()
            back = await reader.read()
            assert back == payload, f"connection {n}: {len(back)} of {len(payload)} bytes"
            writer.close()
            await writer.wait_closed()

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(tasks))), 240)
    return ports


# ---------------------------------------------------------------------- tests

async def test_create_server_reuse_port_sets_so_reuseport() -> None:
    server = await utcp.start_server(lambda r, w: None, "127.0.0.1", 0, reuse_port=True)
    second = None
    try:
        sock = server.sockets[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        # and a second server joins the group on the same port instead of failing
        port = sock.getsockname()[1]
        second = await utcp.start_server(lambda r, w: None, "127.0.0.1", port,
                                         reuse_port=True)
        assert second.sockets[0].getsockname()[1] == port
    finally:
        server.close()
        if second is not None:
            second.close()
    # every socket of a server on all addresses (0.0.0.0 and ::, each its own port)
    every = await utcp.start_server(lambda r, w: None, None, 0, reuse_port=True)
    try:
        assert every.sockets
        for sock in every.sockets:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        every.close()
    plain = await utcp.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        assert plain.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with pytest.raises(OSError, match="SO_REUSEPORT"):
            workers.reuse_port_sockets(plain.sockets, 2, steer=False)
    finally:
        plain.close()


def _group_of(count: int, steer: bool, host: str = "127.0.0.1",
              ) -> tuple[list[socket.socket], int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    first = socket.socket(family, socket.SOCK_DGRAM)
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.bind((host, 0))
    port = first.getsockname()[1]
    group = [first]
    for _ in range(count - 1):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        group.append(s)
    if steer:
        workers.steer_by_client_port(first, count)
    for s in group:
        s.settimeout(5)
    return group, port


def _landing(group: list[socket.socket], port: int, sender: socket.socket,
             payload: bytes) -> int:
    sender.sendto(payload, (group[0].getsockname()[0], port))
    import select
    readable, _, _ = select.select(group, [], [], 5)
    assert len(readable) == 1, readable
    readable[0].recv(2048)
    return group.index(readable[0])


def test_a_4_tuple_always_lands_on_the_same_socket() -> None:
    group, port = _group_of(4, steer=False)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        landed: dict[int, set[int]] = {}
        for _ in range(5):
            for i, s in enumerate(senders):
                landed.setdefault(i, set()).add(_landing(group, port, s, b"x" * 20))
        assert all(len(v) == 1 for v in landed.values()), landed
        assert len({next(iter(v)) for v in landed.values()}) > 1  # spread, too
    finally:
        for s in group + senders:
            s.close()


@pytest.mark.parametrize("host", [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not has_ipv6(),
                                                 reason="no IPv6 loopback")),
])
def test_steering_follows_the_tcp_header_port_not_the_udp_address(host: str) -> None:
    """The CBPF program picks socket (header source port % N): a connection whose UDP
    address changes (NAT rebinding) still reaches its worker."""
    group, port = _group_of(4, steer=True, host=host)
    senders = [socket.socket(group[0].family, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for header_port in (5000, 5001, 5002, 5003, 40001, 65535):
            segment = header_port.to_bytes(2, "big") + port.to_bytes(2, "big") + bytes(16)
            # the same header port from 8 different UDP source ports: one socket, the
            # one the program names (sockets are numbered in the order they joined)
            assert {_landing(group, port, s, segment) for s in senders} == {header_port % 4}
    finally:
        for s in group + senders:
            s.close()


def test_1000_connections_over_4_workers() -> None:
    group = Group(4, steer=True)
    try:
        ports = asyncio.run(echo_many(group.port, 1000, 8))
        status, out, err = group.stop()
    finally:
        group.kill()
    assert status == 0, err
    counts = served_counts(out)
    assert sorted(counts) == [0, 1, 2, 3], out
    assert sum(counts.values()) == 1000, counts
    assert sum(1 for n in counts.values() if n >= 100) >= 3, counts  # spread over workers
    # steered by the client's port: worker i served exactly the clients with port % 4 == i
    # (worker i's socket joined the group i-th only by luck of scheduling, so compare
    # the multiset of counts)
    by_port = [sum(1 for p in ports if p % 4 == i) for i in range(4)]
    assert sorted(by_port) == sorted(counts.values())
    assert "died" not in err, err


def test_sigterm_stops_every_worker_and_a_dead_one_is_reported() -> None:
    group = Group(2, steer=False)
    try:
        os.kill(group.pids[1], signal.SIGKILL)
        # its socket leaves the port's group when it has died (a zombie holds no files),
        # which a loaded machine may take longer than the 0.5 s slept here before
        deadline = time.monotonic() + 30
        while _alive(group.pids[1]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(group.pids[1])
        asyncio.run(echo_many(group.port, 20, 2))  # the survivor serves everyone
        status, out, err = group.stop()
    finally:
        group.kill()
    assert re.search(rf"worker 1 \(pid {group.pids[1]}\) died: killed by SIGKILL; "
                     r"1 of 2 still serving", err), err
    assert status == 1
    assert served_counts(out) == {0: 20}
    for pid in group.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)



# ---------------------------------------------------------------------- NAT rebinding

class _Nat:
    """A NAT on loopback for one client: forwards its datagrams to the server from an
    outside port of its own, and `rebind()` moves to a new outside port (as a NAT whose
    mapping expired), forgetting the old one."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.client: Any = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        nat = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                nat.client = addr
                if nat.back is not None:
                    nat.back.sendto(data)

        self.front, _ = await loop.create_datagram_endpoint(
            Front, local_addr=("127.0.0.1", 0))
        await self.rebind()
        return int(self.front.get_extra_info("sockname")[1])

    async def rebind(self) -> None:
        loop = asyncio.get_running_loop()
        nat = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if nat.front is not None and nat.client is not None:
                    nat.front.sendto(data, nat.client)

        old = self.back
        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.server)
        if old is not None:
            old.close()

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()


async def _rebinding_echo(server_port: int, config: utcp.Config, n: int) -> list[bool]:
    """n secure connections, each through a NAT that rebinds in the middle of it."""

    async def one(i: int) -> bool:
        nat = _Nat(server_port)
        port = await nat.start()
        try:
            reader, writer = await asyncio.wait_for(
                utcp.open_connection("127.0.0.1", port, config=config), 30)
            first, second = os.urandom(20000), os.urandom(20000)
            writer.write(first)
            assert await asyncio.wait_for(reader.readexactly(len(first)), 30) == first
            await nat.rebind()  # the server now sees the connection from a new 4-tuple
            writer.write(second)
            writer.write_eof()
            try:
                back = await asyncio.wait_for(reader.read(), 8)
            except (TimeoutError, ConnectionError):
                writer.transport.abort()
                return False
            writer.close()
            return back == second
        finally:
            nat.close()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_secure_nat_rebinding_stays_on_its_worker_when_steered() -> None:
    from utcp import crypto

    private, public = crypto.generate_keypair()
    client = utcp.Config(server_key=public)
    group = Group(4, steer=True, secure_key=private)
    try:
        results = asyncio.run(_rebinding_echo(group.port, client, 12))
        status, out, err = group.stop()
    finally:
        group.kill()
    assert results == [True] * 12
    assert status == 0, err
    assert sum(served_counts(out).values()) == 12


def test_secure_nat_rebinding_may_reach_another_worker_without_steering() -> None:
    """The limit steering removes: by the kernel's 4-tuple hash, a rebound connection
    lands on a random worker, which knows it not; 3 of 4 times with 4 workers."""
    from utcp import crypto

    private, public = crypto.generate_keypair()
    client = utcp.Config(server_key=public)
    group = Group(4, steer=False, secure_key=private)
    try:
        results = asyncio.run(_rebinding_echo(group.port, client, 12))
    finally:
        group.kill()
    assert False in results  # all 12 staying on their worker: odds of 1 in 4**12


def test_workers_end_when_their_parent_is_killed() -> None:
    """SIGKILL forwards nothing: the workers must not serve on as orphans."""
    group = Group(2, steer=False)
    try:
        group.proc.kill()
        group.proc.wait()
        deadline = time.monotonic() + 30
        alive = list(group.pids)
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _alive(pid)]
            time.sleep(0.05)
        assert alive == []
    finally:
        group.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # an orphan's zombie is reaped by init: until then it is dead, not serving
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"
    return False
