"""Secure mode inside an endpoint: handshakes in SYN / SYN+ACK, sealing, NAT rebinding.

The connection state machine never sees any of this: inbound datagrams are opened
(or dropped and counted) before they are parsed, and outbound ones are sealed after
the connection built them. What the core receives is an ordinary plaintext segment.
See docs/secure-mode.md for the design and the threat model.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from utcp import crypto, log, wire
from utcp.config import Config
from utcp.state import State

if TYPE_CHECKING:
    from utcp.connection import Connection

Addr = tuple[str, int]
LOAD_SYNS_PER_SECOND = 64   # new handshakes a second before SYNs need a cookie
LATEST_KEYS = 65_536        # client keys whose last timestamp is kept (~10 MB at most)
AMPLIFICATION = 3           # RFC 9000 8: bytes sent to an unproved address per byte received
VALIDATED_KEEP = 4          # proved addresses remembered per connection
_PATH_OPTION_LEN = 4 + 1 + 8   # kind, len, ExID, type, 8 random bytes
_PATH_CHALLENGE, _PATH_RESPONSE = 2, 3
_SYN, _ACK, _RST = wire.SYN, wire.ACK, wire.RST
_COOKIE_TAG = bytes((254, crypto.COOKIE_OPTION_LEN)) + crypto.EXID.to_bytes(2, "big")
_PATH_TAG = bytes((254, _PATH_OPTION_LEN)) + crypto.EXID.to_bytes(2, "big")


def _path_option(header: bytes) -> tuple[int, bytes] | None:
    """(type, token) of a path challenge or response option in an opened segment's
    (authenticated) header, else None. Most headers lack the tag: one find, no loop."""
    hlen = (header[12] >> 4) * 4
    if header.find(_PATH_TAG, 20, hlen) < 0:
        return None
    i = 20
    while i < hlen:
        kind = header[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if i + 1 >= hlen or header[i + 1] < 2:
            return None
        length = header[i + 1]
        if kind == 254 and length == _PATH_OPTION_LEN and header[i:i + 4] == _PATH_TAG:
            return header[i + 4], bytes(header[i + 5:i + length])
        i += length
    return None


def _hlen(data: bytes | bytearray | memoryview) -> int:
    return (data[12] >> 4) * 4


def _strip_cookie(header: bytes) -> tuple[bytes, bytes | None]:
    """A SYN's cookie option is the last 16 bytes of its header (where seal puts it);
    the handshake hashes the header without it, so msg1 need not change."""
    n = crypto.COOKIE_OPTION_LEN
    if len(header) >= 20 + n and header[-n:-n + 4] == _COOKIE_TAG:
        stripped = bytearray(header[:-n])
        stripped[12] = (len(stripped) // 4) << 4 | (stripped[12] & 0x0F)
        return bytes(stripped), header[-crypto.COOKIE_LEN:]
    return header, None


def _with_cookie(header: bytes, cookie: bytes) -> bytes | None:
    if len(header) + crypto.COOKIE_OPTION_LEN > 60:
        return None
    out = bytearray(header) + _COOKIE_TAG + cookie
    out[12] = (len(out) // 4) << 4 | (out[12] & 0x0F)
    return bytes(out)


def _sans_checksum(header: bytes) -> bytes:
    return header[:16] + b"\0\0" + header[18:]  # the field a middlebox may rewrite


@dataclass(slots=True)
class _Connecting:
    """A client's connect in progress: what an unauthenticated refusal is checked against."""

    isn: int                       # our SYN's sequence number, which a refusal must ACK
    syns: int = 0                  # SYNs sealed so far (the first and retransmissions)
    hinted_at: int | None = None   # `syns` when the first plausible refusal came
    syn: tuple[bytes, bytes] | None = None  # our SYN's header (no cookie) and msg1
    cookie: bytes | None = None    # the server's, from a cookie reply: sent in every SYN
    cookie_for: int = -1           # `syns` when we resent for a cookie reply


@dataclass(slots=True)
class _Path:
    """A new address a connection moved to, not yet proved: QUIC's anti-amplification
    until the peer echoes `challenge` from it (RFC 9000 8.2, 21.5.4)."""

    addr: Addr
    challenge: bytes
    received: int                  # bytes that came from `addr` since the move
    sent: int = 0                  # bytes sent to `addr` since; at most 3 * received
    since_challenge: int = 0       # datagrams from `addr` since the last challenge


class SecureLayer:
    """Per endpoint: the static key, and per connection its handshake and session."""

    def __init__(self, config: Config, counters: collections.Counter[str], *,
                 listening: bool = False,
                 send: Callable[[bytes, Addr], None] | None = None) -> None:
        if listening:
            config.check_server()
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
        self.connecting: dict[Connection, _Connecting] = {}
        # path validation (RFC 9000 8.2): addresses each connection has proved, and the
        # one it was moved to and is being challenged, if any
        self.validated: dict[Connection, list[Addr]] = {}
        self.paths: dict[Connection, _Path] = {}
        self._send = send if send is not None else (lambda data, addr: None)
        self.cookies = crypto.RetryCookies()
        # per client static key, the newest msg1 timestamp accepted and where it came
        # from (bounded, the oldest forgotten first)
        self.latest: collections.OrderedDict[bytes, tuple[bytes, Addr]] = \
            collections.OrderedDict()
        self._window_start = float("-inf")
        self._syns_in_window = 0

    def drop(self, reason: str) -> None:
        self.counters[f"secure: {reason}"] += 1
        if log.enabled():
            log.emit("drop", reason=reason, layer="secure")

    # ------------------------------------------------------------------ opening

    def start_client(self, conn: Connection) -> None:
        if self.server_public is None:
            raise ValueError("a secure client needs Config.server_key")
        self.initiators[conn] = crypto.Initiator(self.static, self.server_public)
        self.validated[conn] = [conn.peer]

    def read_syn(self, data: bytes | bytearray | memoryview, key: Addr, now: float,
                 room: int, backlog: int, *, evict: bool = False,
                 ) -> tuple[bytes, crypto.Responder] | None:
        """A SYN for a new connection: its header (cookie stripped) if msg1 authenticates
        and is fresh, else None (counted, and answered here if it is to be answered).

        `room` is how many more half-open connections the endpoint takes. The cheap
        checks come first and cost no DH work (WireGuard's order): a full queue, then,
        under load, a cookie that proves the source address (else a cookie reply). Only
        then msg1's two X25519 operations, the allow list, and its timestamp: a msg1 not
        newer than the last one accepted from the same client key is a replay.
        `evict`: the table is full but an idle connection may make room, for a client
        that proves its address (a full table counts as load: the cookie is required).
        """
        hlen = _hlen(data)
        header, cookie = _strip_cookie(bytes(data[:hlen]))
        msg1 = bytes(data[hlen:])
        if len(msg1) != crypto.MSG1_LEN:
            self.drop("SYN without a secure handshake")
            self._reset(header, key, plaintext_peer=not msg1)
            return None
        loaded = self._under_load(now, room, backlog)
        if room <= 0 and not evict:
            self.drop("SYN dropped before DH work: queue full")
            return None
        if loaded and (cookie is None or not self.cookies.check(key, cookie, now)):
            self.drop("SYN under load without a valid cookie")  # answered statelessly
            self._send_cookie(header, key, now)
            return None
        responder = crypto.Responder(self.static)
        try:
            client_key = responder.read_msg1(header, msg1)
        except crypto.SecureError as exc:
            self.drop(exc.reason)
            self._reset(header, key)  # fail the client fast and clearly (a hint to it)
            return None
        if self.allowed is not None and client_key not in self.allowed:
            self.drop("client key not allowed")
            # msg1 authenticated, so we can prove the refusal is ours: msg2 under the
            # RST's header (which it hashes, so it cannot pass for a SYN+ACK's). The
            # client then fails at once; two more X25519 operations, behind the same
            # cheap checks as any handshake.
            rst = self._rst_for(header, b"")
            self._send(rst + responder.write_msg2(rst), key)
            self.counters["RST sent for no connection"] += 1
            return None
        if not self._fresh(client_key, responder.timestamp, key):
            self.drop("replayed handshake: timestamp not newer")
            return None
        self.counters["secure: handshakes accepted"] += 1
        return header, responder

    def _fresh(self, client_key: bytes, timestamp: bytes, key: Addr) -> bool:
        """Whether a client's msg1 is newer than the last one accepted from its key (and
        remember it if so). A replay is answered by nothing: the genuine client has this
        handshake's answer already. The same msg1 from the same address and port is let
        through: the client resending its SYN after our half-open entry expired (all its
        SYN+ACKs lost). A replay can do that too, but only there, where one connection
        at a time exists and our SYN+ACK goes to the genuine client."""
        last = self.latest.get(client_key)
        if last is not None and (timestamp < last[0] or (
                timestamp == last[0] and last[1] != key)):
            return False
        self.latest[client_key] = (timestamp, key)
        self.latest.move_to_end(client_key)
        while len(self.latest) > LATEST_KEYS:
            self.latest.popitem(last=False)
        return True

    def _under_load(self, now: float, room: int, backlog: int) -> bool:
        """WireGuard's "under load": a quarter of the SYN queue in use, or more new
        handshakes a second than LOAD_SYNS_PER_SECOND. Then SYNs need a cookie."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._syns_in_window = 0
        self._syns_in_window += 1
        return (self._syns_in_window > LOAD_SYNS_PER_SECOND
                or backlog - room >= max(1, backlog // 4))

    def _send_cookie(self, header: bytes, key: Addr, now: float) -> None:
        """Stateless: a RST+ACK acknowledging the SYN, with option 254 carrying the
        cookie. Smaller than the SYN, so no amplification."""
        cookie = self.cookies.make(key, now)
        self._send(self._rst_for(header, _COOKIE_TAG + cookie), key)
        self.counters["secure mode: cookie replies sent"] += 1

    def _reset(self, header: bytes, key: Addr, *, plaintext_peer: bool = False) -> None:
        """RFC 9293 3.10.7.1's RST for a SYN; a plaintext client's says we need secure
        mode (the option the client's connection looks for: wire.SECURE_REQUIRED)."""
        option = wire.SECURE_REQUIRED_OPTION if plaintext_peer else b""
        self._send(self._rst_for(header, option), key)
        self.counters["RST sent for no connection"] += 1

    @staticmethod
    def _rst_for(syn: bytes, options: bytes) -> bytes:
        sport, dport = int.from_bytes(syn[0:2], "big"), int.from_bytes(syn[2:4], "big")
        ack = (int.from_bytes(syn[4:8], "big") + 1) & 0xFFFFFFFF
        return wire.build_fast(dport, sport, 0, ack, _RST | _ACK, 0, options)

    def adopt(self, conn: Connection, responder: crypto.Responder, syn: bytes,
              msg1: bytes) -> None:
        self.responders[conn] = responder
        self.handshake_payload[conn] = _sans_checksum(syn) + msg1
        self.peer_keys[conn] = responder.client_public
        self.validated[conn] = [conn.peer]  # once the handshake completes (endpoint's 3x)
        ports = (int.from_bytes(syn[0:2], "big"), int.from_bytes(syn[2:4], "big"))
        self.by_ports.setdefault(ports, set()).add(conn)
        self.ports_of[conn] = ports

    # ------------------------------------------------------------------ inbound

    def open(self, conn: Connection, data: bytes | bytearray | memoryview) -> bytes | None:
        """A datagram from the address of an existing connection: plaintext or None."""
        if len(data) < 20:
            self.drop("short datagram")
            return None
        flags = data[13]
        session = self.sessions.get(conn)
        if flags & _SYN:
            return self._handshake_again(conn, data)
        if session is not None:
            try:
                opened = session.open(data)
            except crypto.SecureError as exc:
                self.drop(exc.reason)
                return None
            path = self.paths.get(conn)
            if path is not None and path.addr == conn.peer:
                path.received += len(data)
                path.since_challenge += 1
                if path.since_challenge >= 8:  # the challenge or its answer was lost
                    self._challenge(conn, path)
            return self._path_control(conn, opened)
        if flags & _RST and conn.state == State.SYN_SENT and \
                len(data) == _hlen(data) + crypto.MSG2_LEN:
            self._authenticated_refusal(conn, data)
            return None
        if flags & _RST and conn.state == State.SYN_SENT and len(data) == _hlen(data):
            if _hlen(data) == 20 + crypto.COOKIE_OPTION_LEN and \
                    bytes(data[20:24]) == _COOKIE_TAG:
                self._cookie_reply(conn, data)
                return None
            self._unauthenticated_refusal(
                conn, data, "connection refused: nothing listens there, or the server"
                " rejected our secure handshake (wrong Config.server_key, or our key is not"
                " among its allowed_keys)")
            return None
        self.drop("unauthenticated segment")
        return None

    def _cookie_reply(self, conn: Connection, data: bytes | bytearray | memoryview) -> None:
        """The server is under load and wants proof of our address: resend the SYN at
        once with the cookie, and every later SYN too. Unauthenticated like any answer
        before msg2, so it must acknowledge our SYN, and it earns one resend per SYN we
        sent: a forger can cost us a round trip, never end the connect or make us flood.
        Only a secure server sends one, and it acknowledges exactly the SYN (ISN + 1)."""
        pending = self.connecting.get(conn)
        ack = int.from_bytes(data[8:12], "big")
        if pending is None or pending.syn is None or ack != (pending.isn + 1) & 0xFFFFFFFF:
            self.drop("cookie reply that does not acknowledge our SYN")
            return
        if pending.cookie_for == pending.syns:
            self.drop("second cookie reply for one SYN")
            return
        pending.cookie = bytes(data[24:24 + crypto.COOKIE_LEN])
        resend = _with_cookie(pending.syn[0], pending.cookie)
        if resend is None:
            self.drop("no room for the cookie in our SYN")
            return
        pending.syns += 1
        pending.cookie_for = pending.syns
        self.counters["secure mode: cookie replies answered"] += 1
        self._send(resend + pending.syn[1], conn.peer)

    def _authenticated_refusal(self, conn: Connection,
                               data: bytes | bytearray | memoryview) -> None:
        """A RST carrying msg2: the server read our msg1, and it refuses our key."""
        initiator = self.initiators.get(conn)
        hlen = _hlen(data)
        if initiator is None:
            self.drop("refusal with a handshake while not connecting")
            return
        try:
            initiator.read_msg2(bytes(data[:hlen]), bytes(data[hlen:]))  # on a copy
        except crypto.SecureError as exc:
            self.drop(f"refusal: {exc.reason}")
            return
        self.counters["secure mode: authenticated refusals"] += 1
        conn.refuse("connection refused: the server does not allow our key (it is not"
                    " among its Config.allowed_keys)")

    def _unauthenticated_refusal(self, conn: Connection,
                                 data: bytes | bytearray | memoryview, message: str) -> None:
        """A plain RST or a SYN+ACK without a handshake answers our SYN.

        Nothing authenticates it, so on its own it must not end the connect: anyone who
        sees the SYN (or guesses it) could send it, and the genuine SYN+ACK may be on
        its way. It must acknowledge our SYN (RFC 9293 3.10.7.3, RFC 5961 3: a blind
        attacker has to guess the keyed ISN; a plaintext peer may acknowledge msg1 as
        SYN data too, hence the range); then it is remembered as the likely cause.
        If a SYN we resent after it is answered the same way, with no authenticated
        SYN+ACK in between, the connect fails with it: a genuine answer to the first SYN
        would have come in the retransmission timeout that passed, so a forger only wins
        where the server does not answer anyway. If the SYNs run out first, the connect
        fails with it too (Connection.refusal_hint) instead of a bare timeout.
        """
        pending = self.connecting.get(conn)
        ack = int.from_bytes(data[8:12], "big")
        if pending is None or not data[13] & _ACK or \
                not 1 <= (ack - pending.isn) & 0xFFFFFFFF <= 1 + crypto.MSG1_LEN:
            self.drop("refusal that does not acknowledge our SYN")
            return
        self.counters["secure: unauthenticated refusals while connecting"] += 1
        if log.enabled():
            log.emit("drop", reason="unauthenticated refusal", layer="secure",
                     conn=conn.name)
        if pending.hinted_at is not None and pending.syns > pending.hinted_at:
            conn.refuse(message)
            return
        if pending.hinted_at is None:
            pending.hinted_at = pending.syns
        conn.refusal_hint = message

    def _handshake_again(self, conn: Connection,
                         data: bytes | bytearray | memoryview) -> bytes | None:
        hlen = _hlen(data)
        header, payload = bytes(data[:hlen]), bytes(data[hlen:])
        if not data[13] & _ACK:
            header = _strip_cookie(header)[0]
        flags = data[13]
        initiator = self.initiators.get(conn)
        if flags & _ACK and initiator is not None and conn.state == State.SYN_SENT:
            if not payload:
                self._unauthenticated_refusal(
                    conn, data, "connection refused: the server answered without a secure"
                    " handshake; it is not in secure mode")
                return None
            try:
                self.sessions[conn] = initiator.read_msg2(header, payload)
            except crypto.SecureError as exc:
                self.drop(exc.reason)
                return None
            del self.initiators[conn]
            self.connecting.pop(conn, None)
            self.handshake_payload[conn] = _sans_checksum(header) + payload
            return header
        # a retransmitted SYN or SYN+ACK: the same bytes as the one that authenticated
        if payload and _sans_checksum(header) + payload == self.handshake_payload.get(conn):
            return header
        self.drop("handshake segment that does not match")
        return None

    def rebind(self, connections: dict[Addr, Connection],
               data: bytes | bytearray | memoryview, key: Addr,
               ) -> tuple[Connection, bytes | None] | None:
        """An authenticated segment from a new address moves its connection there.

        Returns the connection and the plaintext, None as plaintext if it was a path
        control segment (consumed here), or None if no connection's session opens it."""
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
                return conn, self._path_control(conn, plaintext)
            old = conn.peer
            if connections.get(old) is conn:
                del connections[old]
            connections[key] = conn
            conn.peer = key
            conn.remote_port = key[1]
            self.counters["secure: connections moved to a new address"] += 1
            if log.enabled():
                log.emit("rebind", conn=conn.name, old=str(old), new=str(key))
            if key in self.validated.get(conn, ()):
                self.paths.pop(conn, None)  # back to an address it has proved
            else:
                # RFC 9000 8.2 / 9.3: authentic, but maybe relayed by someone who wants
                # our traffic sent to a victim there. Send it at most 3x what came from
                # it until the peer answers a challenge from it.
                path = _Path(key, os.urandom(8), len(data))
                self.paths[conn] = path
                self._challenge(conn, path)
            return conn, self._path_control(conn, plaintext)
        return None

    def _challenge(self, conn: Connection, path: _Path) -> None:
        path.since_challenge = 0
        self.counters["secure mode: path challenges sent"] += 1
        self._send_control(conn, _PATH_CHALLENGE, path.challenge)

    def _send_control(self, conn: Connection, kind: int, token: bytes) -> None:
        """A sealed segment of our own that the peer's secure layer consumes: the
        connection never sees it, so its ACK fields cannot count as duplicate ACKs."""
        option = _PATH_TAG + bytes((kind,)) + token + b"\x01\x01\x01"
        header = wire.build_fast(conn.local_port, conn.remote_port,
                                 conn.snd_max & 0xFFFFFFFF, conn.rcv_nxt & 0xFFFFFFFF,
                                 _ACK, 0, option)
        sealed = self.seal(conn, header)
        if sealed is not None:
            self._send(sealed, conn.peer)

    def _path_control(self, conn: Connection, opened: bytes) -> bytes | None:
        """Consume a path challenge (answer it) or response (prove the path)."""
        found = _path_option(opened)
        if found is None:
            return opened
        kind, token = found
        if kind == _PATH_CHALLENGE:
            self._send_control(conn, _PATH_RESPONSE, token)
        elif kind == _PATH_RESPONSE:
            path = self.paths.get(conn)
            if path is not None and path.addr == conn.peer and token == path.challenge:
                del self.paths[conn]
                proved = self.validated.setdefault(conn, [])
                proved.append(path.addr)
                del proved[:-VALIDATED_KEEP]
                self.counters["secure mode: paths validated"] += 1
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
                    self.drop("SYN+ACK without a handshake (simultaneous open)")
                    return None
                msg2 = responder.write_msg2(header)
                if responder.session is not None and conn not in self.sessions:
                    self.sessions[conn] = responder.session
                return header + msg2
            initiator = self.initiators.get(conn)
            if initiator is None:
                return None
            pending = self.connecting.setdefault(
                conn, _Connecting(int.from_bytes(header[4:8], "big")))
            pending.syns += 1
            msg1 = initiator.write_msg1(header)
            pending.syn = (header, msg1)
            if pending.cookie is not None:
                header = _with_cookie(header, pending.cookie) or header
            return header + msg1
        session = self.sessions.get(conn)
        if session is None:
            self.drop("no session to seal with")
            return None
        path = self.paths.get(conn)
        if path is not None and path.addr == conn.peer and path.sent + len(datagram) \
                + crypto.COUNTER_OPTION_LEN + crypto.TAGLEN > AMPLIFICATION * path.received:
            # as if lost: the connection retransmits once the path is proved
            self.counters["secure mode: unproved path: 3x limit"] += 1
            return None
        try:
            sealed = session.seal(datagram)
        except crypto.SecureError as exc:
            self.drop(exc.reason)
            return None
        if path is not None and path.addr == conn.peer:
            path.sent += len(sealed)
        return sealed

    def forget(self, conn: Connection) -> None:
        self.initiators.pop(conn, None)
        self.connecting.pop(conn, None)
        self.validated.pop(conn, None)
        self.paths.pop(conn, None)
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
