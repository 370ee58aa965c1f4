"""Keyed initial sequence numbers (RFC 6528: ISN = M + F(4-tuple, secret)), compiled.

Every connection makes one, the client's and the accepting server's, so F runs twice per
connection: as a method of `crypto.HandshakeSecrets` (crypto.py stays interpreted, for
its work is in `cryptography`'s C) it cost a Python frame and its bytecode each time,
about a twentieth of what the core spends on a whole connection. Here the endpoint calls
it natively with the secret's keyed MAC (`HandshakeSecrets.isn_key`); the method calls
it too, so there is one F.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

# F's input: a NUL byte (no text `HandshakeSecrets._prf` MACs for a cookie starts so,
# so no ISN input is ever a cookie's), both ports, then the peer's address as text
ISN_PORTS: Final = struct.Struct("!xHH")


def keyed_isn(key: hashlib.blake2s, peer: tuple[str, int], local_port: int,
              now: float) -> int:
    """The ISN for a connection with `peer` from `local_port` at `now`: F a MAC keyed by
    `key` (copied, never updated), M a clock of 4-microsecond ticks."""
    mac = key.copy()
    mac.update(ISN_PORTS.pack(peer[1] & 0xFFFF, local_port & 0xFFFF) + peer[0].encode())
    return (int(now * 250_000) + int.from_bytes(mac.digest(), "big")) & 0xFFFFFFFF
