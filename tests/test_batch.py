"""UDP GSO/GRO batching: the run-splitting rule, and transfers with and without offloads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from typing import Any

import pytest

import utcp
from utcp.aio import batch

A = ("127.0.0.1", 1000)
B = ("127.0.0.1", 2000)


def runs(sizes_addrs: list[tuple[int, tuple[str, int]]]) -> list[tuple[int, int, int]]:
    return list(batch.gso_batches([(bytes(n), a) for n, a in sizes_addrs]))


def test_equal_sizes_to_one_peer_make_one_run() -> None:
    assert runs([(1420, A)] * 5) == [(0, 5, 1420)]


def test_a_shorter_datagram_closes_a_run_and_a_longer_one_starts_a_new_one() -> None:
    assert runs([(1420, A), (1420, A), (300, A), (1420, A)]) == [(0, 3, 1420), (3, 4, 0)]
    assert runs([(20, A), (1420, A), (1420, A)]) == [(0, 1, 0), (1, 3, 1420)]


def test_runs_break_at_a_new_address_and_at_the_kernel_limits() -> None:
    assert runs([(100, A), (100, B), (100, B)]) == [(0, 1, 0), (1, 3, 100)]
    many = runs([(100, A)] * 130)
    assert [e - b for b, e, _ in many] == [64, 64, 2]
    big = runs([(20000, A)] * 5)
    assert [e - b for b, e, _ in big] == [3, 2]  # 3 x 20000 fits under 65000, 4 does not


def test_gso_splits_and_gro_glues_on_a_real_socket() -> None:
    """What the port relies on: one sendmsg with batch.gso_control(size) arrives as
    datagrams of that size (the last shorter), and a GRO socket may return them glued,
    with gro_segment_size naming the size to cut them at."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        if not (batch.probe_gso(tx) and batch.enable_gro(rx)):
            pytest.skip("this kernel offers no UDP GSO/GRO")
        rx.settimeout(5)
        payload = bytes(range(250)) * 10                     # 2500 bytes
        tx.sendmsg([payload], batch.gso_control(1000), 0, rx.getsockname())
        pieces: list[bytes] = []
        buf = bytearray(65535)
        while sum(map(len, pieces)) < len(payload):
            n, anc, _flags, _addr = rx.recvmsg_into([buf], batch.GRO_CMSG_SPACE)
            size = batch.gro_segment_size(anc) or n
            pieces += [bytes(buf[i:min(i + size, n)]) for i in range(0, n, size)]
        assert [len(p) for p in pieces] == [1000, 1000, 500]
        assert b"".join(pieces) == payload
    finally:
        rx.close()
        tx.close()


async def _transfer(nbytes: int) -> tuple[bytes, bytes, int]:
    received = hashlib.sha256()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 20):
            received.update(data)
        writer.close()

    # segments of the base size, as on a path that is not loopback, for GSO to glue (on
    # loopback a connection starts at the route's 64 KiB, one segment a datagram)
    small = utcp.Config(pmtu_probing=False)
    server = await utcp.start_server(sink, "127.0.0.1", 0, config=small)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await utcp.open_connection("127.0.0.1", port, config=small)
    payload = os.urandom(nbytes)
    writer.write(payload)
    writer.write_eof()
    await reader.read()
    sends = _port_of(writer).gso_sends
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return hashlib.sha256(payload).digest(), received.digest(), sends


def _port_of(writer: asyncio.StreamWriter) -> Any:
    return writer.transport._port  # type: ignore[attr-defined]


@pytest.mark.parametrize("offloads", [True, False], ids=["gso+gro", "plain"])
async def test_transfer_with_and_without_offloads(offloads: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if offloads and not _kernel_has_gso():
        pytest.skip("this kernel refuses UDP_SEGMENT on a loopback socket")
    monkeypatch.setattr(batch, "GSO_ALLOWED", offloads)
    monkeypatch.setattr(batch, "GRO_ALLOWED", offloads)
    sent, got, gso_sends = await asyncio.wait_for(_transfer(4 << 20), 60)
    assert sent == got
    if offloads:
        assert gso_sends > 0
    else:
        assert gso_sends == 0


def _kernel_has_gso() -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return batch.probe_gso(sock)
    finally:
        sock.close()


async def test_gso_failure_falls_back_to_plain_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A path that cannot segment (EIO from sendmsg) switches the port to plain sends."""
    if not _kernel_has_gso():
        pytest.skip("this kernel refuses UDP_SEGMENT on a loopback socket: no GSO to fail")
    real_sendmsg = socket.socket.sendmsg
    failures = []

    def failing_sendmsg(self: socket.socket, buffers: object, ancdata: object = (),
                        *args: object) -> int:
        if ancdata:
            failures.append(1)
            raise OSError(5, "Input/output error")  # EIO: what a NIC without GSO returns
        return real_sendmsg(self, buffers, ancdata, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "sendmsg", failing_sendmsg)
    sent, got, gso_sends = await asyncio.wait_for(_transfer(2 << 20), 60)
    assert sent == got
    assert gso_sends == 0
    assert failures, "GSO was never attempted"
