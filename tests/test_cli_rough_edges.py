"""The `utcp` command's rough edges (issue 11, item 6), each run as `python -m utcp`.

No bad argument gives a traceback: usage errors exit 2 before anything is sent, run-time
failures exit 1 with one line. `perf -t 0` runs until interrupted and then reports,
`--pcap` to a path that cannot be written fails at once, `--version` answers, private
keys come from a file or the environment, `-C` picks the congestion controller, and
`perf -P` reports every stream as well as the sum.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
from pathlib import Path

import pytest

import utcp
from tests.test_cli import (
    HOST,
    background,
    free_port,
    one_error_line,
    run_utcp,
    usage_error,
    utcp_argv,
)
from utcp import cli, congestion, crypto


@pytest.mark.parametrize(("args", "message"), [
    (["cat", HOST, "99999"], "argument port: the port must be 0-65535, not '99999'"),
    (["cat", HOST, "-5"], "argument port: the port must be 0-65535, not '-5'"),
    (["perf", "--mss", "0"], "argument --mss: Config.mss must be within 64..65495, not 0"),
    (["cat", "-l", "0", "--mss", "-3"], "Config.mss must be within"),
    (["perf", "-t", "-1"], "argument -t/--time: must be 0 or more seconds"),
    (["perf", "-t", "inf"], "argument -t/--time: invalid float value: 'inf'"),
    (["perf", "-n", "0"], "argument -n/--bytes: must be at least 1 byte"),
    (["perf", "--bytes=-5M"], "argument -n/--bytes: must be at least 1 byte"),
    (["perf", "-i", "-1"], "argument -i/--interval: must be 0 (no interval reports) or"),
    (["perf", "-i", "0.001"], "argument -i/--interval: must be 0 (no interval reports) or"),
    (["perf", "-P", "100000"], "argument -P/--parallel: must be 1-128"),
    (["perf", "-C", "bbr"], "argument -C/--congestion: invalid choice: 'bbr'"),
    (["perf", "--key", "x", "--key-file", "y"], "--key or --key-file, not both"),
    (["cat"], "give HOST PORT to connect, or -l [HOST:]PORT to listen"),
    (["perf", "-n", "1", "--key", "cPdIXmwXU6dD1M7UOcHVMDEq7QNz+YHK5Pa6wGG1bkY="],
     "a client's private key (--key, --key-file) needs --server-key"),
    (["cat", HOST, "9", "--key", "cPdIXmwXU6dD1M7UOcHVMDEq7QNz+YHK5Pa6wGG1bkY="],
     "a client's private key (--key, --key-file) needs --server-key"),
], ids=["cat-port-high", "cat-port-negative", "mss-0", "mss-negative", "time-negative",
        "time-infinite", "bytes-0", "bytes-negative", "interval-negative", "interval-tiny",
        "parallel-huge",
        "congestion-unknown", "two-keys", "cat-nothing", "client-key-alone",
        "cat-client-key-alone"])
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    line = usage_error(run_utcp(*args), args[0])
    assert message in line, line


def _closed_pipe() -> int:
    """The write end of a pipe nobody reads: writes fail with EPIPE, as under `| head`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.parametrize("args", [["keygen"], ["perf", "-n", "256K"]],
                         ids=["keygen", "perf"])
def test_closed_stdout_ends_quietly(args: list[str]) -> None:
    """`utcp keygen | head -1`: the reader has gone; no traceback, exit 1, nothing said."""
    out = _closed_pipe()
    try:
        result = run_utcp(*args, stdout=out)
    finally:
        os.close(out)
    assert (result.returncode, result.stderr.decode()) == (1, "")


def test_version_comes_from_the_package() -> None:
    result = run_utcp("--version")
    assert result.returncode == 0, result.stderr.decode()
    build = "compiled with mypyc" if utcp.compiled else "pure Python"
    assert result.stdout.decode().strip() == f"utcp {utcp.__version__} ({build})"


def test_unwritable_pcap_fails_at_once_naming_the_file(tmp_path: Path) -> None:
    """Used to hang: the in-process server died opening the file and nobody awaited it."""
    path = tmp_path / "no-such-dir" / "perf.pcap"
    for args in (["perf", "-n", "1M"], ["perf", "-c", HOST, "-p", str(free_port())],
                 ["cat", "-l", "0"]):
        line = one_error_line(run_utcp(*args, "--pcap", str(path), timeout=60), args[0])
        assert line == (f"utcp {args[0]}: cannot write pcap file {str(path)!r}: "
                        "No such file or directory"), line


@pytest.mark.parametrize("reverse", [False, True], ids=["send", "reverse"])
def test_time_zero_runs_until_interrupted_then_reports(reverse: bool) -> None:
    """`-t 0` is iperf3's "no deadline": Ctrl-C ends the run with its full report."""
    argv = utcp_argv("perf", "-t", "0", "-i", "0.2", *(["-R"] if reverse else []))
    with background(argv) as proc:
        proc.wait_for(r"until interrupted")
        proc.wait_for(r"^\[  1\]\s+\d+\.\d+-\d+\.\d+\s+sec\s+[\d.]+ \w?Bytes")
        proc.popen.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, proc.output()
        out = "\n".join(proc.lines["stdout"])
    assert "Traceback" not in "".join(proc.lines["stderr"]), proc.output()
    ending = out.split("- - -")[-1]
    received = re.search(r"\[SUM\]\s+0\.00-\S+\s+sec\s+(\S+ \S+)\s+.*receiver", ending)
    assert received, out
    if not reverse:
        sent = re.search(r"\[SUM\]\s+0\.00-\S+\s+sec\s+(\S+ \S+)\s+.*sender", ending)
        assert sent and sent.group(1) == received.group(1), out  # every byte arrived


def _keygen(tmp_path: Path) -> tuple[Path, str, str]:
    result = run_utcp("keygen")
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    private = re.search(r"^private: (\S+)$", text, re.M)
    public = re.search(r"^public: (\S+)$", text, re.M)
    assert private and public, text
    path = tmp_path / "server.key"
    path.write_text(text)  # keygen's own output is a valid key file
    path.chmod(0o600)
    return path, private.group(1), public.group(1)


def test_private_key_from_a_file(tmp_path: Path) -> None:
    key_file, _, public = _keygen(tmp_path)
    port = free_port()
    with background(utcp_argv("perf", "-s", "-B", HOST, "-p", str(port),
                              "--key-file", str(key_file))) as server:
        server.wait_for(rf"Server listening on udp 127\.0\.0\.1 port {port}")
        ok = run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "256K",
                      "--server-key", public)
        assert ok.returncode == 0, ok.stderr.decode()
        # the server really is in secure mode: a plaintext client is refused
        plain = one_error_line(run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "1K"),
                               "perf")
        assert "connection refused" in plain


def test_private_key_from_the_environment(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, private, public = _keygen(tmp_path)
    port = free_port()
    monkeypatch.setenv(cli.KEY_ENV, private)
    with background(utcp_argv("perf", "-s", "-B", HOST, "-p", str(port))) as server:
        server.wait_for(rf"Server listening on udp 127\.0\.0\.1 port {port}")
        ok = run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "256K",
                      "--server-key", public)
        assert ok.returncode == 0, ok.stderr.decode()
        plain = one_error_line(run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "1K"),
                               "perf")
        assert "connection refused" in plain
    # a client that pins no server key ignores the variable (a private key alone would
    # turn secure mode on for it), so a shell that exports it still runs plain clients
    assert run_utcp("perf", "-n", "256K").returncode == 0


@pytest.mark.parametrize("content", ["", "not a key\n", "a: b\nc: d\n"],
                         ids=["empty", "garbage", "no-private-line"])
def test_bad_key_file_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    result = run_utcp("perf", "-s", "-p", "0", "--key-file", str(path), timeout=60)
    if content == "not a key\n":  # one line without a label: taken as the key itself
        line = usage_error(result, "perf")
        assert "Config.secret_key: not a base64 private key" in line, line
    else:
        line = one_error_line(result, "perf")
        assert line.startswith(f"utcp perf: key file {str(path)!r}: expected one"), line


def test_congestion_choices_are_the_registry() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["perf", "-C", "cubic"])
    assert cli._config(args).congestion == "cubic"
    assert cli._config(parser.parse_args(["perf"])).congestion == utcp.Config().congestion
    perf = args.parser
    (action,) = [a for a in perf._actions if "-C" in a.option_strings]
    assert set(action.choices or ()) == set(congestion._REGISTRY)


def test_congestion_option_runs() -> None:
    result = run_utcp("perf", "-n", "1M", "-C", "cubic")
    assert result.returncode == 0, result.stderr.decode()


def test_parallel_reports_every_stream_and_the_sum() -> None:
    result = run_utcp("perf", "-n", "3M", "-P", "3")
    assert result.returncode == 0, result.stderr.decode()
    ending = result.stdout.decode().split("- - -")[-1]
    for ident in (1, 2, 3):
        for role in ("sender", "receiver"):
            assert re.search(rf"^\[  {ident}\]\s+0\.00-\S+\s+sec\s+1\.00 MBytes.*{role}$",
                             ending, re.M), ending
    for role in ("sender", "receiver"):
        assert re.search(rf"^\[SUM\]\s+0\.00-\S+\s+sec\s+3\.00 MBytes.*{role}$",
                         ending, re.M), ending


def test_parallel_json_has_each_streams_received_bytes() -> None:
    result = run_utcp("perf", "-n", "3M", "-P", "3", "--json")
    assert result.returncode == 0, result.stderr.decode()
    streams = json.loads(result.stdout)["end"]["streams"]
    assert [(s["id"], s["bytes"], s["bytes_received"]) for s in streams] == [
        (i, 1 << 20, 1 << 20) for i in (1, 2, 3)]


def test_key_on_argv_still_works(tmp_path: Path) -> None:
    """--key stays (scripts use it); the docs say why a file or the environment is safer."""
    _, private, public = _keygen(tmp_path)
    assert crypto.public_key_of(private) == public
    port = free_port()
    with background(utcp_argv("perf", "-s", "-B", HOST, "-p", str(port),
                              "--key", private)) as server:
        server.wait_for(rf"Server listening on udp 127\.0\.0\.1 port {port}")
        ok = run_utcp("perf", "-c", HOST, "-p", str(port), "-n", "64K",
                      "--server-key", public)
        assert ok.returncode == 0, ok.stderr.decode()


def test_refused_connect_is_not_a_usage_error() -> None:
    line = one_error_line(run_utcp("cat", HOST, str(free_port())), "cat")
    assert "connection refused" in line


async def test_tunnel_pipe_survives_a_tcp_peer_reset_it_has_not_read_yet() -> None:
    """The tunnel's TCP side reset by its client before asyncio read the RST: the
    half-close at the far side's EOF then fails shutdown() with ENOTCONN, an OSError
    that is not a ConnectionError. The copy must end quietly and drop that side, not
    raise out of the connection handler (seen as a traceback in CI)."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_connection(_reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        writer.transport.pause_reading()  # the RST stays unread, as in the race
        accepted.set_result(writer)

    server = await asyncio.start_server(on_connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection((HOST, port))
    try:
        writer = await asyncio.wait_for(accepted, 10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset, which loopback delivers before close() returns
        far = asyncio.StreamReader()
        far.feed_eof()  # nothing to copy: a write would have met the reset first
        await asyncio.wait_for(cli._pipe(far, writer), 10)
        assert writer.transport.is_closing()
    finally:
        client.close()
        server.close()
        await server.wait_closed()
