"""The UDP port sends by one path (issue #13): plain, connected and GSO sends alike go
through one socket call site, with the one retry after an ICMP error that the send
reported on behalf of an earlier datagram (IP_RECVERR)."""

from __future__ import annotations

import ast
import asyncio
import errno
import socket
from pathlib import Path
from typing import Any

import pytest

import utcp
from tests.aio.util import FAST, HOST, TIMEOUT, echo_server, port_of
from utcp.aio import batch
from utcp.aio import port as port_module

# segments of the base size, as on a path that is not loopback: several of them make
# a GSO batch (on loopback a connection starts at the route's 64 KiB, one a datagram)
SMALL = FAST.replace(pmtu_probing=False)

SEND_CALLS = {"send", "sendto", "sendmsg"}


def test_one_socket_call_site_for_datagrams() -> None:
    # the source, also when the module imported is the compiled one beside it
    tree = ast.parse(Path(port_module.__file__).with_name("port.py").read_text())
    (udp_port,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "UdpPort"]
    senders = set()
    for method in udp_port.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        for node in ast.walk(method):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SEND_CALLS):
                senders.add(method.name)
    assert senders == {"_sock_send"}


def _refused_once(real: Any, target: socket.socket, calls: list[bytes]) -> Any:
    """A socket method whose first call on `target` reports an ICMP error of some
    earlier datagram (ECONNREFUSED, sending nothing); later ones go through."""
    def send(sock: socket.socket, data: Any, *args: Any) -> Any:
        if sock is target:
            calls.append(bytes(data) if isinstance(data, bytes) else b"".join(data))
            if len(calls) == 1:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return real(sock, data, *args)
    return send


@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
async def test_a_send_reporting_an_earlier_icmp_error_is_retried(
        gso: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        have_gso = batch.probe_gso(probe)
    finally:
        probe.close()
    if gso and not have_gso:
        pytest.skip("this kernel refuses UDP_SEGMENT on a loopback socket")
    monkeypatch.setattr(batch, "GSO_ALLOWED", gso)
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=SMALL)
        port = writer.transport._port  # type: ignore[attr-defined]
        if not port._recverr:  # type: ignore[attr-defined]
            pytest.skip("no IP_RECVERR here: a send never reports another's error")
        name = "sendmsg" if gso else "send"  # the client's socket is connected
        calls: list[bytes] = []
        monkeypatch.setattr(socket.socket, name,
                            _refused_once(getattr(socket.socket, name), port.sock, calls))
        # several full segments at once: a GSO batch when GSO is on
        data = bytes(range(256)) * 64
        writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(len(data)) == data
        monkeypatch.undo()
        assert len(calls) >= 2
        assert calls[0] == calls[1]  # the same datagram(s), sent again
        assert port.send_errors["ECONNREFUSED"] == 1
        if gso:
            assert port.gso_sends >= 1
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()


async def test_a_gso_send_gathers_the_datagrams_without_joining_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel gathers a GSO batch from one buffer per datagram (sendmsg's iovec): the
    port does not copy the batch into one buffer first."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        have_gso = batch.probe_gso(probe)
    finally:
        probe.close()
    if not have_gso:
        pytest.skip("this kernel refuses UDP_SEGMENT on a loopback socket")
    monkeypatch.setattr(batch, "GSO_ALLOWED", True)
    async with echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=SMALL)
        port = writer.transport._port  # type: ignore[attr-defined]
        batches: list[list[int]] = []
        real = socket.socket.sendmsg

        def sendmsg(sock: socket.socket, buffers: Any, *args: Any) -> Any:
            if sock is port.sock:
                batches.append([len(b) for b in buffers])
            return real(sock, buffers, *args)

        monkeypatch.setattr(socket.socket, "sendmsg", sendmsg)
        data = bytes(range(256)) * 64  # several full segments at once
        writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(len(data)) == data
        monkeypatch.undo()
        glued = [sizes for sizes in batches if len(sizes) > 1]
        assert glued, batches  # a GSO batch went out as several buffers
        for sizes in glued:  # each buffer one datagram: all of one size, the last maybe less
            assert all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0]
        writer.close()
        async with asyncio.timeout(TIMEOUT):
            await writer.wait_closed()
