"""A lossy, rate-limited link: two namespaces joined by a veth pair.

    ns A  veth0 10.78.0.1/24  <---- veth ---->  veth0 10.78.0.2/24  ns B

Each end shapes what it sends with tbf (the rate) and drops what it receives with
nftables (`numgen random mod 100 < N drop`), so both directions see the same random
loss, packet by packet: GRO, GSO and TSO are off on the veth, or one drop would take a
whole merged burst. No netem: the only delay is tbf's queue. Used by
tests/interop/test_link.py and by benchmarks/link.py. Everything lives inside the two
namespaces and goes with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import socket
import struct
from collections.abc import Iterator

from tests.interop.netns import Netns

A_IP = "10.78.0.1"
B_IP = "10.78.0.2"
DEV = "veth0"
TABLE = "utcp_link"

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO = 0x1B, 0x37
ETHTOOL_GFEATURES, ETHTOOL_SFEATURES = 0x3A, 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
# Off on the veth, so that every datagram or segment crosses it (and nftables) alone.
OFFLOADS_OFF = ("rx-gro", "tx-generic-segmentation", "tx-tcp-segmentation",
                "tx-tcp6-segmentation", "tx-udp-segmentation")


def _ethtool(sock: socket.socket, dev: str, buf: bytearray) -> None:
    """One SIOCETHTOOL call; `buf` is the command's struct, filled in place."""
    data = (ctypes.c_char * len(buf)).from_buffer(buf)
    ifreq = struct.pack("16sP", dev.encode(), ctypes.addressof(data))
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    finally:
        del data


def set_features_off(ns: Netns, dev: str, names: tuple[str, ...] = OFFLOADS_OFF) -> None:
    """`ethtool -K dev <name> off ...` through the ioctl (no ethtool binary needed).

    Without this, veth's GRO merges consecutive datagrams, and UDP GSO or TSO sends 64 KiB
    super-packets, so one random drop in nftables would take out a burst of segments.
    """
    with ns.inside():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        info = bytearray(struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
        _ethtool(sock, dev, info)
        count = struct.unpack_from("I", info, 16)[0]
        strings = bytearray(struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count))
        strings += bytes(count * ETH_GSTRING_LEN)
        _ethtool(sock, dev, strings)
        feature_names = [bytes(strings[12 + i * ETH_GSTRING_LEN:12 + (i + 1) * ETH_GSTRING_LEN])
                         .split(b"\0")[0].decode() for i in range(count)]
        blocks = (count + 31) // 32
        valid = [0] * blocks
        for name in names:
            if name in feature_names:
                i = feature_names.index(name)
                valid[i // 32] |= 1 << (i % 32)
        sfeatures = bytearray(struct.pack("II", ETHTOOL_SFEATURES, blocks))
        for v in valid:
            sfeatures += struct.pack("II", v, 0)  # valid mask, requested = off
        _ethtool(sock, dev, sfeatures)
        gfeatures = bytearray(struct.pack("II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks))
        _ethtool(sock, dev, gfeatures)
        for b in range(blocks):
            active = struct.unpack_from("IIII", gfeatures, 8 + 16 * b)[2]
            if active & valid[b]:
                on = [feature_names[b * 32 + j] for j in range(32) if active & valid[b] >> j & 1]
                raise RuntimeError(f"could not turn off {on} on {dev} in {ns.name}")


class Link:
    def __init__(self, a: Netns, b: Netns, rate: str) -> None:
        self.a = a
        self.b = b
        self.rate = rate
        self.loss = 0

    @classmethod
    @contextlib.contextmanager
    def create(cls, *, rate: str = "100mbit", loss: int = 0,
               tbf_latency: str = "25ms") -> Iterator[Link]:
        with Netns.create("a") as a, Netns.create("b") as b:
            link = cls(a, b, rate)
            a.ip("link", "add", DEV, "type", "veth", "peer", "name", DEV, "netns", b.name)
            for ns, addr in ((a, A_IP), (b, B_IP)):
                ns.ip("addr", "add", f"{addr}/24", "dev", DEV)
                set_features_off(ns, DEV)
                ns.ip("link", "set", DEV, "up")
                # burst: a few full-sized packets (GSO packets larger than this are split)
                ns.exec("tc", "qdisc", "add", "dev", DEV, "root", "tbf", "rate", rate,
                        "burst", "32kb", "latency", tbf_latency)
                ns.nft(f"""
                    table inet {TABLE} {{
                      chain input {{
                        type filter hook input priority 0; policy accept;
                      }}
                    }}
                """)
            link.set_loss(loss)
            yield link

    def set_loss(self, percent: int) -> None:
        """Random drop of `percent` % of the IP packets arriving at each end."""
        if not 0 <= percent < 100:
            raise ValueError(f"loss must be 0..99 %, not {percent}")
        for ns in (self.a, self.b):
            rule = (f'add rule inet {TABLE} input iifname "{DEV}" '
                    f"numgen random mod 100 < {percent} counter drop\n" if percent else "")
            ns.nft(f"flush chain inet {TABLE} input\n{rule}")
        self.loss = percent

    def dropped(self) -> int:
        """Packets the loss rules dropped so far, both ends together."""
        total = 0
        for ns in (self.a, self.b):
            out = ns.exec("nft", "-j", "list", "chain", "inet", TABLE, "input").stdout
            for item in json.loads(out).get("nftables", []):
                for expr in item.get("rule", {}).get("expr", []):
                    if "counter" in expr:
                        total += int(expr["counter"]["packets"])
        return total
