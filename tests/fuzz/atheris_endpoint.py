"""Optional coverage-guided fuzzing of a live endpoint with atheris, run by hand:

    pip install atheris
    python -m tests.fuzz.atheris_endpoint [corpus_dir] [-atheris_runs=1000000]

Two pairs of endpoints, one plaintext and one secure, keep connections open and moving
data. Each input is one datagram: its first byte picks the endpoint it goes to (plaintext
or secure, server or client) and where it comes from (the peer, or a stranger); the rest
is the datagram. A crash is any exception out of `receive_datagram` and friends, or, in
secure mode, any input that changes what a connection has received or acknowledged
(nothing unauthenticated may). In plaintext mode a lucky in-window forgery may reset or
feed a connection, as RFC 9293 allows; then the pair is simply built again.

pytest does not collect this file (its name does not start with ``test_``), and it
imports without atheris: tests/fuzz/test_fuzz_endpoint.py feeds `fuzz_one_input` random
bytes so that it keeps working.
"""

from __future__ import annotations

import random
import sys
from types import ModuleType

atheris: ModuleType | None
try:
    import atheris
except ImportError:  # optional: only needed to run this file as a fuzzer
    atheris = None

from tests.netsim import Address, Network  # noqa: E402
from utcp import crypto  # noqa: E402
from utcp.config import Config  # noqa: E402
from utcp.connection import Connection  # noqa: E402
from utcp.endpoint import Endpoint  # noqa: E402
from utcp.state import State  # noqa: E402

SERVER: Address = ("10.0.0.1", 1000)
CLIENT: Address = ("10.0.0.2", 2000)
STRANGER: Address = ("10.9.9.9", 4242)
_PRIV = "YXRoZXJpcyBmdXp6IGhhcm5lc3Mgc2VydmVyIGtleSE="
_PUB = crypto.public_key_of(_PRIV)
BASE = Config(msl=1.0, rto_min=0.05, rto_initial=0.2)


class Pair:
    """A server and a client endpoint in a lossless simulator, connected, always sending."""

    def __init__(self, secure: bool, seed: int) -> None:
        self.secure = secure
        self.rng = random.Random(seed)
        self.net = Network(seed)
        server_cfg = BASE.replace(secret_key=_PRIV) if secure else BASE
        client_cfg = BASE.replace(server_key=_PUB) if secure else BASE
        self.server = Endpoint(server_cfg, SERVER[1], listening=True,
                               rng=random.Random(seed + 1))
        self.client = Endpoint(client_cfg, CLIENT[1], rng=random.Random(seed + 2))
        self.net.add(SERVER, self.server)
        self.net.add(CLIENT, self.client)
        self.client_conn: Connection = self.client.connect(SERVER, self.net.now)
        self.server_conn: Connection | None = None
        self.net.run(until=self.net.now + 1.0, stop=self._accepted)
        assert self.server_conn is not None, "the pair did not connect"

    def _accepted(self) -> bool:
        if self.server_conn is None:
            self.server_conn = self.server.accept()
        return self.server_conn is not None and self.client_conn.state == State.ESTABLISHED

    @property
    def alive(self) -> bool:
        return (self.server_conn is not None and self.server_conn.state == State.ESTABLISHED
                and self.client_conn.state == State.ESTABLISHED)

    def advance(self) -> None:
        """Keep data flowing both ways, and let the simulator run a little."""
        assert self.server_conn is not None
        for conn in (self.client_conn, self.server_conn):
            conn.read()
            if conn.state == State.ESTABLISHED and conn.queued < 8192:
                conn.send(self.rng.randbytes(4096))
        self.net.run(until=self.net.now + 0.01)


def _progress(conn: Connection) -> tuple[object, ...]:
    return conn.state, conn.rcv_nxt, conn.snd_una, conn.counters.bytes_received


class Harness:
    def __init__(self) -> None:
        self.seed = 0
        self.pairs = [self._new(False), self._new(True)]
        self.datagrams = 0

    def _new(self, secure: bool) -> Pair:
        self.seed += 1
        return Pair(secure, self.seed)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        selector, datagram = data[0], data[1:]
        which = selector & 1
        pair = self.pairs[which]
        if not pair.alive:
            pair = self.pairs[which] = self._new(bool(which))
        to_server = bool(selector & 2)
        ep = pair.server if to_server else pair.client
        conn = pair.server_conn if to_server else pair.client_conn
        assert conn is not None
        source = STRANGER if selector & 4 else (CLIENT if to_server else SERVER)
        before = _progress(conn)
        ep.receive_datagram(datagram, source, pair.net.now)
        pair.net.flush()
        if pair.secure and _progress(conn) != before:
            raise AssertionError(f"secure mode: an unauthenticated datagram changed the"
                                 f" connection: {before} -> {_progress(conn)}")
        self.datagrams += 1
        if self.datagrams % 64 == 0:
            for p in self.pairs:
                p.advance()


HARNESS = Harness()


def fuzz_one_input(data: bytes) -> None:
    HARNESS.feed(data)


def main() -> int:
    if atheris is None:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    atheris.instrument_all()
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
