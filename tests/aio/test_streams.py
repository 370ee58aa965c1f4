"""asyncio's StreamReader / StreamWriter over utcp, on real loopback UDP sockets.

`utcp.open_connection` / `utcp.start_server` in place of asyncio's: echo, large
transfers both ways at once, many connections, half-close, flow control with a paused
reader, TLS, IPv6, and simultaneous open from fixed ports.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import utcp
from tests.aio.util import (
    FAST,
    HOST,
    TIMEOUT,
    Relay,
    StateLog,
    close_writer,
    conn_name,
    echo_server,
    free_udp_port,
    payload,
    port_of,
    serve,
    sha,
    transport_of,
    wait_until,
)
from utcp import State, wire


async def test_runs_on_the_loop_named_in_its_id(request: pytest.FixtureRequest) -> None:
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert request.node.name.endswith("[uvloop]" if on_uvloop else "[asyncio]")


async def test_echo() -> None:
    async with asyncio.timeout(TIMEOUT), echo_server() as server:
        reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
        assert isinstance(reader, asyncio.StreamReader)
        assert isinstance(writer, asyncio.StreamWriter)
        for message in (b"hello", b"x" * 5000, payload(200_000)):
            writer.write(message)
            await writer.drain()
            assert await reader.readexactly(len(message)) == message
        writer.writelines([b"one ", b"two ", b"three"])
        assert await reader.readexactly(13) == b"one two three"
        writer.write_eof()
        assert await reader.read() == b""  # the server closes after our EOF
        await close_writer(writer)


async def test_echo_over_ipv6() -> None:
    async with asyncio.timeout(TIMEOUT), echo_server("::1") as server:
        assert server.sockets[0].family == socket.AF_INET6
        reader, writer = await utcp.open_connection("::1", port_of(server), config=FAST)
        assert writer.get_extra_info("peername")[:2] == ("::1", port_of(server))
        data = payload(300_000, 7)
        writer.write(data)
        writer.write_eof()
        assert await reader.read() == data
        await close_writer(writer)


async def _send_all(writer: asyncio.StreamWriter, data: bytes, chunk: int = 256 << 10,
                    eof: bool = True) -> None:
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        writer.write(view[i:i + chunk])
        await writer.drain()
    if eof:
        writer.write_eof()


async def _receive_all(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    total = 0
    while chunk := await reader.read(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    return total, digest.digest()


async def test_16_mib_each_way_at_once() -> None:
    n = 16 << 20
    up, down = payload(n, 1), payload(n, 2)
    server_got: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sending = asyncio.create_task(_send_all(writer, down))
            got = await _receive_all(reader)
            await sending
            server_got.set_result(got)
        except Exception as exc:
            server_got.set_exception(exc)
        await close_writer(writer)

    async with asyncio.timeout(120):
        async with serve(handle) as server:
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            sending = asyncio.create_task(_send_all(writer, up))
            got = await _receive_all(reader)
            await sending
            assert got == (n, sha(down))
            assert await server_got == (n, sha(up))
            stats = writer.get_extra_info("stats")
            assert stats.bytes_sent == n
            assert stats.bytes_acked == n
            assert stats.bytes_received == n
            await close_writer(writer)


async def test_200_concurrent_connections() -> None:
    n = 200
    active: set[object] = set()
    everyone_in = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # no handler answers before all n connections are established at once
        active.add(writer.get_extra_info("peername"))
        if len(active) == n:
            everyone_in.set()
        await everyone_in.wait()
        writer.write(await reader.read())
        await close_writer(writer)

    async def client(i: int) -> bool:
        reader, writer = await utcp.open_connection(HOST, port, config=FAST)
        message = payload(500 + i, seed=i)
        writer.write(message)
        writer.write_eof()
        echoed = await reader.read()
        await close_writer(writer)
        return echoed == message

    async with asyncio.timeout(60):
        async with serve(handle) as server:
            port = port_of(server)
            results = await asyncio.gather(*(client(i) for i in range(n)))
    assert all(results)
    assert len(active) == n


async def test_half_close_client_first() -> None:
    request, response = payload(100_000, 3), payload(300_000, 4)
    server_saw: asyncio.Future[tuple[bytes, State]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read()  # to EOF: the client has shut its sending side
        server_saw.set_result((got, writer.get_extra_info("state")))
        writer.write(response)  # CLOSE_WAIT may still send
        await writer.drain()
        await close_writer(writer)

    async with asyncio.timeout(TIMEOUT):
        async with serve(handle) as server:
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            assert writer.can_write_eof()
            writer.write(request)
            writer.write_eof()
            assert writer.get_extra_info("state") is State.FIN_WAIT_1
            with pytest.raises(RuntimeError):
                writer.write(b"after eof")
            got, server_state = await server_saw
            assert got == request
            assert server_state == State.CLOSE_WAIT
            assert await reader.read() == response  # we keep reading after our EOF
            assert reader.at_eof()
            assert writer.get_extra_info("state") in (State.TIME_WAIT, State.CLOSED)
            await close_writer(writer)


async def test_half_close_server_first() -> None:
    greeting, upload = payload(50_000, 5), payload(400_000, 6)
    server_saw: asyncio.Future[tuple[bytes, State]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        writer.write_eof()  # the server shuts its side first and keeps reading
        got = await reader.read()
        server_saw.set_result((got, writer.get_extra_info("state")))
        await close_writer(writer)

    async with asyncio.timeout(TIMEOUT):
        async with serve(handle) as server:
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            assert await reader.read() == greeting
            assert reader.at_eof()
            assert writer.get_extra_info("state") == State.CLOSE_WAIT
            writer.write(upload)  # the peer saw EOF and can still send back
            await writer.drain()
            writer.close()
            got, server_state = await server_saw
            assert got == upload
            assert server_state in (State.TIME_WAIT, State.CLOSED)  # it saw our FIN
            await close_writer(writer)


async def test_pause_reading_closes_the_window_and_stalls_the_writer() -> None:
    """A reader paused while 16 MiB come: zero window, a writer stuck in drain(), no loss."""
    n = 16 << 20
    data = payload(n, 8)
    paused = asyncio.Event()
    resume = asyncio.Event()
    server_side: list[utcp.UtcpTransport] = []
    server_got: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = transport_of(writer)
        transport.pause_reading()
        server_side.append(transport)
        paused.set()
        await resume.wait()
        server_got.set_result(await _receive_all(reader))
        await close_writer(writer)

    progress = 0

    async def write_all(writer: asyncio.StreamWriter) -> None:
        nonlocal progress
        for i in range(0, n, 64 << 10):
            writer.write(data[i:i + (64 << 10)])
            await writer.drain()
            progress = i + (64 << 10)
        writer.write_eof()

    async with asyncio.timeout(60):
        async with serve(handle) as server:
            reader, writer = await utcp.open_connection(HOST, port_of(server), config=FAST)
            await paused.wait()
            (paused_transport,) = server_side
            assert not paused_transport.is_reading()
            writing = asyncio.create_task(write_all(writer))

            # the receive buffer fills, the window closes, the writer's drain() blocks
            await wait_until(lambda: writer.get_extra_info("stats").snd_wnd == 0,
                             what="a zero window at the writer")
            await wait_until(lambda: paused_transport.get_extra_info("stats").rcv_wnd == 0,
                             what="a zero window at the reader")
            stalled_at = progress
            await asyncio.sleep(0.5)
            assert progress == stalled_at < n
            assert not writing.done()
            # paused at the high-water mark, and not resumed: more than `low` is left
            low, _high = writer.transport.get_write_buffer_limits()
            assert writer.transport.get_write_buffer_size() > low
            assert paused_transport.get_extra_info("stats").rcv_wnd == 0
            assert writer.get_extra_info("stats").bytes_acked < n

            # reopening sends a window update at once, not at the writer's next probe
            sent_before = paused_transport.get_extra_info("stats").segments_sent
            paused_transport.resume_reading()
            resume.set()
            for _ in range(100):
                await asyncio.sleep(0)
                if paused_transport.get_extra_info("stats").segments_sent > sent_before:
                    break
            assert paused_transport.get_extra_info("stats").segments_sent > sent_before

            await writing
            assert await server_got == (n, sha(data))
            assert await reader.read() == b""
            await close_writer(writer)


def _self_signed(directory: Path) -> tuple[Path, Path, str]:
    """A certificate for localhost and 127.0.0.1, made with `cryptography`, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, pem.decode()


async def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert_file, key_file, cert_pem = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cadata=cert_pem)
    assert client_ctx.verify_mode == ssl.CERT_REQUIRED and client_ctx.check_hostname
    data = payload(1 << 20, 9)

    async with asyncio.timeout(TIMEOUT), echo_server(ssl=server_ctx) as server:
        reader, writer = await utcp.open_connection(
            HOST, port_of(server), ssl=client_ctx, server_hostname="localhost", config=FAST)
        assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.write(b"tls hello\n")
        assert await reader.readline() == b"tls hello\n"
        assert not writer.can_write_eof()  # as over asyncio's own TLS
        sending = asyncio.create_task(_send_all(writer, data, eof=False))
        got = await reader.readexactly(len(data))
        await sending
        assert sha(got) == sha(data)
        await close_writer(writer)

        # a client that does not trust the certificate fails the handshake
        with pytest.raises(ssl.SSLCertVerificationError):
            await utcp.open_connection(HOST, port_of(server), ssl=ssl.create_default_context(),
                                       server_hostname="localhost", config=FAST)
        # ... and so does a wrong name
        with pytest.raises(ssl.SSLCertVerificationError):
            await utcp.open_connection(HOST, port_of(server), ssl=client_ctx,
                                       server_hostname="example.org", config=FAST)


async def _exchange(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """One connection: what each side writes, the other reads."""
    (ra, wa), (rb, wb) = a, b
    wa.write(b"from a")
    wb.write(b"from b")
    assert await rb.readexactly(6) == b"from a"
    assert await ra.readexactly(6) == b"from b"


async def test_simultaneous_open_through_a_path_with_latency(state_log: StateLog) -> None:
    """The two SYNs cross on the wire: both sides go SYN_SENT -> SYN_RCVD -> ESTABLISHED.

    The path is a relay holding the first datagram of each peer until both have sent
    one, as any distance between the peers does (docs/protocol.md §4.3, RFC 9293 figure 8).
    """
    pa, pb = free_udp_port(), free_udp_port()
    relay = Relay(pa, pb, hold_first=True)
    await relay.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            a, b = await asyncio.gather(
                utcp.open_connection(HOST, relay.port_for_a, local_addr=(HOST, pa),
                                     config=FAST),
                utcp.open_connection(HOST, relay.port_for_b, local_addr=(HOST, pb),
                                     config=FAST))
            await _exchange(a, b)
            for _, writer in (a, b):
                assert writer.get_extra_info("sockname")[1] in (pa, pb)
                assert state_log.path(conn_name(writer.transport)) == [
                    "CLOSED", "SYN_SENT", "SYN_RCVD", "ESTABLISHED"]
            # each side sent one bare SYN, then answered the other's with SYN+ACK
            for side in ("a", "b"):
                syns = [s.flag_names() for s in relay.seen[side] if s.flags & wire.SYN]
                assert syns[0] == "SYN" and set(syns[1:]) == {"ACK|SYN"}
            await asyncio.gather(close_writer(a[1]), close_writer(b[1]))
    finally:
        relay.close()


async def test_simultaneous_open_directly_over_loopback(state_log: StateLog) -> None:
    """Aimed straight at each other from fixed ports: one connection, no listener.

    Over loopback the first SYN finds the other port not bound yet (ICMP port
    unreachable, which a peer-to-peer connect rides out); the other peer's SYN then
    meets a side in SYN_SENT, which passes SYN_RCVD.
    """
    pa, pb = free_udp_port(), free_udp_port()
    async with asyncio.timeout(TIMEOUT):
        a, b = await asyncio.gather(
            utcp.open_connection(HOST, pb, local_addr=(HOST, pa), config=FAST),
            utcp.open_connection(HOST, pa, local_addr=(HOST, pb), config=FAST))
        await _exchange(a, b)
        assert a[1].get_extra_info("sockname")[1] == pa
        assert b[1].get_extra_info("sockname")[1] == pb
        paths = [state_log.path(conn_name(w.transport)) for _, w in (a, b)]
        for path in paths:
            assert path[:2] == ["CLOSED", "SYN_SENT"] and path[-1] == "ESTABLISHED"
            assert "LISTEN" not in path
        assert any("SYN_RCVD" in path for path in paths)
        await asyncio.gather(close_writer(a[1]), close_writer(b[1]))
