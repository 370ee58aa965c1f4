"""QUIC with aioquic (pure Python over `cryptography`): no path-MTU probing of its own."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._quic import Quic

KEY = "aioquic"
NAME = "aioquic"
# aioquic 1.7 writes a STREAM frame's length as a 2-byte varint, so a frame of 16 KiB or
# more is corrupt and the receiver closes with FRAME_ENCODING_ERROR ("Unknown frame
# type"): bulk transfers fail from max_datagram_size of about 16420 up; 16384 works.
LARGEST_WORKING = 16384
_quic = Quic("aioquic", max_datagram=LARGEST_WORKING, probing=False,
             why_max="; from about 16420 up aioquic 1.7 corrupts STREAM frames")
missing = _quic.missing
settings = _quic.settings
serve = _quic.serve
connect = _quic.connect
__all__: list[Any] = ["KEY", "NAME", "connect", "missing", "serve", "settings"]
