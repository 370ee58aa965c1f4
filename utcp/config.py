"""`utcp.Config`: every tunable in one frozen, validated dataclass (docs/protocol.md §1)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Final

CONGESTION_ALGORITHMS: Final = ("newreno", "cubic")


@dataclass(frozen=True, slots=True)
class Config:
    """Defaults suit a connection across the internet; tests shrink the timers.

    Times are seconds (float), sizes bytes (int).
    """

    msl: float = 30.0                  # TIME_WAIT lasts 2 * msl (Linux: 60 s)
    syn_retries: int = 6               # SYN retransmissions before connect fails
    max_retransmissions: int = 15      # data/FIN timeouts in a row before TimeoutError
    synack_retries: int = 2            # SYN+ACK retransmissions before the entry is dropped:
    #   with the first, 3 SYN+ACKs per SYN, the most the 3x anti-amplification rule allows
    rto_initial: float = 1.0           # RFC 6298 §2.1
    rto_min: float = 0.2               # Linux's floor; RFC 6298 suggests 1 s
    rto_max: float = 60.0              # RFC 6298 §2.5
    mss: int = 1400                    # payload bytes per segment to start with (safe on
    #   any path); with pmtu_probing the size grows to what the path carries (a
    #   loopback peer starts at the route's size, falling back if it does not pass)
    sack: bool = True                  # selective acknowledgments (RFC 2018, RFC 6675)
    timestamps: bool = True            # RFC 7323: RTT samples, PAWS; 12 bytes a segment
    pmtu_probing: bool = True          # RFC 8899 probing up to the route's MTU; False pins mss
    pacing: bool = True                # spread bursts at about cwnd / srtt (utcp.pacing)
    recv_buffer: int = 4 * 1024 * 1024  # receive window (bytes unread + in flight to us)
    send_buffer: int = 4 * 1024 * 1024  # bytes in flight at most
    idle_timeout: float | None = None  # close gracefully after this long with no segment
    keepalive_interval: float | None = 25.0  # idle this long (nothing heard) -> probe;
    #   under the ~30 s after which many NATs forget a quiet UDP mapping. None = off
    keepalive_probe_interval: float = 5.0  # then between unanswered probes (at most the
    #   above): with 6 probes a silent dead peer is noticed after 25 + 6 x 5 = 55 s
    keepalive_probes: int = 6          # unanswered probes before the connection is dropped
    user_timeout: float | None = None  # unacknowledged data this old ends the connection
    fin_timeout: float | None = 60.0   # an orphan (the application closed) in FIN_WAIT_2
    #   ends this long after it got there (Linux's tcp_fin_timeout). None = never
    congestion: str = "newreno"
    ack_delay: float = 0.04            # delayed-ACK timer (RFC 9293 §3.8.6.3: < 0.5 s)
    initial_cwnd_segments: int = 10    # RFC 6928
    max_ooo_segments: int = 1024       # out-of-order pieces held per connection at most
    #   (raised to 2 * recv_buffer // mss, so a full window of segments always fits)
    pcap: str | None = None            # write every segment sent and received to this file
    # secure mode (docs/secure-mode.md): a server needs secret_key, a client server_key
    secret_key: str | None = None      # our static X25519 private key, base64
    server_key: str | None = None      # client: the server's public key, pinned
    allowed_keys: tuple[str, ...] | None = None  # server: accept only these client keys
    # bounded resources (per endpoint, i.e. per UDP socket)
    max_connections: int = 100_000     # connections of every state, TIME_WAIT included
    max_reassembly_bytes: int = 64 * 1024 * 1024  # out-of-order pieces held in all,
    #   as real memory (payload + ~184 bytes a piece)
    max_buffer_memory: int = 1024 * 1024 * 1024  # send + receive buffers of all
    #   connections, as real memory; under pressure (2/3) windows shrink, at it data drops

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name))
        if self.allowed_keys is not None and not isinstance(self.allowed_keys, tuple):
            object.__setattr__(self, "allowed_keys", tuple(self.allowed_keys))
        if self.allowed_keys is not None and self.secret_key is None:
            # else the endpoint would not be in secure mode at all: a plaintext server
            # that accepts everyone, the opposite of what the allow list asks for
            raise ValueError("Config.allowed_keys needs Config.secret_key (the server's"
                             " private key): without it the server is not in secure mode")
        if self.rto_min > self.rto_max:
            raise ValueError("rto_min must not exceed rto_max")
        if self.congestion not in CONGESTION_ALGORITHMS:
            raise ValueError(f"unknown congestion algorithm {self.congestion!r};"
                             f" choose one of {', '.join(CONGESTION_ALGORITHMS)}")

    @property
    def secure(self) -> bool:
        """Secure mode: a client that pins a server key, or a server that has a key."""
        return self.server_key is not None or self.secret_key is not None

    def check_server(self) -> None:
        """Raise ValueError if a server (listening endpoint) with this config would not
        be the secure server it looks like: `server_key` alone would listen with a
        random key no client pins, and a `server_key` that is not `secret_key`'s public
        key would be pinned by clients that then cannot connect."""
        if not self.secure:
            return
        if self.secret_key is None:
            raise ValueError("a secure server needs Config.secret_key (its private key);"
                             " Config.server_key is what clients pin")
        if self.server_key is not None:
            from utcp import crypto  # late: crypto pulls in the cryptography package

            if crypto.public_key_of(self.secret_key) != self.server_key:
                raise ValueError("Config.server_key is not the public key of"
                                 " Config.secret_key: clients pinning it could not connect"
                                 " to this server")

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_FLOAT_POSITIVE: Final = {"msl", "rto_initial", "rto_min", "rto_max", "ack_delay",
                   "keepalive_probe_interval"}
_FLOAT_OPTIONAL: Final = {"idle_timeout", "keepalive_interval", "user_timeout",
                           "fin_timeout"}
_INT_RANGES: Final = {
    "syn_retries": (0, 255),
    "synack_retries": (0, 255),
    "max_retransmissions": (1, 255),
    "keepalive_probes": (1, 255),
    "mss": (64, 65495),  # the largest payload of one IPv4 UDP datagram less our header
    "recv_buffer": (1024, 1 << 30),  # window scale 14 allows up to 2**30
    "send_buffer": (1024, 1 << 30),
    "initial_cwnd_segments": (1, 1000),
    "max_ooo_segments": (1, 1 << 20),
    "max_connections": (1, 1 << 24),
    "max_reassembly_bytes": (0, 1 << 40),
    "max_buffer_memory": (1 << 20, 1 << 44),
}


def _check_key(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Config.{name} must be a base64 key string, not {value!r}")
    from utcp import crypto  # late: crypto pulls in the cryptography package

    try:
        if name == "secret_key":
            crypto.load_private(value)
        else:
            crypto.load_public(value)
    except ValueError as exc:
        raise ValueError(f"Config.{name}: {exc}") from None


def _check(name: str, value: object) -> None:
    if name in _FLOAT_POSITIVE or (name in _FLOAT_OPTIONAL and value is not None):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"Config.{name} must be a number of seconds, not {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"Config.{name} must be a positive finite number, not {value!r}")
    elif name in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Config.{name} must be an int, not {value!r}")
        lo, hi = _INT_RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"Config.{name} must be within {lo}..{hi}, not {value}")
    elif name in ("pmtu_probing", "sack", "timestamps", "pacing") and \
            not isinstance(value, bool):
        raise TypeError(f"Config.{name} must be a bool, not {value!r}")
    elif name == "pcap" and value is not None and not isinstance(value, str | os.PathLike):
        raise TypeError(f"Config.pcap must be a file path or None, not {value!r}")
    elif name in ("secret_key", "server_key") and value is not None:
        _check_key(name, value)
    elif name == "allowed_keys" and value is not None:
        if isinstance(value, str) or not isinstance(value, tuple | list | frozenset | set):
            raise TypeError("Config.allowed_keys must be a tuple of base64 public keys")
        for key in value:
            _check_key(name, key)
    elif name == "congestion" and not isinstance(value, str):
        raise TypeError(f"Config.congestion must be a str, not {value!r}")
