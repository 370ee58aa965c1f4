"""`utcp perf -s --workers N` and `utcp tunnel --workers N`: N processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import utcp

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="SO_REUSEPORT groups as Linux has them")


class Served:
    """A `utcp ... --workers N` process, started and read up to its listening line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "utcp", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()
        match = re.search(r"port (\d+) \(.*?(\d+) worker processes: pids ([\d ]+)\)", self.line)
        if match is None:
            self.proc.kill()
            raise AssertionError(f"no listening line: {self.line!r} "
                                 f"{self.proc.communicate()[1]!r}")
        self.port = int(match[1])
        self.pids = [int(p) for p in match[3].split()]
        assert len(self.pids) == int(match[2])

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def served(out: str) -> dict[int, int]:
    return {int(m[1]): int(m[2]) for m in
            re.finditer(r"worker (\d+) \(pid \d+\): served (\d+) connections", out)}


def test_perf_server_in_two_workers() -> None:
    server = Served("perf", "-s", "-B", "127.0.0.1", "-p", "0", "--workers", "2")
    try:
        client = subprocess.run([sys.executable, "-m", "utcp", "perf", "-c", "127.0.0.1",
                                 "-p", str(server.port), "-P", "8", "-n", "4M", "-i", "0"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr
        assert re.search(r"\[SUM\].*receiver", client.stdout), client.stdout
        status, out, err = server.stop(signal.SIGINT)  # Ctrl-C stops every worker
    finally:
        server.cleanup()
    assert server.line.startswith(f"Server listening on udp 127.0.0.1 port {server.port}")
    assert status == 0, err
    counts = served(out)
    assert sorted(counts) == [0, 1] and sum(counts.values()) == 8, out
    for pid in server.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def _echo_through(port: int, n: int) -> None:
    for i in range(n):
        reader, writer = await asyncio.wait_for(utcp.open_connection("127.0.0.1", port), 30)
        payload = f"hello {i} ".encode() * 100
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 30) == payload
        writer.close()
        await writer.wait_closed()


def test_tunnel_exit_in_two_workers() -> None:
    async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def run() -> tuple[int, str, str, Served]:
        target = await asyncio.start_server(tcp_echo, "127.0.0.1", 0)
        tport = target.sockets[0].getsockname()[1]
        tunnel = await asyncio.to_thread(Served, "tunnel", "--listen", "127.0.0.1:0",
                                         "--target", f"127.0.0.1:{tport}", "--workers", "2")
        try:
            await _echo_through(tunnel.port, 30)
            status, out, err = await asyncio.to_thread(tunnel.stop)
        finally:
            tunnel.cleanup()
            target.close()
        return status, out, err, tunnel

    status, out, err, tunnel = asyncio.run(run())
    assert tunnel.line.startswith(f"utcp tunnel: listening on udp (utcp) 127.0.0.1 port "
                                  f"{tunnel.port} (2 worker processes")
    assert status == 0, err
    counts = served(out)
    assert sorted(counts) == [0, 1] and sum(counts.values()) == 30, out


def test_a_worker_that_dies_is_reported() -> None:
    server = Served("perf", "-s", "-B", "127.0.0.1", "-p", "0", "--workers", "3")
    try:
        os.kill(server.pids[2], signal.SIGKILL)
        assert server.proc.stderr is not None
        line = server.proc.stderr.readline()  # at once, not only at the end
        status, out, _ = server.stop()
    finally:
        server.cleanup()
    assert line == (f"utcp: worker 2 (pid {server.pids[2]}) died: killed by SIGKILL; "
                    f"2 of 3 still serving\n")
    assert status == 1
    assert sorted(served(out)) == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["perf", "-c", "127.0.0.1", "--workers", "2"], "--workers is for the server"),
    (["perf", "-s", "--workers", "2", "--pcap", "/tmp/x.pcap"], "every worker would write"),
    (["perf", "-s", "--workers", "0"], "must be 1-64"),
    (["tunnel", "--listen", ":0", "--target", "127.0.0.1:1", "--workers", "65"],
     "must be 1-64"),
])
def test_bad_workers_usage(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "utcp", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_port_in_use_fails_every_worker_and_the_command() -> None:
    import socket
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEPORT: a wall
    taken.bind(("127.0.0.1", 0))
    try:
        done = subprocess.run([sys.executable, "-m", "utcp", "perf", "-s", "-B", "127.0.0.1",
                               "-p", str(taken.getsockname()[1]), "--workers", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1
    assert "utcp perf: cannot listen on 127.0.0.1" in done.stderr
    assert "only 0 of 2 workers started" in done.stderr


def test_workers_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.workers", "--reps", "1",
                           "-t", "0.5", "--clients", "1", "-P", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+)x \| ([\d.]+) \| (.*) \|$",
                      done.stdout, re.M)
    assert [r[0] for r in rows] == ["1", "2"], done.stdout
    assert float(rows[0][1]) > 0 and rows[0][2] == "1.00"
    assert sum(int(n) for n in re.findall(r"\d+", rows[1][4])) == 2  # both connections


def test_tunnel_entry_in_two_workers() -> None:
    """--remote side: the TCP listener is the one shared (SO_REUSEPORT on TCP)."""

    async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def run() -> tuple[int, str, str, Served]:
        target = await asyncio.start_server(tcp_echo, "127.0.0.1", 0)
        tport = target.sockets[0].getsockname()[1]
        exit_side = subprocess.Popen(
            [sys.executable, "-m", "utcp", "tunnel", "--listen", "127.0.0.1:0", "--target",
             f"127.0.0.1:{tport}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        entry = None
        try:
            assert exit_side.stdout is not None
            line = await asyncio.to_thread(exit_side.stdout.readline)
            uport = int(line.split()[-1])
            entry = await asyncio.to_thread(Served, "tunnel", "--listen", "127.0.0.1:0",
                                            "--remote", f"127.0.0.1:{uport}",
                                            "--workers", "2")
            for i in range(20):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", entry.port), 30)
                payload = f"through {i} ".encode() * 50
                writer.write(payload)
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 30) == payload
                writer.close()
            status, out, err = await asyncio.to_thread(entry.stop)
        finally:
            if entry is not None:
                entry.cleanup()
            exit_side.kill()
            exit_side.communicate()
            target.close()
        return status, out, err, entry

    status, out, err, entry = asyncio.run(run())
    assert entry.line.startswith("utcp tunnel: listening on tcp 127.0.0.1 port")
    assert status == 0, err
    assert sum(served(out).values()) == 20 and sorted(served(out)) == [0, 1], out
