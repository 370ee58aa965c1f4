"""QUIC with qh3 (aioquic's fork with a Rust core, GSO/GRO and path-MTU probing)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._quic import LARGEST_UDP_PAYLOAD, Quic

KEY = "qh3"
NAME = "qh3"
_quic = Quic("qh3", max_datagram=LARGEST_UDP_PAYLOAD, probing=True)
missing = _quic.missing
settings = _quic.settings
serve = _quic.serve
connect = _quic.connect
__all__: list[Any] = ["KEY", "NAME", "connect", "missing", "serve", "settings"]
