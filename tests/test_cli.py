"""The `utcp` command (perf, tunnel, cat) run as `python -m utcp ...` subprocesses on loopback.

Every test checks the exit status and what is printed. Processes left running (servers,
tunnels, listeners) are killed in `finally`, whatever happens. Ports are found free by
binding port 0; each wait has a generous timeout so a loaded 2-core machine passes.

The helpers here (`Proc`, `run_utcp`, `free_port`) are used by tests/test_examples.py too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

import utcp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TIMEOUT = 60.0  # for any one command; none comes near it on an idle machine


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port nothing is bound to at the moment of asking (UDP unless told)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def run_utcp(*args: str, input: bytes | None = None, stdin: Any = None,
             stdout: Any = subprocess.PIPE,
             timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m utcp ARGS` to completion."""
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    return subprocess.run([sys.executable, "-m", "utcp", *args], input=input, stdin=stdin,
                          stdout=stdout, stderr=subprocess.PIPE, timeout=timeout,
                          cwd=ROOT, env=_env(), check=False)


class Proc:
    """A background process whose output lines are collected by threads as they come."""

    def __init__(self, argv: Sequence[str], *, stdin: Any = subprocess.DEVNULL,
                 stdout: Any = subprocess.PIPE, cwd: Path = ROOT) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(self.argv, stdin=stdin, stdout=stdout,
                                      stderr=subprocess.PIPE, cwd=cwd, env=_env())
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._threads = []
        for name in ("stdout", "stderr"):
            stream = getattr(self.popen, name)
            if stream is not None:
                t = threading.Thread(target=self._pump, args=(name, stream), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines[name].append(line)
            self._queue.put((name, line))
        stream.close()

    def wait_for(self, pattern: str, *, stream: str = "stdout",
                 timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line (from now or already seen) matching `pattern`."""
        regex = re.compile(pattern)
        for line in list(self.lines[stream]):
            if m := regex.search(line):
                return m
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} on {stream} of "
                                     f"{self.argv} within {timeout} s: {self.output()}")
            try:
                name, line = self._queue.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None and self._queue.empty():
                    self._join()
                    if self._queue.empty():
                        raise AssertionError(f"{self.argv} exited "
                                             f"({self.popen.returncode}) before printing "
                                             f"{pattern!r}: {self.output()}") from None
                continue
            if name == stream and (m := regex.search(line)):
                return m

    def wait(self, timeout: float = TIMEOUT) -> int:
        rc = self.popen.wait(timeout)
        self._join()
        return rc

    def _join(self) -> None:
        for t in self._threads:
            t.join(5)

    def output(self) -> str:
        return f"stdout={self.lines['stdout']!r} stderr={self.lines['stderr']!r}"

    def stop(self) -> None:
        """Kill (if still running) and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._join()


@contextlib.contextmanager
def background(argv: Sequence[str], **kwds: Any) -> Iterator[Proc]:
    proc = Proc(argv, **kwds)
    try:
        yield proc
    finally:
        proc.stop()


def utcp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "utcp", *args]


def one_error_line(result: subprocess.CompletedProcess[bytes], command: str) -> str:
    """A user error: exit 1, nothing on stdout, one line on stderr, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"utcp {command}: "), err  # every user error says which command
    assert result.stdout == b""
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[bytes], command: str) -> str:
    """A bad command line: exit 2, argparse's usage and one error line, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err, err
    assert err.startswith(f"usage: utcp {command}"), err
    last = err.splitlines()[-1]
    assert last.startswith(f"utcp {command}: error: "), err
    assert result.stdout == b""
    return last


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- perf

def test_perf_default_direction_client_sends() -> None:
    result = run_utcp("perf", "-t", "1", "-i", "0.5")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    assert re.search(r"Connecting to host 127\.0\.0\.1, port \d+ over utcp\n", out)
    assert "reverse" not in out
    assert re.search(r"\[  1\] local 127\.0\.0\.1 port \d+ connected to 127\.0\.0\.1", out)
    assert re.search(r"\[  1\]\s+0\.00-", out), out  # at least one interval line
    sender = re.search(r"\[SUM\].*sec\s+(\S+ \S+)\s+\S+ \S+\s+\d+\s+sender", out)
    receiver = re.search(r"\[SUM\].*sec\s+(\S+ \S+)\s+\S+ \S+\s+receiver", out)
    assert sender and receiver, out
    assert sender.group(1) == receiver.group(1)  # every byte sent was received
    found = re.search(r"stats \(stream 1\): mss (\d+), srtt \d+ us", out)
    assert found and int(found.group(1)) >= 1400, out  # PMTU probing may raise it


def test_perf_reverse_server_sends() -> None:
    result = run_utcp("perf", "-R", "-n", "4M")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "(reverse: server sends)" in out
    assert re.search(r"\[SUM\].*4\.00 MBytes.*receiver", out), out
    assert "sender" not in out.split("- - -")[-1]


def test_perf_parallel_four_flows() -> None:
    result = run_utcp("perf", "-P", "4", "-n", "8M")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    for i in range(1, 5):
        assert re.search(rf"\[  {i}\] local 127\.0\.0\.1 port \d+ connected", out), out
    assert re.search(r"\[SUM\]\s+0\.00-\S+\s+sec\s+8\.00 MBytes.*sender", out), out
    assert re.search(r"\[SUM\]\s+0\.00-\S+\s+sec\s+8\.00 MBytes.*receiver", out), out


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_perf_json_counts_every_byte(reverse: bool) -> None:
    nbytes = 3_000_001  # not a multiple of -P: the flows must still add up to it
    args = ["perf", "--json", "-n", str(nbytes), "-P", "3"] + (["-R"] if reverse else [])
    result = run_utcp(*args)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["start"]["parallel"] == 3
    assert report["start"]["reverse"] is reverse
    assert report["start"]["bytes"] == nbytes
    end = report["end"]
    assert end["bytes"] == nbytes
    assert end["bytes_received"] == nbytes
    assert [s["id"] for s in end["streams"]] == [1, 2, 3]
    assert sum(s["bytes"] for s in end["streams"]) == nbytes
    assert end["seconds"] > 0 and end["bits_per_second"] > 0
    # loopback may or may not lose a datagram, so the count is not known: what is, is
    # that the total is the flows' sum and that iperf3's sender block carries it
    retransmits = [s["retransmits"] for s in end["streams"]]
    assert end["retransmits"] == sum(retransmits)
    assert end["sum_sent"]["retransmits"] == (0 if reverse else end["retransmits"])
    for stream in end["streams"]:
        assert stream["mss"] >= 1400  # the base; PMTU probing raises it on loopback
        assert type(stream["retransmits"]) is int
        assert 0 <= stream["retransmits"] < stream["segments_sent"]
        assert stream["sender"]["retransmits"] == (0 if reverse else stream["retransmits"])
        assert stream["srtt"] is not None and 0 < stream["srtt"] < 1
    for interval in report["intervals"]:
        assert len(interval["streams"]) == 3


def test_perf_server_mode_then_client() -> None:
    port = free_port()
    with background(utcp_argv("perf", "-s", "-B", HOST, "-p", str(port))) as server:
        server.wait_for(rf"Server listening on udp 127\.0\.0\.1 port {port} \(utcp\)")
        forward = run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "2M", "--json")
        assert forward.returncode == 0, forward.stderr.decode()
        end = json.loads(forward.stdout)["end"]
        assert end["bytes"] == end["bytes_received"] == 2 << 20
        reverse = run_utcp("perf", "-c", HOST, "-p", str(port), "-R", "-n", "1M", "-P", "2")
        assert reverse.returncode == 0, reverse.stderr.decode()
        assert re.search(r"\[SUM\].*1\.00 MBytes.*receiver", reverse.stdout.decode())
        assert server.popen.poll() is None  # a server serves many clients
    assert "Traceback" not in "\n".join(server.lines["stderr"])


# ---------------------------------------------------------------------- secure mode

def keygen() -> tuple[str, str]:
    result = run_utcp("keygen")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split(": ")[0] for line in lines] == ["private", "public"]
    private, public = (line.split(": ", 1)[1] for line in lines)
    return private, public


def test_keygen_prints_a_fresh_pair() -> None:
    first, second = keygen(), keygen()
    assert first != second
    for key in (*first, *second):
        assert len(key) == 44 and key.endswith("=")  # 32 bytes, base64


def test_perf_secure_in_process() -> None:
    result = run_utcp("perf", "--secure", "--json", "-n", "2M")
    assert result.returncode == 0, result.stderr.decode()
    end = json.loads(result.stdout)["end"]
    assert end["bytes"] == end["bytes_received"] == 2 << 20


def test_secure_server_and_clients() -> None:
    private, public = keygen()
    _, wrong = keygen()
    port = free_port()
    with background(utcp_argv("perf", "-s", "-B", HOST, "-p", str(port),
                              "--key", private)) as server:
        server.wait_for(r"Server listening")
        ok = run_utcp("perf", "-c", HOST, "-p", str(port), "--server-key", public,
                      "-n", "1M", "--json")
        assert ok.returncode == 0, ok.stderr.decode()
        assert json.loads(ok.stdout)["end"]["bytes_received"] == 1 << 20
        # a client that pins another key is refused, with the likely cause in one line
        line = one_error_line(run_utcp("perf", "-c", HOST, "-p", str(port), "--server-key",
                                       wrong, "-n", "1M"), "perf")
        assert line.startswith(f"utcp perf: cannot connect to 127.0.0.1:{port}: connection"
                               " refused"), line
        assert "server_key" in line
        # a plain client is refused too
        line = one_error_line(run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "1M"),
                              "perf")
        assert "connection refused" in line
        assert server.popen.poll() is None
    assert not any("Traceback" in line for line in server.lines["stderr"])


def test_bad_key_is_one_line() -> None:
    line = usage_error(run_utcp("perf", "--server-key", "garbage", "-n", "1"), "perf")
    assert line.startswith("utcp perf: error: Config.server_key:"), line


# ---------------------------------------------------------------------- tunnel

def _wait_tcp_listening(port: int, proc: Proc, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.argv} exited: {proc.output()}")
        if time.monotonic() > end:
            raise AssertionError(f"nothing listens on tcp {port} after {timeout} s")
        time.sleep(0.05)


def test_tunnel_carries_http(tmp_path: Path) -> None:
    """curl -> tcp -> tunnel (--remote) -> utcp -> tunnel (--target) -> tcp -> http.server."""
    body = os.urandom(1 << 20)
    (tmp_path / "blob.bin").write_bytes(body)
    (tmp_path / "hello.txt").write_text("hello through the tunnel\n")
    http_port, utcp_port, entry_port = (free_port(socket.SOCK_STREAM), free_port(),
                                        free_port(socket.SOCK_STREAM))
    with contextlib.ExitStack() as stack:
        web = stack.enter_context(background(
            [sys.executable, "-m", "http.server", "--bind", HOST, str(http_port),
             "--directory", str(tmp_path)]))
        _wait_tcp_listening(http_port, web)
        far = stack.enter_context(background(utcp_argv(
            "tunnel", "--listen", f"{HOST}:{utcp_port}", "--target", f"{HOST}:{http_port}")))
        far.wait_for(rf"utcp tunnel: listening on udp \(utcp\) 127\.0\.0\.1 port {utcp_port}")
        near = stack.enter_context(background(utcp_argv(
            "tunnel", "--listen", f"{HOST}:{entry_port}", "--remote", f"{HOST}:{utcp_port}")))
        near.wait_for(rf"utcp tunnel: listening on tcp 127\.0\.0\.1 port {entry_port}")

        base = f"http://{HOST}:{entry_port}"
        with urllib.request.urlopen(f"{base}/hello.txt", timeout=TIMEOUT) as response:
            assert response.status == 200
            assert response.read() == b"hello through the tunnel\n"
        with urllib.request.urlopen(f"{base}/blob.bin", timeout=TIMEOUT) as response:
            assert hashlib.sha256(response.read()).digest() == hashlib.sha256(body).digest()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/no-such-file", timeout=TIMEOUT)
        assert missing.value.code == 404
        missing.value.close()
        for proc in (web, far, near):
            assert proc.popen.poll() is None
    for proc in (far, near):
        assert not any("Traceback" in line for line in proc.lines["stderr"]), proc.output()


def test_tunnel_to_nothing_drops_the_tcp_connection_and_keeps_running() -> None:
    entry_port, dead_port = free_port(socket.SOCK_STREAM), free_port()
    with background(utcp_argv("tunnel", "--listen", f"{HOST}:{entry_port}",
                              "--remote", f"{HOST}:{dead_port}")) as near:
        near.wait_for(r"listening on tcp")
        with socket.create_connection((HOST, entry_port), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""  # closed (reset) by the tunnel
        near.wait_for(rf"cannot reach 127\.0\.0\.1:{dead_port}: connection refused",
                      stream="stderr")
        assert near.popen.poll() is None
    assert not any("Traceback" in line for line in near.lines["stderr"])


# ---------------------------------------------------------------------- cat

def test_cat_moves_a_file_both_ways(tmp_path: Path) -> None:
    """`cat -l PORT > out` and `cat HOST PORT < in`; the listener's stdin comes back too."""
    there, back = tmp_path / "there.bin", tmp_path / "back.bin"
    there.write_bytes(os.urandom(3 << 20))
    back.write_bytes(os.urandom(1 << 20))
    got_there, got_back = tmp_path / "got_there.bin", tmp_path / "got_back.bin"
    port = free_port()
    with there.open("rb") as src, back.open("rb") as back_src, \
            got_there.open("wb") as sink, got_back.open("wb") as back_sink, \
            background(utcp_argv("cat", "-v", "-l", f"{HOST}:{port}"),
                       stdin=back_src, stdout=sink) as listener:
        listener.wait_for(rf"listening on udp 127\.0\.0\.1 port {port}", stream="stderr")
        sender = run_utcp("cat", HOST, str(port), stdin=src, stdout=back_sink)
        assert sender.returncode == 0, sender.stderr.decode()
        assert sender.stderr == b""
        assert listener.wait() == 0, listener.output()
    assert sha256_file(got_there) == sha256_file(there)
    assert sha256_file(got_back) == sha256_file(back)
    assert not any("Traceback" in line for line in listener.lines["stderr"])


def test_cat_reset_by_peer_exits_while_stdin_is_still_open() -> None:
    """A reset ends `cat` at once with one line, even though its stdin never ends."""

    async def scenario() -> tuple[int | None, bytes]:
        async def abort_on_data(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(6)
            writer.transport.abort()  # RST

        server = await utcp.start_server(abort_on_data, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *utcp_argv("cat", HOST, str(port)), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=_env())
        try:
            assert proc.stdin is not None and proc.stderr is not None
            proc.stdin.write(b"hello\n")  # and stdin stays open
            async with asyncio.timeout(TIMEOUT):
                rc = await proc.wait()
            return rc, await proc.stderr.read()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            server.close()

    rc, err = asyncio.run(scenario())
    assert rc == 1, err
    assert err.decode().splitlines() == ["utcp cat: connection lost: connection reset by peer"]


# ---------------------------------------------------------------------- errors

def test_connection_refused_is_one_line() -> None:
    port = free_port()
    line = one_error_line(run_utcp("perf", "-c", HOST, "-p", str(port), "-t", "1"), "perf")
    assert line == (f"utcp perf: cannot connect to 127.0.0.1:{port}: connection refused"
                    " (port unreachable)")
    line = one_error_line(run_utcp("cat", HOST, str(port)), "cat")
    assert line == (f"utcp cat: cannot connect to 127.0.0.1:{port}: connection refused"
                    " (port unreachable)")


@pytest.mark.parametrize(("args", "message"), [
    (["cat", "-l", "127.0.0.1:99999"], "bad address '127.0.0.1:99999': the port must be 0-65535"),
    (["cat", "-l", "localhost:http"], "bad address 'localhost:http': the port must be a number"),
    (["tunnel", "--listen", ":x", "--target", "127.0.0.1:80"], "bad address ':x'"),
    (["tunnel", "--listen", ":0", "--target", "127.0.0.1:800000"], "the port must be 0-65535"),
    (["tunnel", "--listen", ":0"], "give exactly one of --remote"),
    (["perf", "-c", "127.0.0.1", "-p", "70000"], "the port must be 0-65535"),
], ids=["cat-port-range", "cat-port-name", "tunnel-port", "tunnel-target-range",
        "tunnel-neither", "perf-port"])
def test_bad_address(args: list[str], message: str) -> None:
    assert message in usage_error(run_utcp(*args), args[0])


@pytest.mark.parametrize(("args", "message"), [
    (["perf", "-c", "no-such-host.invalid", "-p", "5201", "-t", "1"], "cannot resolve address"),
    (["cat", "no-such-host.invalid", "5201"], "cannot resolve address"),
], ids=["perf-unresolvable", "cat-unresolvable"])
def test_unresolvable_address(args: list[str], message: str) -> None:
    assert message in one_error_line(run_utcp(*args), args[0])


@pytest.mark.parametrize("args", [
    ["perf", "-s", "-B", HOST, "-p", "{port}"],
    ["cat", "-l", "127.0.0.1:{port}"],
    ["tunnel", "--listen", "127.0.0.1:{port}", "--target", "127.0.0.1:80"],
], ids=["perf", "cat", "tunnel"])
def test_port_in_use(args: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        result = run_utcp(*(a.format(port=port) for a in args))
    line = one_error_line(result, args[0])
    assert f"{port}" in line and "Address already in use" in line, line


def test_port_in_use_by_another_utcp_server() -> None:
    """A second server on the same UDP port fails, as with TCP (no silent port sharing)."""
    port = free_port()
    with background(utcp_argv("perf", "-s", "-B", HOST, "-p", str(port))) as first:
        first.wait_for(rf"Server listening on udp 127\.0\.0\.1 port {port}")
        line = one_error_line(run_utcp("perf", "-s", "-B", HOST, "-p", str(port)), "perf")
        assert "Address already in use" in line
        assert first.popen.poll() is None


@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_parallel_count(value: str) -> None:
    assert usage_error(run_utcp("perf", "-P", value), "perf") == (
        f"utcp perf: error: argument -P/--parallel: must be 1-128, not '{value}'")


def test_parallel_count_not_a_number_is_a_usage_error() -> None:
    result = run_utcp("perf", "-P", "four")
    err = result.stderr.decode()
    assert result.returncode == 2  # argparse's convention for usage errors
    assert "Traceback" not in err
    assert err.startswith("usage: utcp perf")
    assert "argument -P/--parallel: invalid int value: 'four'" in err


def test_help_lists_the_commands() -> None:
    result = run_utcp("--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    for command in ("perf", "tunnel", "cat"):
        assert command in out
