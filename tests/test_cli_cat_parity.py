"""`utcp cat`'s netcat/socat options: -k (keep listening), --bind (peer to peer), -u / -U.

Subprocesses on loopback, as tests/test_cli.py; every wait has a generous timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import (
    HOST,
    TIMEOUT,
    Proc,
    background,
    free_port,
    run_utcp,
    sha256_file,
    usage_error,
    utcp_argv,
)


def test_keep_open_serves_one_client_after_another(tmp_path: Path) -> None:
    """-k: three clients in turn, while the listener's stdin stays open (a terminal)."""
    port = free_port()
    got = tmp_path / "got.bin"
    pieces = [os.urandom(200_000) for _ in range(3)]
    with got.open("wb") as sink, background(
            utcp_argv("cat", "-v", "-k", "-l", f"{HOST}:{port}"),
            stdin=subprocess.PIPE, stdout=sink) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        for piece in pieces:
            client = run_utcp("cat", HOST, str(port), input=piece)
            assert client.returncode == 0, client.stderr.decode()
            assert client.stdout == b""
        assert listener.popen.poll() is None, listener.output()  # still listening
    assert got.read_bytes() == b"".join(pieces)
    assert not any("Traceback" in line for line in listener.lines["stderr"])


def test_keep_open_hands_stdin_to_the_clients(tmp_path: Path) -> None:
    """The listener's stdin goes to the first client; once it has ended, later clients
    get an immediate end of stream, and the listener goes on listening."""
    port = free_port()
    lines = [os.urandom(30).hex() for _ in range(2000)]
    source = tmp_path / "source.txt"
    source.write_text("".join(f"{line}\n" for line in lines))
    with source.open("rb") as src, background(
            utcp_argv("cat", "-v", "-k", "-l", f"{HOST}:{port}"),
            stdin=src) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        # the first client keeps its side open until it has all of the listener's stdin
        with background(utcp_argv("cat", HOST, str(port)), stdin=subprocess.PIPE) as first:
            first.wait_for(lines[-1])
            assert first.popen.stdin is not None
            first.popen.stdin.close()
            assert first.wait(TIMEOUT) == 0, first.output()
        assert first.lines["stdout"] == lines
        second = run_utcp("cat", HOST, str(port), input=b"later")
        assert second.returncode == 0, second.stderr.decode()
        assert second.stdout == b""  # stdin has ended: nothing is left to send
        assert listener.popen.poll() is None, listener.output()
    assert listener.lines["stdout"] == ["later"]


def test_without_keep_open_the_listener_still_serves_one() -> None:
    port = free_port()
    with background(utcp_argv("cat", "-v", "-l", f"{HOST}:{port}")) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        client = run_utcp("cat", HOST, str(port), input=b"once")
        assert client.returncode == 0, client.stderr.decode()
        assert listener.wait() == 0, listener.output()
    assert listener.lines["stdout"] == ["once"]


def test_bind_lets_two_peers_connect_to_each_other(tmp_path: Path) -> None:
    """--bind: both sides bind a port and connect to the other's (simultaneous open)."""
    port_a, port_b = free_port(), free_port()
    while port_b == port_a:
        port_b = free_port()
    data_a, data_b = tmp_path / "a.bin", tmp_path / "b.bin"
    data_a.write_bytes(os.urandom(1 << 20))
    data_b.write_bytes(os.urandom(512 << 10))
    got_a, got_b = tmp_path / "got_a.bin", tmp_path / "got_b.bin"
    with data_a.open("rb") as src_a, data_b.open("rb") as src_b, \
            got_a.open("wb") as sink_a, got_b.open("wb") as sink_b:
        a = Proc(utcp_argv("cat", "-v", "--bind", f"{HOST}:{port_a}", HOST, str(port_b)),
                 stdin=src_a, stdout=sink_a)
        try:
            b = Proc(utcp_argv("cat", "--bind", f"{HOST}:{port_b}", HOST, str(port_a)),
                     stdin=src_b, stdout=sink_b)
            try:
                assert b.wait(TIMEOUT) == 0, b.output()
                assert a.wait(TIMEOUT) == 0, a.output()
            finally:
                b.stop()
        finally:
            a.stop()
    # each peer's stdout is what the other read from its stdin
    assert sha256_file(got_a) == sha256_file(data_b)
    assert sha256_file(got_b) == sha256_file(data_a)
    # and A spoke from the port it bound, to B's
    assert any(f"conn={HOST}:{port_b}" in line for line in a.lines["stderr"]), a.output()


def test_bind_port_only_binds_every_address() -> None:
    """--bind PORT (no host) binds the port on all addresses, like nc -p."""
    port = free_port()
    # free on every address (wildcard bind), not only 127.0.0.1: other loopback
    # addresses (127.0.0.x) may hold the same number
    local = port
    while local == port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("0.0.0.0", 0))
            local = probe.getsockname()[1]
    with background(utcp_argv("cat", "-v", "-l", f"{HOST}:{port}")) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        client = run_utcp("cat", "--bind", str(local), HOST, str(port), input=b"hi")
        assert client.returncode == 0, client.stderr.decode()
        assert listener.wait() == 0, listener.output()
    assert any(f"conn={HOST}:{local}" in line for line in listener.lines["stderr"]), \
        listener.output()


def test_send_only_drops_what_arrives(tmp_path: Path) -> None:
    """-u (socat's): stdin to the connection; what the peer sends is not printed."""
    port = free_port()
    got = tmp_path / "got.bin"
    payload = os.urandom(256 << 10)
    with got.open("wb") as sink, background(
            utcp_argv("cat", "-v", "-l", f"{HOST}:{port}"),
            stdin=subprocess.PIPE, stdout=sink) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        assert listener.popen.stdin is not None
        listener.popen.stdin.write(b"the listener talks back\n")
        listener.popen.stdin.close()
        client = run_utcp("cat", "-u", HOST, str(port), input=payload)
        assert client.returncode == 0, client.stderr.decode()
        assert client.stdout == b""
        assert listener.wait() == 0, listener.output()
    assert got.read_bytes() == payload


def test_recv_only_does_not_wait_for_stdin(tmp_path: Path) -> None:
    """-U: the connection to stdout; stdin (here a pipe that never ends) is not read."""
    port = free_port()
    payload = os.urandom(256 << 10)
    source, got = tmp_path / "source.bin", tmp_path / "got.bin"
    source.write_bytes(payload)
    with source.open("rb") as src, got.open("wb") as sink, background(
            utcp_argv("cat", "-v", "-l", f"{HOST}:{port}"), stdin=src) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        with background(utcp_argv("cat", "-U", HOST, str(port)),
                        stdin=subprocess.PIPE, stdout=sink) as client:
            assert client.wait(TIMEOUT) == 0, client.output()
            assert client.popen.stdin is not None and not client.popen.stdin.closed
        assert listener.wait() == 0, listener.output()
    assert got.read_bytes() == payload
    # the listener got our FIN at once, and nothing before it
    assert listener.lines["stdout"] == []


@pytest.mark.parametrize("args", [["-k", HOST, "9"], ["--bind", "9000", "-l", "9001"],
                                  ["-u", "-U", HOST, "9"]])
def test_cat_option_misuse_is_a_usage_error(args: list[str]) -> None:
    usage_error(run_utcp("cat", *args), "cat")


def test_one_way_pair_ends_with_a_terminal_on_the_listeners_stdin(tmp_path: Path) -> None:
    """The documented pair: `cat -U -l PORT > file` and `cat -u HOST PORT < file` both
    end when the data is across, though the listener's stdin never ends."""
    port = free_port()
    payload = os.urandom(512 << 10)
    got = tmp_path / "got.bin"
    with got.open("wb") as sink, background(
            utcp_argv("cat", "-v", "-U", "-l", f"{HOST}:{port}"),
            stdin=subprocess.PIPE, stdout=sink) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        sender = run_utcp("cat", "-u", HOST, str(port), input=payload)
        assert sender.returncode == 0, sender.stderr.decode()
        assert listener.wait() == 0, listener.output()
    assert got.read_bytes() == payload
