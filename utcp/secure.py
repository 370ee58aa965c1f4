"""Secure mode inside an endpoint: handshakes in SYN / SYN+ACK, sealing, NAT rebinding.

The connection state machine never sees any of this: inbound datagrams are opened
(or dropped and counted) before they are parsed, and outbound ones are sealed after
the connection built them. What the core receives is an ordinary plaintext segment.
See docs/secure-mode.md for the design and the threat model.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from utcp import crypto, log, wire
from utcp.config import Config
from utcp.state import State

if TYPE_CHECKING:
    from utcp.connection import Connection

Addr = tuple[str, int]
_SYN, _ACK, _RST = wire.SYN, wire.ACK, wire.RST


def _hlen(data: bytes | bytearray | memoryview) -> int:
    return (data[12] >> 4) * 4


def _sans_checksum(header: bytes) -> bytes:
    return header[:16] + b"\0\0" + header[18:]  # the field a middlebox may rewrite


class SecureLayer:
    """Per endpoint: the static key, and per connection its handshake and session."""

    def __init__(self, config: Config, counters: collections.Counter[str]) -> None:
        self.static = (crypto.load_private(config.secret_key) if config.secret_key
                       else X25519PrivateKey.generate())  # an anonymous client
        self.server_public = crypto.load_public(config.server_key) if config.server_key else None
        self.allowed = ({crypto.load_public(k) for k in config.allowed_keys}
                        if config.allowed_keys is not None else None)
        self.counters = counters
        self.initiators: dict[Connection, crypto.Initiator] = {}
        self.responders: dict[Connection, crypto.Responder] = {}
        self.sessions: dict[Connection, crypto.Session] = {}
        # the SYN / SYN+ACK that authenticated (checksum zeroed), header and all: a resend
        # is accepted only byte for byte, so its clear header cannot be swapped for another
        self.handshake_payload: dict[Connection, bytes] = {}
        self.by_ports: dict[tuple[int, int], set[Connection]] = {}  # header ports -> conns
        self.ports_of: dict[Connection, tuple[int, int]] = {}
        self.peer_keys: dict[Connection, bytes] = {}

    def _drop(self, reason: str) -> None:
        self.counters[f"secure: {reason}"] += 1
        if log.enabled():
            log.emit("drop", reason=reason, layer="secure")

    # ------------------------------------------------------------------ opening

    def start_client(self, conn: Connection) -> None:
        if self.server_public is None:
            raise ValueError("a secure client needs Config.server_key")
        self.initiators[conn] = crypto.Initiator(self.static, self.server_public)

    def read_syn(self, data: bytes | bytearray | memoryview
                 ) -> tuple[bytes, crypto.Responder] | None:
        """A SYN for a new connection: its header if msg1 authenticates (else None)."""
        hlen = _hlen(data)
        header, msg1 = bytes(data[:hlen]), bytes(data[hlen:])
        responder = crypto.Responder(self.static)
        try:
            client_key = responder.read_msg1(header, msg1)
        except crypto.SecureError as exc:
            self._drop(exc.reason)
            return None
        if self.allowed is not None and client_key not in self.allowed:
            self._drop("client key not allowed")
            return None
        self.counters["secure: handshakes accepted"] += 1
        return header, responder

    def adopt(self, conn: Connection, responder: crypto.Responder, syn: bytes,
              msg1: bytes) -> None:
        self.responders[conn] = responder
        self.handshake_payload[conn] = _sans_checksum(syn) + msg1
        self.peer_keys[conn] = responder.client_public
        ports = (int.from_bytes(syn[0:2], "big"), int.from_bytes(syn[2:4], "big"))
        self.by_ports.setdefault(ports, set()).add(conn)
        self.ports_of[conn] = ports

    # ------------------------------------------------------------------ inbound

    def open(self, conn: Connection, data: bytes | bytearray | memoryview) -> bytes | None:
        """A datagram from the address of an existing connection: plaintext or None."""
        if len(data) < 20:
            self._drop("short datagram")
            return None
        flags = data[13]
        session = self.sessions.get(conn)
        if flags & _SYN:
            return self._handshake_again(conn, data)
        if session is not None:
            try:
                return session.open(data)
            except crypto.SecureError as exc:
                self._drop(exc.reason)
                return None
        if flags & _RST and conn.state == State.SYN_SENT and len(data) == _hlen(data):
            # A plain RST answers our SYN: nothing listens there, or the server could not
            # authenticate our handshake. Anyone on the path could forge it, as for any
            # TCP: it can only stop a connection that does not exist yet.
            conn.refuse("connection refused: nothing listens there, or the server rejected"
                        " our secure handshake (wrong Config.server_key, or our key is"
                        " not among its allowed_keys)")
            return None
        self._drop("unauthenticated segment")
        return None

    def _handshake_again(self, conn: Connection,
                         data: bytes | bytearray | memoryview) -> bytes | None:
        hlen = _hlen(data)
        header, payload = bytes(data[:hlen]), bytes(data[hlen:])
        flags = data[13]
        initiator = self.initiators.get(conn)
        if flags & _ACK and initiator is not None and conn.state == State.SYN_SENT:
            if not payload:
                conn.refuse("the server answered without a secure handshake:"
                            " it is not in secure mode")
                self._drop("SYN+ACK without handshake")
                return None
            try:
                self.sessions[conn] = initiator.read_msg2(header, payload)
            except crypto.SecureError as exc:
                self._drop(exc.reason)
                return None
            del self.initiators[conn]
            self.handshake_payload[conn] = _sans_checksum(header) + payload
            return header
        # a retransmitted SYN or SYN+ACK: the same bytes as the one that authenticated
        if payload and _sans_checksum(header) + payload == self.handshake_payload.get(conn):
            return header
        self._drop("handshake segment that does not match")
        return None

    def rebind(self, connections: dict[Addr, Connection],
               data: bytes | bytearray | memoryview, key: Addr,
               ) -> tuple[Connection, bytes] | None:
        """An authenticated segment from a new address moves its connection there."""
        if len(data) < 20 or data[13] & _SYN:
            return None
        ports = (int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big"))
        for conn in self.by_ports.get(ports, ()):
            session = self.sessions.get(conn)
            if session is None or conn.state == State.CLOSED:
                continue
            before = session.highest
            try:
                plaintext = session.open(data)
            except crypto.SecureError:
                continue
            if session.highest == before:
                # authentic but older than what the current address sent (a late,
                # reordered datagram from a previous address): deliver, do not move back
                self.counters["secure: late segment from a previous address"] += 1
                return conn, plaintext
            old = conn.peer
            if connections.get(old) is conn:
                del connections[old]
            connections[key] = conn
            conn.peer = key
            conn.remote_port = key[1]
            self.counters["secure: connections moved to a new address"] += 1
            if log.enabled():
                log.emit("rebind", conn=conn.name, old=str(old), new=str(key))
            return conn, plaintext
        return None

    # ------------------------------------------------------------------ outbound

    def seal(self, conn: Connection, datagram: bytes) -> bytes | None:
        flags = datagram[13]
        if flags & _SYN:
            hlen = _hlen(datagram)
            header = datagram[:hlen]
            if flags & _ACK:
                responder = self.responders.get(conn)
                if responder is None:
                    self._drop("SYN+ACK without a handshake (simultaneous open)")
                    return None
                msg2 = responder.write_msg2(header)
                if responder.session is not None and conn not in self.sessions:
                    self.sessions[conn] = responder.session
                return header + msg2
            initiator = self.initiators.get(conn)
            if initiator is None:
                return None
            return header + initiator.write_msg1(header)
        session = self.sessions.get(conn)
        if session is None:
            self._drop("no session to seal with")
            return None
        try:
            return session.seal(datagram)
        except crypto.SecureError as exc:
            self._drop(exc.reason)
            return None

    def forget(self, conn: Connection) -> None:
        self.initiators.pop(conn, None)
        self.responders.pop(conn, None)
        self.sessions.pop(conn, None)
        self.handshake_payload.pop(conn, None)
        self.peer_keys.pop(conn, None)
        ports = self.ports_of.pop(conn, None)
        if ports is not None:
            conns = self.by_ports.get(ports)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self.by_ports[ports]
