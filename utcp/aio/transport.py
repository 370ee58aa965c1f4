"""`asyncio.Transport` over one utcp connection, with asyncio's own semantics.

What asyncio users rely on, kept here (CPython's selector_events.py is the reference):
- write-buffer water marks (64 KiB / 16 KiB by default) drive `pause_writing` and
  `resume_writing`; the buffer is what the core holds but has never transmitted;
- `pause_reading` leaves received bytes in the core, so the advertised window closes and
  the sender slows down instead of anything being dropped; `resume_reading` reopens it;
- `close()` sends the buffered data then FIN, and `connection_lost(None)` comes once that
  FIN is acknowledged (the rest of the close and TIME_WAIT go on inside the library);
- `abort()` sends RST and calls `connection_lost(None)` soon;
- an exception from a protocol callback goes to the loop's exception handler and aborts.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

from utcp.aio.port import UdpPort
from utcp.connection import Connection
from utcp.events import EofReceived, HandshakeCompleted, SendClosed, Terminated
from utcp.state import State

DEFAULT_HIGH_WATER = 64 * 1024
_READ_CHUNK = 256 * 1024
# Read once, at import: `State.CLOSED` is an attribute lookup on the enum class each time,
# and the write path and delivery test it per call. A tuple for isinstance: a `X | Y`
# union is checked more slowly.
_CLOSED = State.CLOSED
_BYTES_LIKE = (bytes, bytearray, memoryview)
_asyncio_logger = logging.getLogger("asyncio")  # where asyncio's transports log this


class UtcpTransport(asyncio.Transport):
    _start_tls_compatible = True

    def __init__(self, port: UdpPort, conn: Connection, peername: Any,
                 protocol: asyncio.BaseProtocol | None = None,
                 waiter: asyncio.Future[None] | None = None,
                 on_lost: Callable[[UtcpTransport], None] | None = None) -> None:
        super().__init__()
        self._loop = port.loop
        self._port = port
        self._conn = conn
        self._peername = peername
        self._protocol: asyncio.BaseProtocol | None = None
        self._buffered = False
        self._waiter = waiter           # completes when the handshake does (client side)
        self._closing = False           # close() or abort() called, or the connection died
        self._eof_written = False       # FIN queued, by write_eof() or close()
        self._write_eof_called = False  # by write_eof(): then write() is an error
        self._reading_paused = False
        self._protocol_paused = False   # pause_writing() called on the protocol
        self._eof_pending = False
        self._eof_delivered = False
        # The connection ended with an error while bytes it had taken in were still
        # unread: they go first, as a kernel's receive queue gives its data before the
        # reset (`_deliver` reports it once they are read).
        self._error_pending: Exception | None = None
        self._send_closed = False
        self._lost = False              # connection_lost scheduled
        # Inside the port's `process_events` call: connection_lost is then made when it
        # returns, with what it delivered before it, rather than by call_soon one loop
        # iteration later (`_lost_now` holds its argument until then).
        self._dispatching = False
        self._lost_now: tuple[BaseException | None] | None = None
        # The connection ended before there was a protocol to tell: (exc,) for
        # `attach_protocol`.
        self._loss_pending: tuple[BaseException | None] | None = None
        self._on_lost = on_lost         # the server's bookkeeping of live connections
        # numbers as the application gave them (asyncio takes a float as well as an int,
        # and gives back what it took): `float` here would make every int a float when
        # compiled, `int` would refuse a float there
        self._high: int | float = DEFAULT_HIGH_WATER
        self._low: int | float = DEFAULT_HIGH_WATER // 4
        port.transports[conn] = self
        if protocol is not None:
            self.set_protocol(protocol)

    def __repr__(self) -> str:
        return f"<UtcpTransport {self._conn.name} {self._conn.state.name}>"

    # ------------------------------------------------------------------ BaseTransport

    def get_extra_info(self, name: object, default: Any = None) -> Any:
        # `object`: asyncio's transports answer any key (the default), and a compiled
        # `str` parameter would raise TypeError instead
        if name == "state":
            return self._conn.state
        if name == "stats":
            return self._conn.stats()
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._port.local_addr  # kept once the socket closes, as asyncio's
        if name == "socket":
            return self._port.sock
        if name == "connection":
            return self._conn
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Graceful: the buffered data, then FIN; connection_lost once the FIN is acked."""
        if self._closing:
            return
        self._closing = True
        if self._conn.state == State.CLOSED:
            # a reset the application was not told of yet: as asyncio's close() on a
            # socket whose error it never read, not an error
            pending, self._error_pending = self._error_pending, None
            self._connection_lost(None if pending is not None else self._conn.error)
            return
        # nobody reads any more: a shut window is bounded, and so is FIN_WAIT_2
        self._conn.orphan(self._loop.time())
        if not self._eof_written:
            self._eof_written = True
            self._conn.close()
        # The FIN leaves in this call, as a write into an idle connection does (within
        # the port's processing its next round takes it): not one loop iteration later.
        self._port.send_now()
        if self._send_closed or self._conn.state in (State.TIME_WAIT, State.CLOSED):
            self._connection_lost(None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def attach_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Give the transport its first protocol (utcp's own calls do, once the
        handshake is done or the TLS layer is set up): connection_made, then, in the order
        they happened, whatever the core queued while there was none (bytes, the peer's
        FIN, a reset). A client's handshake completes, and a server's connection waits
        in the accept queue, before any protocol exists; the peer may have sent all it
        will send by then (a short request and its FIN), and no later datagram comes
        to trigger another pass over the events (issue #11)."""
        self.set_protocol(protocol)
        try:
            protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "protocol.connection_made() failed")
            return
        self._dispatch()  # not `process_events`: the caller has not returned the pair yet
        if self._loss_pending is not None and not self._lost:
            self._connection_lost(self._loss_pending[0])

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # ------------------------------------------------------------------ ReadTransport

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        # Reading reopens the window; the update must go out now, not with the next
        # datagram or timer (the sender may be waiting on a long persist backoff).
        self._deliver()
        self._port.schedule_flush()

    # ------------------------------------------------------------------ WriteTransport

    def set_write_buffer_limits(self, high: int | float | None = None,
                                low: int | float | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[Any, Any]:  # ints, or floats if given
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return self._conn.unsent

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._write_eof_called:
            raise RuntimeError("Cannot call write() after write_eof()")
        conn = self._conn
        if not data:
            return
        if self._closing or conn.state is _CLOSED:
            if self._error_pending is not None and not self._closing:
                # a reset not yet reported (bytes before it unread, or after the EOF):
                # asyncio's send fails on it and ends the transport with it
                self._force_close(self._error_pending)
            return  # after close() or abort(), or once the connection died: asyncio drops
        idle = conn.unsent == 0
        try:
            conn.send(data)
        except ConnectionError:
            return  # the peer reset or the connection timed out: asyncio drops silently
        if idle:
            self._port.send_now()        # latency: nothing was waiting, go now
        else:
            self._port.schedule_flush()  # throughput: coalesce into one flush
        if not self._protocol_paused and conn.unsent > self._high:
            self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = self._write_eof_called = True
        if self._conn.state != State.CLOSED:
            self._conn.close()
            self._port.schedule_flush()
        elif self._error_pending is not None:
            self._force_close(self._error_pending)  # as write() does

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """RST now; connection_lost(None) as in asyncio."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        """Every abnormal end comes here, as in CPython's selector transports: abort(),
        a protocol callback that raised (`_fatal_error`), the core ending the connection
        with an error, and asyncio's SSLProtocol, which calls it by this name on a fatal
        TLS error or a TLS shutdown that times out, and the port when its socket
        closes or the loop shuts down (`ended_by_port`). RST (a no-op once the core is CLOSED), then
        connection_lost(exc) once."""
        self._closing = True
        self._conn.abort()
        self._port.schedule_flush()
        self._connection_lost(exc)

    # ------------------------------------------------------------------ flow control

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self._conn.unsent <= self._high:
            return
        self._protocol_paused = True
        self._call(self._protocol.pause_writing if self._protocol else None,
                   "protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        # not once lost: the bytes were dropped, not sent (a drain() would return)
        if self._protocol_paused and not self._lost and self._conn.unsent <= self._low:
            self._protocol_paused = False
            self._call(self._protocol.resume_writing if self._protocol else None,
                       "protocol.resume_writing() failed")

    # ------------------------------------------------------------------ events from the core

    def process_events(self) -> None:
        """The port's `ConnectionListener` call: the core touched this connection.

        The port calls it from a loop callback (a datagram, a timer), never from inside
        the application's own calls, so connection_lost is made here, after whatever this
        call delivered, as asyncio's call_soon would make it next: one loop iteration
        sooner (the task that awaits `wait_closed()` then runs in the next one)."""
        self._dispatching = True
        try:
            self._dispatch()
        finally:
            self._dispatching = False
        lost = self._lost_now
        if lost is not None:
            self._lost_now = None
            self._call_connection_lost(lost[0])

    def _dispatch(self) -> None:
        conn = self._conn
        # Most calls (every data segment) find no event: `events` is tested before a
        # `next_event` call is paid for.
        while conn.events and (event := conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(None)
            elif isinstance(event, EofReceived):
                self._eof_pending = True
            elif isinstance(event, SendClosed):
                self._send_closed = True
                if self._closing:
                    self._connection_lost(None)
            elif isinstance(event, Terminated):
                self._on_terminated(event.error)
        if self._protocol is not None:
            self._deliver()
            if self._protocol_paused:
                self._maybe_resume_protocol()

    def ended_by_port(self, exc: Exception) -> None:
        """The port's `ConnectionListener` call: its socket closed, or the loop is
        shutting down, under this connection (the core has sent what RST it could)."""
        self._force_close(exc)

    def _on_terminated(self, error: Exception | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error or ConnectionAbortedError("connection closed"))
            self._closing = True
            self._port.detach(self._conn)
            return
        if error is not None:
            # After the bytes before it, and no protocol yet (the accept queue, a TLS
            # handshake) is no reason to lose them: `attach_protocol` delivers them first.
            # After the peer's EOF, as Linux's recv (the FIN marked the socket done): the
            # reading side ends at the EOF, and only a write reports the reset (EPIPE).
            # But bytes written and never sent are lost with it: asyncio's write
            # callback, with them in its buffer, would meet the error at once.
            conn = self._conn
            if (not self._closing and not conn.counters.unsent_dropped
                    and (conn.readable or self._eof_pending)):
                self._error_pending = error if not self._eof_pending else BrokenPipeError(
                    errno.EPIPE, f"Broken pipe: {error}")
            else:
                self._force_close(error)
        elif self._closing or self._eof_delivered:
            self._connection_lost(None)
        # else: an orderly end the application has not caught up with yet; the data and
        # EOF still in the buffer are delivered first, and connection_lost after them.

    def _deliver(self) -> None:
        """Hand the protocol what the connection received, in the order it came: bytes
        (unless reading is paused), the EOF, a reset. Each round looks again at what a
        callback may have changed, as asyncio's next read would: after `close()` nothing
        more is delivered, after `set_protocol()` the new protocol gets the rest."""
        conn = self._conn
        while not self._lost and (protocol := self._protocol) is not None:
            if self._closing and self._eof_written:
                # after close() asyncio reads nothing more; still drain to keep the window
                # open (the peer's FIN must get through)
                conn.read()
                return
            if not conn.readable or self._reading_paused:
                break
            try:
                if self._buffered:
                    assert isinstance(protocol, asyncio.BufferedProtocol)
                    buf = memoryview(protocol.get_buffer(conn.readable))
                    if buf.itemsize != 1 or buf.ndim != 1:
                        buf = buf.cast("B")  # filled and counted in bytes, as recv_into does
                    if not len(buf):
                        raise RuntimeError("get_buffer() returned an empty buffer")
                    data = conn.read(len(buf))
                    buf[:len(data)] = data
                    protocol.buffer_updated(len(data))
                else:
                    assert isinstance(protocol, asyncio.Protocol)
                    protocol.data_received(conn.read_pieces(_READ_CHUNK))
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
        else:
            return  # connection_lost is on its way, or there is no protocol yet
        if conn.readable or self._reading_paused:
            return
        if self._eof_pending and not self._eof_delivered:
            self._eof_delivered = True
            try:
                keep_open = protocol.eof_received()  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
                return
            if not keep_open:
                self.close()
        error = self._error_pending
        if error is not None:
            if not self._eof_pending:  # (else see _on_terminated)
                self._error_pending = None
                self._force_close(error)
        elif self._eof_delivered and conn.state is _CLOSED and not self._lost:
            self._closing = True
            self._connection_lost(conn.error)

    def _call(self, method: Any, message: str) -> None:
        if method is None:
            return
        try:
            method()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self,
                "protocol": self._protocol})

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # As asyncio's: an OSError out of a callback (a reset the protocol re-raised,
        # say) ends the connection without a report, but in debug mode.
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self,
                "protocol": self._protocol})
        elif self._loop.get_debug():
            _asyncio_logger.debug("%r: %s", self, message, exc_info=exc)
        self._force_close(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._closing = True
        if self._protocol is None:
            # Nobody to tell yet: `attach_protocol` delivers what arrived first, then this.
            if self._loss_pending is None:
                self._loss_pending = (exc,)
                self._port.detach(self._conn)
                if self._on_lost is not None:
                    self._on_lost(self)
            return
        self._lost = True
        if self._loss_pending is None:
            self._port.detach(self._conn)
            if self._on_lost is not None:
                self._on_lost(self)
        if self._dispatching:
            self._lost_now = (exc,)  # made when `process_events` returns
        else:
            self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        try:
            # a BaseException too (a callback that raised CancelledError), as asyncio
            protocol.connection_lost(exc)  # type: ignore[arg-type]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:
            self._loop.call_exception_handler({
                "message": "protocol.connection_lost() failed", "exception": err,
                "transport": self, "protocol": protocol})

