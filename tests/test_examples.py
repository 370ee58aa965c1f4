"""Every program in examples/ run as a subprocess on loopback, its output checked.

Servers run in the background and are killed in `finally` (see `background`); each wait
has a generous timeout. The aiohttp example is skipped when aiohttp is not installed
(`pip install -e '.[examples]'`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.test_cli import HOST, ROOT, TIMEOUT, Proc, background, free_port, utcp_argv
from utcp.aio.port import route_mss

EXAMPLES = ROOT / "examples"


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def run_example(name: str, *args: str, timeout: float = TIMEOUT,
                ) -> subprocess.CompletedProcess[str]:
    proc = Proc(example(name, *args))
    try:
        rc = proc.wait(timeout)
    finally:
        proc.stop()
    return subprocess.CompletedProcess(proc.argv, rc, "\n".join(proc.lines["stdout"]),
                                       "\n".join(proc.lines["stderr"]))


def no_traceback(*procs: Proc) -> None:
    for proc in procs:
        assert not any("Traceback" in line for line in proc.lines["stderr"]), proc.output()


# ---------------------------------------------------------------------- echo, demo

def test_echo_server_and_client() -> None:
    port = free_port()
    with background(example("echo_server.py", str(port))) as server:
        server.wait_for(rf"utcp echo server on udp port {port}")
        result = run_example("echo_client.py", str(port), "ping over utcp")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ping over utcp"
        assert re.search(r"state (FIN_WAIT_2|TIME_WAIT|CLOSED), srtt \d+", result.stderr)
        server.wait_for(r"done, 14 bytes echoed")
    no_traceback(server)


def test_loopback_demo() -> None:
    result = run_example("loopback_demo.py", "2")
    assert result.returncode == 0, result.stderr
    assert re.search(r"echoed 2 MiB through udp port \d+ in .* sha256 ok", result.stdout)
    assert "client: state" in result.stdout


# ---------------------------------------------------------------------- chat

def say(proc: Proc, line: str) -> None:
    assert proc.popen.stdin is not None
    proc.popen.stdin.write(line.encode() + b"\n")
    proc.popen.stdin.flush()


def hang_up(proc: Proc) -> None:
    assert proc.popen.stdin is not None
    proc.popen.stdin.close()


def test_chat() -> None:
    port = free_port()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(background(example("chat_server.py", str(port))))
        server.wait_for(rf"chat server on udp 127\.0\.0\.1 port {port}")
        alice = stack.enter_context(background(example("chat_client.py", str(port), "alice"),
                                               stdin=subprocess.PIPE))
        alice.wait_for(r"^\* welcome alice; here: nobody yet$")
        bob = stack.enter_context(background(example("chat_client.py", str(port), "bob"),
                                             stdin=subprocess.PIPE))
        bob.wait_for(r"^\* welcome bob; here: alice$")
        alice.wait_for(r"^\* bob joined$")
        say(alice, "hello bob")
        bob.wait_for(r"^alice: hello bob$")
        say(bob, "hi alice")
        say(bob, "how is the weather over UDP?")
        alice.wait_for(r"^bob: how is the weather over UDP\?$")
        hang_up(alice)  # EOF: alice half-closes; the server says goodbye and closes
        assert alice.wait() == 0, alice.output()
        bob.wait_for(r"^\* alice left$")
        hang_up(bob)
        assert bob.wait() == 0, bob.output()
        server.wait_for(r"^bob left$")
        assert server.popen.poll() is None
        # nobody hears their own lines
        assert "bob: hi alice" in alice.lines["stdout"]
        assert not any(line.startswith("alice:") for line in alice.lines["stdout"])
        assert not any(line.startswith("bob:") for line in bob.lines["stdout"])
    no_traceback(server, alice, bob)


def test_chat_client_ends_cleanly_when_the_server_is_stopped() -> None:
    """Ctrl-C on the server with a client connected and typing nothing: the client reads
    EOF and exits 0, its stdin thread still blocked in a read (it used to abort the
    interpreter at exit: "Fatal Python error: _enter_buffered_busy")."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # inherited by the server
        pytest.skip("SIGINT is ignored in this process (a background job?): no Ctrl-C")
    port = free_port()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(background(example("chat_server.py", str(port))))
        server.wait_for(rf"chat server on udp 127\.0\.0\.1 port {port}")
        client = stack.enter_context(background(example("chat_client.py", str(port), "zed"),
                                                stdin=subprocess.PIPE))
        client.wait_for(r"^\* welcome zed; here: nobody yet$")
        server.popen.send_signal(signal.SIGINT)
        assert server.wait() == 0, server.output()
        assert client.wait() == 0, client.output()
        assert not any("Fatal Python error" in line for line in client.lines["stderr"])
    no_traceback(server, client)


# ---------------------------------------------------------------------- file transfer

def test_file_transfer(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(3 << 20))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    with background(example("file_transfer.py", "recv", "--host", HOST, "--port", str(port),
                            "--dir", str(inbox), "--once")) as receiver:
        receiver.wait_for(rf"receiving into .* on udp 127\.0\.0\.1 port {port}")
        sent = run_example("file_transfer.py", "send", HOST, str(port), str(source))
        assert sent.returncode == 0, sent.stderr
        assert re.search(r"sent data\.bin: 3145728 bytes in .* MB/s\), \d+ segments "
                         r"retransmitted, sha256 ok", sent.stdout), sent.stdout
        assert receiver.wait() == 0, receiver.output()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert receiver.lines["stdout"][-1] == f"received data.bin: 3145728 bytes, sha256 {digest}"
    assert (inbox / "data.bin").read_bytes() == source.read_bytes()
    assert not (inbox / "data.bin.part").exists()
    # the progress bar (stderr is not a terminal here: one line per quarter)
    assert re.search(r"send data\.bin \[#{30}\] 100%  3\.1/3\.1 MB", sent.stderr), sent.stderr
    assert any("recv data.bin [" in line and "100%" in line
               for line in receiver.lines["stderr"]), receiver.output()
    no_traceback(receiver)


def test_file_transfer_to_nobody_fails_cleanly(tmp_path: Path) -> None:
    source = tmp_path / "x.bin"
    source.write_bytes(b"x")
    result = run_example("file_transfer.py", "send", HOST, str(free_port()), str(source))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("file_transfer: ")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- aiohttp over utcp

def test_aiohttp_application_over_utcp() -> None:
    pytest.importorskip("aiohttp", reason="aiohttp not installed: pip install -e '.[examples]'")
    port = free_port()
    with background(example("http_server.py", str(port))) as server:
        server.wait_for(rf"aiohttp over utcp on udp 127\.0\.0\.1 port {port}")
        index = run_example("http_get.py", str(port), "/")
        assert index.returncode == 0, index.stderr
        assert index.stdout.startswith("aiohttp over utcp")
        assert index.stderr.splitlines()[0] == "HTTP/1.1 200 OK"
        assert re.search(r"^Server: Python/\d+\.\d+ aiohttp/", index.stderr, re.M), index.stderr

        hello = run_example("http_get.py", str(port), "/hello/utcp")
        assert (hello.returncode, hello.stdout) == (0, "hello, utcp")

        echo = run_example("http_get.py", str(port), "/echo", "--data", "round trip")
        assert (echo.returncode, echo.stdout) == (0, "round trip")

        stats = run_example("http_get.py", str(port), "/stats")
        assert stats.returncode == 0, stats.stderr
        info = json.loads(stats.stdout)
        assert info["state"] == "ESTABLISHED" and info["peer"][0] == HOST
        # on loopback a connection starts at the route's size, as TCP does there
        assert info["stats"]["mss"] == route_mss(socket.AF_INET, HOST)
        assert info["stats"]["bytes_received"] > 0

        missing = run_example("http_get.py", str(port), "/no/such/page")
        assert missing.returncode == 1
        assert missing.stderr.splitlines()[0] == "HTTP/1.1 404 Not Found"

        # and a plain TCP client reaches it through `utcp tunnel`
        entry = free_port(socket.SOCK_STREAM)
        with background(utcp_argv("tunnel", "--listen", f"{HOST}:{entry}",
                                  "--remote", f"{HOST}:{port}")) as tunnel:
            tunnel.wait_for(r"listening on tcp")
            with urllib.request.urlopen(f"http://{HOST}:{entry}/hello/tcp",
                                        timeout=TIMEOUT) as response:
                assert response.read() == b"hello, tcp\n"
        assert server.popen.poll() is None
    no_traceback(server, tunnel)


# ---------------------------------------------------------------------- peer to peer

def test_peer_to_peer_through_a_rendezvous_server() -> None:
    rv_port = free_port()
    with contextlib.ExitStack() as stack:
        rv = stack.enter_context(background(example("rendezvous.py", "--host", HOST,
                                                    "--port", str(rv_port))))
        rv.wait_for(rf"rendezvous on udp 127\.0\.0\.1 port {rv_port}")
        peers = {}
        for name in ("alice", "bob"):
            peers[name] = stack.enter_context(background(example(
                "p2p_peer.py", HOST, str(rv_port), "room-42", "--name", name,
                "--bind", HOST)))
        for proc in peers.values():
            assert proc.wait() == 0, proc.output()
        ports = {}
        for name, proc in peers.items():
            other = "bob" if name == "alice" else "alice"
            out = "\n".join(proc.lines["stdout"])
            ports[name] = int(re.search(r"registering from udp 127\.0\.0\.1:(\d+)",
                                        out).group(1))  # type: ignore[union-attr]
            assert f"{name}: peer says: hello from {other}" in out, out
        for name, proc in peers.items():
            other = "bob" if name == "alice" else "alice"
            out = "\n".join(proc.lines["stdout"])
            # the server told each the other's address: the port it registered from
            assert f"{name}: peer is at 127.0.0.1:{ports[other]}; connecting" in out, out
        rv.wait_for(rf"room room-42: 127\.0\.0\.1:{ports['alice']} registered")
        rv.wait_for(rf"room room-42: 127\.0\.0\.1:{ports['bob']} registered")
        paths = [line for proc in peers.values() for line in proc.lines["stdout"]
                 if ": connected: " in line]
        assert len(paths) == 2
        # nobody listened: both began with SYN_SENT, and at least one received the other's
        # SYN while in SYN_SENT (simultaneous open: SYN_SENT -> SYN_RCVD)
        assert all("CLOSED -> SYN_SENT -> " in p and "LISTEN" not in p for p in paths), paths
        assert any("SYN_SENT -> SYN_RCVD -> ESTABLISHED" in p for p in paths), paths
    no_traceback(rv, *peers.values())
