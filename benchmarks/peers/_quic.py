"""QUIC over aioquic or qh3 (a fork with the same asyncio API), one stream per connection.

The server loads a self-signed certificate made at start-up (`make_certificate`); the
client does not verify it. Connections are opened by hand rather than through the
packages' `connect()` context manager, so an idle connection can be dropped at once.
`close()` sends CONNECTION_CLOSE and does not wait for the closing period (3 PTO,
RFC 9000 §10.2), as TCP's close does not wait for TIME_WAIT: the socket is closed in
the background when it ends.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from benchmarks.peers import UDP_BUFFER, set_socket_buffers

ALPN = ["utcp-bench"]
IDLE_TIMEOUT = 600.0   # s: a benchmark connection must not expire while it waits
LARGEST_UDP_PAYLOAD = 65507  # IPv4: 65535 - 20 (IP) - 8 (UDP)


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1/localhost: (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class Quic:
    """The parts of one QUIC package (aioquic or qh3) the benchmark uses."""

    def __init__(self, package: str, max_datagram: int, probing: bool,
                 why_max: str = "") -> None:
        self.package = package
        self.max_datagram = max_datagram   # the "max" profile's max_datagram_size
        self.probing = probing             # the package has PMTU probing (qh3)
        self.why_max = why_max

    def missing(self) -> str | None:
        try:
            importlib.import_module(f"{self.package}.asyncio")
        except ImportError as exc:
            return f"{exc.name or self.package} not installed (pip install -e '.[bench]')"
        return None

    def settings(self, profile: str) -> str:
        common = (f"idle_timeout={IDLE_TIMEOUT:.0f} s, UDP socket buffers"
                  f" {UDP_BUFFER >> 20} MiB as utcp's, other settings the package's defaults")
        if profile == "1400":
            extra = ", probe_datagram_size=False" if self.probing else ""
            return f"max_datagram_size=1400{extra}, {common}"
        if self.probing:
            return (f"max_datagram_size={self.max_datagram}, probe_datagram_size=True"
                    f" (its own path-MTU probing), {common}")
        return (f"max_datagram_size={self.max_datagram} (no path-MTU probing: the largest"
                f" size that works, set by hand{self.why_max}), {common}")

    def configuration(self, profile: str, *, is_client: bool, ctx: dict[str, Any]) -> Any:
        mod = importlib.import_module(f"{self.package}.quic.configuration")
        kwargs: dict[str, Any] = {
            "is_client": is_client, "alpn_protocols": ALPN, "idle_timeout": IDLE_TIMEOUT,
            "max_datagram_size": 1400 if profile == "1400" else self.max_datagram,
        }
        if self.probing:
            kwargs["probe_datagram_size"] = profile != "1400"
        cfg = mod.QuicConfiguration(**kwargs)
        if is_client:
            cfg.verify_mode = ssl.CERT_NONE
        else:
            cfg.load_cert_chain(ctx["cert"], ctx["key"])
        return cfg

    async def serve(self, handler: Any, profile: str, ctx: dict[str, Any]
                    ) -> tuple[int, Callable[[], None]]:
        aio = importlib.import_module(f"{self.package}.asyncio")
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # qh3's stream writers have no protocol, so drain() cannot be called on them
            # (aioquic's never blocks anyway: neither package has write back-pressure)
            task = loop.create_task(handler(reader, writer, False))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server = await aio.serve("127.0.0.1", 0,
                                 configuration=self.configuration(profile, is_client=False,
                                                                  ctx=ctx),
                                 stream_handler=on_stream)
        set_socket_buffers(server._transport.get_extra_info("socket"))
        return server._transport.get_extra_info("sockname")[1], server.close

    async def connect(self, port: int, profile: str, ctx: dict[str, Any]) -> QuicConn:
        aio = importlib.import_module(f"{self.package}.asyncio")
        conn_mod = importlib.import_module(f"{self.package}.quic.connection")
        loop = asyncio.get_running_loop()
        quic = conn_mod.QuicConnection(
            configuration=self.configuration(profile, is_client=True, ctx=ctx))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            set_socket_buffers(sock)
            factory = lambda: aio.QuicConnectionProtocol(quic)  # noqa: E731
            try:   # qh3 has its own GSO/GRO datagram transport, which its connect() uses
                opt = importlib.import_module(f"{self.package}.asyncio._transport")
                transport, protocol = await opt.create_optimized_datagram_transport(
                    loop, factory, sock=sock)
            except ImportError:
                transport, protocol = await loop.create_datagram_endpoint(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        conn = QuicConn(transport, protocol)
        try:
            protocol.connect(("127.0.0.1", port))
            await protocol.wait_connected()
            conn.reader, conn.writer = await protocol.create_stream()
        except BaseException:
            conn.abort()
            raise
        return conn


class QuicConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __init__(self, transport: Any, protocol: Any) -> None:
        self.transport, self.protocol = transport, protocol
        self.largest = 0
        self._wrap_sends()

    def _wrap_sends(self) -> None:
        """Record the largest datagram sent (a few ns per datagram)."""
        proto = self.protocol
        proto._transport = _Traced(proto._transport, self)
        many = getattr(proto, "_sendto_many", None)
        if many is not None:
            def many_traced(datagrams: list[bytes], addr: Any = None) -> None:
                self.largest = max(self.largest, max(map(len, datagrams)))
                many(datagrams, addr)
            proto._sendto_many = many_traced

    def write(self, data: bytes | memoryview) -> None:
        self.writer.write(bytes(data))

    async def drain(self) -> None:
        await asyncio.sleep(0)   # no back-pressure to wait for: let the loop transmit

    async def close(self) -> None:
        self.writer.write_eof()
        self.protocol.close()   # CONNECTION_CLOSE goes out now
        task = asyncio.get_running_loop().create_task(self._close_later())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _close_later(self) -> None:
        try:
            await asyncio.wait_for(self.protocol.wait_closed(), 10)
        except TimeoutError:
            pass
        finally:
            self.transport.close()

    def abort(self) -> None:
        timer = getattr(self.protocol, "_timer", None)
        if timer is not None:
            timer.cancel()
        self.transport.close()

    def wire_note(self) -> str | None:
        return f"largest datagram sent {self.largest} B" if self.largest else None


class _Traced:
    """A datagram transport that notes the size of what is sent through it."""

    def __init__(self, inner: Any, conn: QuicConn) -> None:
        self._inner, self._conn = inner, conn

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if len(data) > self._conn.largest:
            self._conn.largest = len(data)
        self._inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_closing: set[asyncio.Task[None]] = set()
