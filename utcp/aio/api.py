"""The four public calls of docs/protocol.md §1, shaped like asyncio's, and the `Server` object."""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import socket
import ssl as ssl_module
import weakref
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from utcp.aio import shutdown
from utcp.aio.port import UdpPort, set_socket_buffers
from utcp.aio.transport import UtcpTransport
from utcp.config import Config
from utcp.connection import Connection
from utcp.crypto import HandshakeSecrets
from utcp.endpoint import Endpoint
from utcp.errors import PeerHoldsPort

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
ClientConnectedCb = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


# ---------------------------------------------------------------------- argument checks

_DEFAULT_CONFIG = Config()  # frozen: one instance serves every call without a config
# How many times a connect leaves a port the peer holds in TIME_WAIT for another (_attempt)
PORT_MOVES = 3


def _check_config(config: object) -> Config:
    if config is None:
        return _DEFAULT_CONFIG
    if not isinstance(config, Config):
        raise TypeError(f"config must be a utcp.Config, not {type(config).__name__}")
    return config


def _check_port(port: object, *, allow_none: bool = False) -> int | None:
    if port is None and allow_none:
        return None
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    elif isinstance(port, str):
        # A service name, looked up as TCP's: utcp carries TCP, and /etc/services often
        # lists a service ("http") for tcp only, so a SOCK_DGRAM lookup would miss it.
        try:
            port = socket.getservbyname(port, "tcp")
        except OSError:
            raise socket.gaierror(socket.EAI_SERVICE,
                                  f"Servname not supported for ai_socktype: {port!r}"
                                  ) from None
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise OverflowError(f"port must be 0-65535, not {port}")
    return port


def _ssl_context(ssl: Any, *, server_side: bool) -> ssl_module.SSLContext | None:
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        if server_side:
            raise ValueError("a server needs an ssl.SSLContext with a certificate, not True")
        return ssl_module.create_default_context()
    if not isinstance(ssl, ssl_module.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext, True or None, not {ssl!r}")
    return ssl


def _check_shutdown_timeout(context: ssl_module.SSLContext | None,
                            timeout: float | None) -> None:
    """asyncio's checks, made before anything is sent: SSLProtocol would make the second
    only once the connection exists, and leave it open."""
    if timeout is None:
        return
    if context is None:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if timeout <= 0:
        raise ValueError(f"ssl_shutdown_timeout should be a positive number, got {timeout}")


async def _wrap_tls(loop: asyncio.AbstractEventLoop, transport: UtcpTransport,
                    app_protocol: asyncio.BaseProtocol, context: ssl_module.SSLContext, *,
                    server_side: bool, server_hostname: str | None,
                    handshake_timeout: float | None,
                    shutdown_timeout: float | None = None) -> asyncio.Transport:
    """TLS over utcp with asyncio's own (pure-Python) SSL protocol: same code on uvloop."""
    waiter: asyncio.Future[None] = loop.create_future()
    tls = sslproto.SSLProtocol(loop, app_protocol, context, waiter, server_side,
                               server_hostname,
                               ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
                               ssl_shutdown_timeout=shutdown_timeout)
    transport.attach_protocol(tls)
    try:
        await waiter
    except BaseException:
        transport.abort()
        raise
    return _ssl_app_transport(tls)


async def _start_tls(transport: UtcpTransport, protocol: asyncio.BaseProtocol,
                     sslcontext: ssl_module.SSLContext, *, server_side: bool,
                     server_hostname: str | None, ssl_handshake_timeout: float | None,
                     ) -> asyncio.Transport:
    """`loop.start_tls` on any loop: uvloop's accepts only its own transports
    (TypeError), so this is asyncio's (base_events.BaseEventLoop.start_tls) run here."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = sslproto.SSLProtocol(loop, protocol, sslcontext, waiter,
                               server_side, server_hostname,
                               ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
                               call_connection_made=False)
    # paused until the TLS protocol has seen connection_made, as in asyncio
    transport.pause_reading()
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return _ssl_app_transport(tls)


# ---------------------------------------------------------------------- asyncio internals
# asyncio offers no public way to do these; each read of its private names is here,
# once, and does what asyncio's own code does with them (checked on CPython 3.11-3.13).

def _ssl_app_transport(tls: sslproto.SSLProtocol) -> asyncio.Transport:
    """The transport SSLProtocol hands its application protocol: no public accessor,
    so read as `loop.start_tls` reads it (base_events.py, `ssl_protocol._app_transport`)."""
    transport: asyncio.Transport = tls._app_transport
    return transport


def _stream_protocol_is_server(protocol: asyncio.StreamReaderProtocol) -> bool:
    """Whether a StreamReaderProtocol serves `start_server` (it has a connected
    callback) or a client: what asyncio.StreamWriter.start_tls takes for server_side."""
    return protocol._client_connected_cb is not None  # type: ignore[attr-defined]


def _stream_protocol_replace_writer(protocol: asyncio.StreamReaderProtocol,
                                    writer: asyncio.StreamWriter) -> None:
    """Point the protocol at the writer whose transport is now TLS, as
    asyncio.StreamWriter.start_tls does (streams.py, `protocol._replace_writer`)."""
    protocol._replace_writer(writer)  # type: ignore[attr-defined]


def _stream_writer_protocol(writer: asyncio.StreamWriter) -> asyncio.StreamReaderProtocol:
    """The protocol a StreamWriter was made with; kept only in its `_protocol`."""
    protocol: asyncio.StreamReaderProtocol = writer._protocol  # type: ignore[attr-defined]
    return protocol


def _stream_writer_set_transport(writer: asyncio.StreamWriter,
                                 transport: asyncio.Transport) -> None:
    """A StreamWriter's transport, replaced as asyncio.StreamWriter.start_tls does: its
    `transport` property reads `_transport` and has no setter."""
    writer._transport = transport  # type: ignore[attr-defined]


class _StreamWriter(asyncio.StreamWriter):
    """asyncio's StreamWriter, whose start_tls works over utcp on every loop."""

    async def start_tls(self, sslcontext: ssl_module.SSLContext, *,
                        server_hostname: str | None = None,
                        ssl_handshake_timeout: float | None = None) -> None:
        transport = self.transport
        if not isinstance(transport, UtcpTransport):  # already TLS: let asyncio say no
            await super().start_tls(sslcontext, server_hostname=server_hostname,
                                    ssl_handshake_timeout=ssl_handshake_timeout)
            return
        # What asyncio.StreamWriter.start_tls does, with _start_tls for loop.start_tls.
        protocol = _stream_writer_protocol(self)
        server_side = _stream_protocol_is_server(protocol)
        await self.drain()
        tls_transport = await _start_tls(
            transport, protocol, sslcontext, server_side=server_side,
            server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout)
        _stream_writer_set_transport(self, tls_transport)
        _stream_protocol_replace_writer(protocol, self)


# ---------------------------------------------------------------------- client

async def create_connection(
        protocol_factory: ProtocolFactory, host: str | None = None,
        port: int | str | None = None, *,
        config: Config | None = None, ssl: Any = None, family: int = 0, proto: int = 0,
        flags: int = 0, sock: Any = None, local_addr: tuple[str, int] | None = None,
        server_hostname: str | None = None, ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None, happy_eyeballs_delay: float | None = None,
        interleave: int | None = None, all_errors: bool = False,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Connect over utcp; the same signature and errors as `loop.create_connection`."""
    cfg = _check_config(config)
    if host is None and port is None and sock is None:
        raise ValueError("host and port was not specified and no sock specified")  # asyncio's
    peer_given = sock is None or host is not None or port is not None
    checked_port = _check_port(port) if peer_given else None
    context = _ssl_context(ssl, server_side=False)
    _check_client_args(context, server_hostname, ssl_handshake_timeout,
                       ssl_shutdown_timeout, sock, local_addr)
    loop = asyncio.get_running_loop()
    # The common call, an address written out and no race: its one attempt, awaited here.
    # What the general path does with one address and no delay, less its coroutines,
    # partial and lists (a connect and close in a loop paid for them each time).
    found = (_numeric_address(host, checked_port, family, proto, flags)
             if sock is None and host is not None and happy_eyeballs_delay is None
             else None)
    if found is not None:
        transport = await _attempt(loop, found, cfg, local_addr, sock)
    else:
        infos = await _client_addresses(loop, host, checked_port, sock, peer_given,
                                        family, proto, flags)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # as asyncio: racing addresses means alternating their families
        if interleave:
            infos = _interleave_families(infos, interleave)
        attempts: list[Callable[[], Coroutine[Any, Any, UtcpTransport]]] = [
            functools.partial(_attempt, loop, info, cfg, local_addr, sock) for info in infos]
        transport = await _first_connected(loop, attempts, happy_eyeballs_delay, all_errors)
    app_protocol = protocol_factory()
    if context is None:
        transport.attach_protocol(app_protocol)
        return transport, app_protocol
    hostname = server_hostname if server_hostname is not None else host
    app_transport = await _wrap_tls(loop, transport, app_protocol, context, server_side=False,
                                    server_hostname=hostname or None,
                                    handshake_timeout=ssl_handshake_timeout,
                                    shutdown_timeout=ssl_shutdown_timeout)
    return app_transport, app_protocol


def _check_client_args(context: ssl_module.SSLContext | None, server_hostname: str | None,
                       ssl_handshake_timeout: float | None,
                       ssl_shutdown_timeout: float | None, sock: Any,
                       local_addr: tuple[str, int] | None) -> None:
    """asyncio's refusals of argument combinations, in asyncio's order, all made before
    any lookup or socket: a wrong call fails the same way whatever the network does."""
    if context is None and server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with ssl")
    if context is None and ssl_handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    _check_shutdown_timeout(context, ssl_shutdown_timeout)
    if sock is not None:
        _check_udp_socket(sock)
        if local_addr is not None:
            raise ValueError("local_addr and sock can not be specified at the same time")
    if local_addr is not None:
        _check_port(local_addr[1])


async def _client_addresses(loop: asyncio.AbstractEventLoop, host: str | None,
                            port: int | None, sock: Any, peer_given: bool, family: int,
                            proto: int, flags: int) -> list[Any]:
    """The addresses to try, as getaddrinfo tuples. A `sock=` with no host and port is
    connected already, as asyncio's sock= is, and names its own peer; a `sock=` given a
    peer is tried once only, since it closes with its connection."""
    if sock is not None and not peer_given:
        try:
            peer = sock.getpeername()
        except OSError:
            raise ValueError("host and port were not specified, and sock is not connected"
                             ) from None
        infos: list[Any] = [(sock.family, sock.type, sock.proto, "", peer)]
    else:
        infos = await _resolve(loop, host, port,
                               sock.family if sock is not None else family, proto, flags)
        if sock is not None:
            infos = infos[:1]
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned an empty list")
    return infos


async def _attempt(loop: asyncio.AbstractEventLoop, info: Any, config: Config,
                   local_addr: tuple[str, int] | None, sock: Any) -> UtcpTransport:
    """One address tried to the end of its handshake. A failed handshake aborts its
    transport, so a losing attempt leaves no socket behind; a refusal is reworded as
    asyncio words it (`_refused`)."""
    fam, typ, pro, _canon, addr = info
    # From a port the system picks, a peer still in TIME_WAIT for that port's last
    # connection to it answers our SYN with its old ACK until 2 x msl have passed
    # (a random ephemeral port repeats within seconds at a few hundred connections a
    # second, against a server that closes first): another port gets through at once.
    # A bounded number of times, so a spoofed ACK can delay a connect but not end it.
    moves = PORT_MOVES if local_addr is None and sock is None else 0
    while True:
        try:
            transport, waiter = await _open(loop, fam, typ, pro, addr, config, local_addr,
                                            sock, yield_to_time_wait=moves > 0)
            try:
                await waiter
            except BaseException:
                transport.abort()
                raise
        except PeerHoldsPort:
            moves -= 1
            continue
        except ConnectionRefusedError as exc:
            refused = _refused(addr, exc)
            if refused is exc:
                raise
            raise refused from exc
        return transport


async def _first_connected(loop: asyncio.AbstractEventLoop,
                           attempts: list[Callable[[], Coroutine[Any, Any, UtcpTransport]]],
                           happy_eyeballs_delay: float | None,
                           all_errors: bool) -> UtcpTransport:
    """The first attempt to connect, in turn or raced (happy eyeballs); when none does,
    the error asyncio would raise: the one error, an ExceptionGroup of all when
    `all_errors`, or one OSError naming them all."""
    errors: list[OSError] = []
    found: UtcpTransport | None = None
    if happy_eyeballs_delay is None:
        # Each address in turn until one connects, as asyncio does: a refusal from the
        # first ("localhost" is ::1 first on many systems) moves on to the next.
        for attempt in attempts:
            try:
                found = await attempt()
                break
            except OSError as exc:
                errors.append(exc)
    else:
        found = await _staggered_race(loop, attempts, happy_eyeballs_delay, errors)
    if found is None:
        if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
            raise errors[0]
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        raise OSError("Multiple exceptions: " + ", ".join(str(e) for e in errors))
    return found


def _interleave_families(infos: list[Any], first_family_count: int) -> list[Any]:
    """getaddrinfo's answers reordered as asyncio's `interleave` does (RFC 8305 §4):
    `first_family_count` addresses of the first family, then one of each family in
    turn, so a broken family costs one attempt, not all of its addresses in a row."""
    by_family: dict[int, list[Any]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    first = max(first_family_count - 1, 0)  # asyncio ignores a count below 1 the same way
    reordered = lists[0][:first]
    del lists[0][:first]
    reordered.extend(info for row in itertools.zip_longest(*lists) for info in row
                     if info is not None)
    return reordered


async def _staggered_race(loop: asyncio.AbstractEventLoop,
                          attempts: list[Callable[[], Coroutine[Any, Any, UtcpTransport]]],
                          delay: float, errors: list[OSError]) -> UtcpTransport | None:
    """Happy eyeballs (RFC 8305 §5) with asyncio's semantics (asyncio.staggered): each
    attempt starts `delay` s after the one before, or at once when that one fails; the
    first connection to complete wins and every other attempt is cancelled (its
    handshake abandoned, its socket closed). OSErrors go to `errors` in the order they
    happen; anything else ends the race and propagates.

    Not asyncio.staggered.staggered_race itself: on 3.11 an attempt that completes in
    the same loop iteration as the winner is dropped with its result, which here would
    be an open connection nobody holds.
    """
    pending = iter(attempts)
    running: set[asyncio.Task[UtcpTransport]] = set()
    order: dict[asyncio.Task[UtcpTransport], int] = {}

    def start_next() -> None:
        nxt = next(pending, None)
        if nxt is not None:
            task = loop.create_task(nxt())
            order[task] = len(order)
            running.add(task)

    winner: UtcpTransport | None = None
    start_next()
    try:
        while running and winner is None:
            done, _ = await asyncio.wait(running, timeout=delay,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                start_next()  # no answer within the delay: the next address joins in
                continue
            failed = False
            for task in sorted(done, key=order.__getitem__):
                running.discard(task)
                exc = task.exception()
                if exc is None:
                    if winner is None:
                        winner = task.result()
                    else:
                        task.result().abort()  # a second connection in the same moment
                elif isinstance(exc, OSError):
                    errors.append(exc)
                    failed = True
                else:
                    raise exc
            if failed and winner is None:
                start_next()
    finally:
        for task in running:
            task.cancel()
        for result in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(result, UtcpTransport):
                result.abort()  # connected before its cancellation landed
    return winner


def _refused(addr: Any, exc: ConnectionRefusedError) -> ConnectionRefusedError:
    """The refusal as asyncio words it ("[Errno 111] Connect call failed ('h', p)"),
    with the core's reason after it (port unreachable, a secure-mode mismatch...); the
    core's own exception stays as the cause."""
    if exc.errno is not None:
        return exc
    refused = ConnectionRefusedError(errno.ECONNREFUSED, f"Connect call failed {addr}: {exc}")
    refused.__cause__ = exc
    return refused


async def _resolve(loop: asyncio.AbstractEventLoop, host: str | None, port: int | None,
                   family: int, proto: int, flags: int) -> list[Any]:
    """getaddrinfo, without the trip to a worker thread when `host` is an address already
    (asyncio's create_connection skips it the same way): a connect to 127.0.0.1 in a
    loop spent more time waiting for the executor than on its handshake."""
    if host is not None:
        found = _numeric_address(host, port, family, proto, flags)
        if found is not None:
            return [found]
        try:
            return socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, proto,
                                      flags | socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            pass  # a name: resolving it may block, so it goes to the executor
    return await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM,
                                  proto=proto, flags=flags)


def _numeric_address(host: str, port: int | None, family: int, proto: int,
                     flags: int) -> Any | None:
    """The one getaddrinfo answer for an IPv4 or IPv6 address written out, made without
    the call, as asyncio's create_connection does (base_events._ipaddr_info): about
    1.5 us where a numeric getaddrinfo takes about 4 (no system call either way, once
    glibc has read its configuration). None for anything else (a name, a scoped IPv6
    address, a family that does not match, any flags), which getaddrinfo then answers."""
    if (port is None or flags or not isinstance(host, str)
            or proto not in (0, socket.IPPROTO_UDP)):
        return None
    for fam in (socket.AF_INET, socket.AF_INET6):
        if family not in (0, fam):
            continue
        try:
            packed = socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        text = socket.inet_ntop(fam, packed)  # as getaddrinfo writes it
        sockaddr = (text, port) if fam == socket.AF_INET else (text, port, 0, 0)
        return (fam, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", sockaddr)
    return None


# Client sockets bound to a fixed port (local_addr) by the pair of addresses they join:
# a new connection over a pair whose old one lingers in TIME_WAIT is refused
# (docs/protocol.md §4.4), as the kernel refuses a second bind of the same TCP 4-tuple.
_fixed_port_pairs: weakref.WeakValueDictionary[tuple[Any, Any], shutdown.Held] = (
    weakref.WeakValueDictionary())


# The secret behind client connections' ISNs (RFC 6528), one per process as the kernel
# keeps one: each connect makes an endpoint of its own, which drew 32 bytes from the
# system and keyed a MAC with them for the one ISN it makes. The server's endpoints keep
# their own (its SYN cookies' too).
_client_secret: list[HandshakeSecrets] = []


def _client_secrets() -> HandshakeSecrets:
    if not _client_secret:
        _client_secret.append(HandshakeSecrets())
    return _client_secret[0]


def _check_udp_socket(sock: object) -> None:
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"a UDP (SOCK_DGRAM) socket was expected, got {sock!r}")


async def _open(loop: asyncio.AbstractEventLoop, family: int, type_: int, proto: int,
                addr: Any, config: Config, local_addr: tuple[str, int] | None,
                user_sock: socket.socket | None = None, *, yield_to_time_wait: bool = False,
                ) -> tuple[UtcpTransport, asyncio.Future[None]]:
    if addr[1] == 0:
        # Linux answers a TCP connect to port 0 with RST, as to any closed port; a UDP
        # connect() to port 0 would instead disconnect the socket.
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"Connect call failed {addr}")
    # A port the application chose (local_addr, or its own socket, as after punching a
    # hole through a NAT with it) is a peer-to-peer connect: see UdpPort.icmp_refuses.
    fixed = local_addr is not None or user_sock is not None
    sock = user_sock if user_sock is not None else socket.socket(family, type_, proto)
    try:
        if local_addr is not None:
            # simultaneous open from fixed ports: both peers bind, then connect
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(local_addr)
        set_socket_buffers(sock)
        if user_sock is None or _peer_of(sock) != addr[:2]:
            sock.connect(addr)  # a connected UDP socket hears ICMP port-unreachable
    except BaseException:
        if user_sock is None:
            sock.close()
        raise
    sockname = sock.getsockname()
    if fixed:
        # Only a port the application chose can be one a lingering connection holds: a
        # port the system picks is never one a socket still open is bound to.
        pair = (tuple(sockname[:2]), tuple(sock.getpeername()[:2]))
        held = _fixed_port_pairs.get(pair)
        old = held.port if held is not None else None
        if old is not None and not old.closed and old.endpoint.connections:
            if user_sock is None:
                sock.close()
            state = next(iter(old.endpoint.connections.values())).state.name
            raise OSError(errno.EADDRINUSE, f"the connection {pair[0]} -> {pair[1]} still"
                                            f" exists ({state}); TIME_WAIT lasts 2 x msl")
    endpoint = Endpoint(config, sockname[1], secrets=_client_secrets())
    port = UdpPort(loop, sock, endpoint, connected=True, icmp_refuses=not fixed,
                sockname=sockname, family=family, reading=False)
    if fixed:
        _fixed_port_pairs[pair] = port.held
    port.close_when_idle = True
    now = loop.time()
    conn = endpoint.connect(addr, now)
    conn.sender.yields_to_time_wait = yield_to_time_wait
    waiter: asyncio.Future[None] = loop.create_future()
    transport = UtcpTransport(port, conn, addr, waiter=waiter)
    port.process(now)
    # The SYN is out: the rest of the port's setup overlaps its round trip
    try:
        port.start_reading()
    except BaseException:
        transport.abort()  # no connection left sending SYNs that nothing would read
        raise
    return transport, waiter


def _peer_of(sock: socket.socket) -> tuple[Any, ...] | None:
    try:
        return tuple(sock.getpeername()[:2])
    except OSError:
        return None


async def open_connection(host: str | None = None, port: int | str | None = None, *,
                          limit: int = 2 ** 16, **kwds: Any,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection` over utcp: asyncio's own StreamReader/StreamWriter."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kwds)
    writer = _StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
    return reader, writer


# ---------------------------------------------------------------------- server

class Server(asyncio.AbstractServer):
    """Behaves like `asyncio.Server`, over UDP sockets that each carry many connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: list[UdpPort],
                 protocol_factory: ProtocolFactory, ssl_context: ssl_module.SSLContext | None,
                 ssl_handshake_timeout: float | None,
                 ssl_shutdown_timeout: float | None = None) -> None:
        self._loop = loop
        self._ports = ports
        self._protocol_factory = protocol_factory
        self._ssl = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._closed = False
        self._active: set[UtcpTransport] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._serving_forever: asyncio.Future[None] | None = None
        self._tls_tasks: set[asyncio.Task[None]] = set()
        for port in ports:
            port.on_accept = self._make_acceptor(port)

    def __repr__(self) -> str:
        return f"<utcp.Server sockets={self.sockets!r}>"

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        if self._closed:
            return ()
        return tuple(port.sock for port in self._ports)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start()
        await asyncio.sleep(0)

    def _start(self) -> None:
        if self._serving or self._closed:
            return
        self._serving = True
        for port in self._ports:
            port.endpoint.listening = True

    def close(self) -> None:
        """Stop accepting. Open connections go on; the sockets close after the last one."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        for port in self._ports:
            port.endpoint.listening = False
            port.close_when_idle = True
            port.process()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
            self._serving_forever = None
        self._wake_waiters()

    async def wait_closed(self) -> None:
        """Until close() was called and every connection it accepted is gone."""
        if self._closed and not self._active:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(fut)
        await fut

    def _wake_waiters(self) -> None:
        if not self._closed or self._active:
            return
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            # Stop accepting, as asyncio 3.11 does, without waiting for the connections:
            # asyncio.run cancels this on the first Ctrl-C, and a client that stays
            # connected must not keep the program alive (3.12's wait here is CPython
            # issue gh-123720). The connections go on until their handlers end;
            # close_clients()/abort_clients() end them sooner.
            self.close()
            raise
        finally:
            self._serving_forever = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return  # the first Ctrl-C under asyncio.run: see serve_forever
        await self.wait_closed()

    def close_clients(self) -> None:
        """Close every connection the server accepted (asyncio 3.13): buffered data, FIN."""
        for transport in list(self._active):
            transport.close()

    def abort_clients(self) -> None:
        """Abort every connection the server accepted (asyncio 3.13): RST, at once."""
        for transport in list(self._active):
            transport.abort()

    # -------------------------------------------------------------- accepting

    def _make_acceptor(self, port: UdpPort) -> Callable[[Connection], None]:
        def accept(conn: Connection) -> None:
            self._accept(port, conn)
        return accept

    def _accept(self, port: UdpPort, conn: Connection) -> None:
        peername: Any = conn.peer
        if port.family == socket.AF_INET6:
            peername = _ipv6_sockaddr(conn.peer)
        transport = UtcpTransport(port, conn, peername, on_lost=self._on_lost)
        self._active.add(transport)
        try:
            protocol = self._protocol_factory()
        except Exception as exc:
            self._loop.call_exception_handler({
                "message": "protocol_factory() failed in utcp server", "exception": exc})
            transport.abort()
            return
        if self._ssl is None:
            transport.attach_protocol(protocol)
            return
        task = self._loop.create_task(self._accept_tls(transport, protocol))
        self._tls_tasks.add(task)
        task.add_done_callback(self._tls_tasks.discard)

    def _on_lost(self, transport: UtcpTransport) -> None:
        self._active.discard(transport)
        self._wake_waiters()

    async def _accept_tls(self, transport: UtcpTransport, protocol: asyncio.BaseProtocol) -> None:
        assert self._ssl is not None
        try:
            await _wrap_tls(self._loop, transport, protocol, self._ssl, server_side=True,
                            server_hostname=None, handshake_timeout=self._ssl_handshake_timeout,
                            shutdown_timeout=self._ssl_shutdown_timeout)
        except (OSError, asyncio.CancelledError, ssl_module.SSLError, TimeoutError):
            transport.abort()


def _ipv6_sockaddr(peer: tuple[str, int]) -> tuple[str, int, int, int]:
    """(host, port, flowinfo, scope_id), as an IPv6 TCP socket's getpeername() gives it;
    the endpoint keys connections by (host, port) only. Numeric: no lookup is made."""
    try:
        found = socket.getaddrinfo(peer[0], peer[1], socket.AF_INET6, socket.SOCK_DGRAM, 0,
                                   socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
        sockaddr: tuple[Any, ...] = found[0][4]
        return (peer[0], peer[1], int(sockaddr[2]), int(sockaddr[3]))
    except (OSError, IndexError, UnicodeError):
        return (peer[0], peer[1], 0, 0)


async def create_server(
        protocol_factory: ProtocolFactory, host: str | Iterable[str] | None = None,
        port: int | str | None = None, *, config: Config | None = None, family: int = 0,
        flags: int = socket.AI_PASSIVE, sock: Any = None, backlog: int = 100, ssl: Any = None,
        reuse_address: bool | None = None, reuse_port: bool | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
) -> Server:
    """`loop.create_server` over utcp: one UDP socket per local address serves them all."""
    cfg = _check_config(config)
    cfg.check_server()  # secure mode's footguns (docs/secure-mode.md), before any bind
    checked_port = _check_port(port, allow_none=True) or 0
    context = _ssl_context(ssl, server_side=True)
    _check_server_args(context, ssl_handshake_timeout, ssl_shutdown_timeout, sock,
                       host, port, backlog)
    loop = asyncio.get_running_loop()
    if sock is not None:
        # the application's own socket, bound as it chose; the server owns it from now
        set_socket_buffers(sock)
        endpoint = Endpoint(cfg, sock.getsockname()[1], listening=False, backlog=backlog)
        ports: list[UdpPort] = [UdpPort(loop, sock, endpoint)]
    else:
        hosts: list[str | None] = ([host] if host is None or isinstance(host, str)
                                   else list(host))
        infos: list[Any] = []
        for h in hosts:
            infos.extend(await loop.getaddrinfo(h, checked_port, family=family,
                                                type=socket.SOCK_DGRAM, flags=flags))
        ports = _bind_ports(loop, infos, cfg, backlog, reuse_address, reuse_port)
    server = Server(loop, ports, protocol_factory, context, ssl_handshake_timeout,
                    ssl_shutdown_timeout)
    if start_serving:
        await server.start_serving()
    return server


def _check_server_args(context: ssl_module.SSLContext | None,
                       ssl_handshake_timeout: float | None,
                       ssl_shutdown_timeout: float | None, sock: Any,
                       host: str | Iterable[str] | None, port: int | str | None,
                       backlog: object) -> None:
    """asyncio's refusals of argument combinations, in asyncio's order, before any bind."""
    if context is None and ssl_handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    _check_shutdown_timeout(context, ssl_shutdown_timeout)
    if sock is not None:
        _check_udp_socket(sock)
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        if sock.getsockname()[1] == 0:
            raise ValueError(f"sock must be bound to an address: {sock!r}")
    if isinstance(backlog, bool) or not isinstance(backlog, int):
        raise TypeError("backlog must be an int")


def _bind_ports(loop: asyncio.AbstractEventLoop, infos: list[Any], config: Config,
                backlog: int, reuse_address: bool | None,
                reuse_port: bool | None) -> list[UdpPort]:
    """One listening port per distinct address getaddrinfo gave; all or none, as
    asyncio's create_server: a bind that fails closes the sockets bound before it."""
    seen: set[Any] = set()
    ports: list[UdpPort] = []
    try:
        for fam, typ, pro, _canon, addr in infos:
            if (fam, addr) in seen:
                continue
            seen.add((fam, addr))
            sock = _bound_socket(fam, typ, pro, addr, reuse_address, reuse_port)
            endpoint = Endpoint(config, sock.getsockname()[1], listening=False,
                                backlog=backlog)
            ports.append(UdpPort(loop, sock, endpoint))
    except BaseException:
        for p in ports:
            p.close()
        raise
    return ports


def _bound_socket(fam: int, typ: int, pro: int, addr: Any, reuse_address: bool | None,
                  reuse_port: bool | None) -> socket.socket:
    """A server's UDP socket bound to `addr`; a failed bind is reworded with the
    address, as asyncio words it, and leaves no socket open."""
    sock = socket.socket(fam, typ, pro)
    try:
        # Off unless asked: on a UDP socket SO_REUSEADDR lets a second server bind
        # the same port silently (and take its traffic), not just skip TIME_WAIT
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_socket_buffers(sock)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"error while attempting to bind on address "
                                 f"{addr!r}: {exc.strerror}") from None
    return sock


async def start_server(client_connected_cb: ClientConnectedCb,
                       host: str | Iterable[str] | None = None,
                       port: int | str | None = None, *, limit: int = 2 ** 16,
                       **kwds: Any) -> Server:
    """`asyncio.start_server` over utcp."""
    loop = asyncio.get_running_loop()

    def connected(reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> Awaitable[None] | None:
        # StreamReaderProtocol made an asyncio.StreamWriter; the subclass adds only a
        # start_tls that works on uvloop (same attributes, so the class can change)
        writer.__class__ = _StreamWriter
        result = client_connected_cb(reader, writer)
        if asyncio.iscoroutine(result):
            return _run_handler(result, writer)
        return result

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, connected, loop=loop)

    return await create_server(factory, host, port, **kwds)


async def _run_handler(handler: Coroutine[Any, Any, None], writer: asyncio.StreamWriter) -> None:
    """A start_server handler, ended as asyncio 3.12 ends it when cancelled (asyncio.run
    cancels every task on Ctrl-C): its connection is closed rather than left open to a
    peer that would wait forever. The cancellation stops here, in the task's outermost
    frame, which nobody awaits: 3.11's StreamReaderProtocol asks a cancelled handler
    task for its exception and logs the CancelledError that raises. (A handler that
    fails is reported and its connection closed by StreamReaderProtocol itself.)"""
    try:
        await handler
    except asyncio.CancelledError:
        writer.transport.close()
