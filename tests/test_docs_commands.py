"""The README's quick start and the command lines of docs/cli.md, run as written.

Issue #11 asks that the README quick start and every documented CLI command run as
written; these tests extract them from the documents themselves, so an edit that breaks
one (or a CLI change that breaks the doc) fails here.

docs/cli.md's blocks follow the convention stated at the top of that file: each `sh` and
`console` block runs line by line in a network namespace of its own (the doc's fixed
ports, 5201, 80, 9000, are then free whatever else runs on the machine), a line ending
in `&` is a server started in the background, a comment saying `Ctrl-C` means SIGINT 2 s
after the first line it prints, and a `console` command's output is compared with the
lines under it by shape (numbers, units and keys may differ). The namespace needs root
and unshare; without them those tests skip and say why.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import ROOT, TIMEOUT, free_port

README = ROOT / "README.md"
CLI_MD = ROOT / "docs" / "cli.md"
CTRL_C_AFTER = 2.0  # seconds a `Ctrl-C` line runs, from its first line out, before SIGINT
KEY_RE = re.compile(r"[A-Za-z0-9+/]{43}=")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def _env(bindir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if bindir is not None:
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


# ---------------------------------------------------------------------- README

def test_readme_quick_start_runs_and_prints_what_its_comments_say(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    source = next(body for lang, body in code_blocks(section) if lang == "python")
    # the one substitution: the example's fixed port, so that nothing else on the
    # machine (another run of this test) can hold it
    assert source.count("8888") == 2, "the quick start's port moved: update this test"
    program = tmp_path / "quick_start.py"
    program.write_text(source.replace("8888", str(free_port())))
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=tmp_path, env=_env(), check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    expected = [line.split("#", 1)[1].strip() for line in source.splitlines()
                if line.lstrip().startswith("print(") and "#" in line]
    printed = result.stdout.splitlines()
    assert len(printed) == len(expected) == 3, (printed, expected)
    for comment, line in zip(expected, printed, strict=True):
        if " or " in comment:  # alternatives
            assert line in comment.split(" or "), (comment, line)
        elif comment.endswith("counters"):  # field names: each is printed as name=...
            names = re.findall(r"\w+", comment.removesuffix("counters"))
            names = [n for n in names if n != "and"]
            assert names, comment
            for name in names:
                assert re.search(rf"\b{name}(_\w+)?=", line), (name, line)
        else:  # a literal: printed as its repr
            assert line == repr(ast.literal_eval(comment)), (comment, line)


def test_readme_install_and_test_commands() -> None:
    block = next(body for lang, body in code_blocks(README.read_text()) if lang == "sh")
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert lines[0] == "pip install -e . && python examples/loopback_demo.py"
    install, test_command = lines[1].split(" && ")
    extras = re.fullmatch(r"pip install -e '\.\[([\w,]+)\]'", install)
    assert extras, install
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    optional = project["project"]["optional-dependencies"]
    for extra in extras[1].split(","):
        assert extra in optional, extra
    assert any(dep.startswith("pytest") for dep in optional["test"])
    assert test_command == "python -m pytest -q"
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    # the demo, as written (16 MiB), from the repository root
    result = subprocess.run([sys.executable, "examples/loopback_demo.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                            check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"echoed 16 MiB through udp port \d+ .* sha256 ok", result.stdout)


# ---------------------------------------------------------------------- docs/cli.md

def shape(line: str) -> str:
    """A printed line with what varies from run to run (numbers, units, keys) abstracted."""
    line = KEY_RE.sub("KEY", line)
    line = re.sub(r"\d+(?:\.\d+)?", "N", line)
    line = re.sub(r"\b[KMG]?(?:Bytes|bits/sec)\b", "U", line)
    line = re.sub(r"\bNone\b", "N", line)
    return " ".join(line.split())


def _collapse(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if not out or out[-1] != line:
            out.append(line)
    return out


def output_matches(doc: list[str], real: list[str]) -> bool:
    """`real` printed as `doc` shows it: line by line by shape, runs of lines of one shape
    (interval rows, parallel streams) as one, `...` alone for any lines, a line ending in
    `...` for any line that begins so."""
    want = _collapse([shape(line) for line in doc])
    got = _collapse([shape(line) for line in real])

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i] == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        if j == len(got):
            return False
        if want[i].endswith("..."):
            ok = got[j].startswith(want[i].removesuffix("...").rstrip())
        else:
            ok = got[j] == want[i]
        return ok and match(i + 1, j + 1)

    return match(0, 0)


def _sample_keys() -> tuple[str, str]:
    """The key pair docs/cli.md shows `utcp keygen` printing."""
    m = re.search(r"\$ utcp keygen\nprivate: (\S+)\npublic: (\S+)\n", CLI_MD.read_text())
    assert m, "docs/cli.md shows no `utcp keygen` output"
    return m[1], m[2]


def substitute(command: str, cwd: Path) -> str:
    """The replacements docs/cli.md's convention announces, and no others."""
    command = re.sub(r"\b[\w-]+\.example\b", "127.0.0.1", command)

    def time_(m: re.Match[str]) -> str:
        return f"{m[1]} 1" if float(m[2]) > 2 else m[0]

    def size(m: re.Match[str]) -> str:
        scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[3].upper()]
        return f"{m[1]} 10M" if float(m[2]) * scale > 10 << 20 else m[0]

    command = re.sub(r"(-t|--time) (\d+(?:\.\d+)?)\b", time_, command)
    # a perf client (or self-test) that says neither: its default 3 s, shortened too
    for m in re.finditer(r"\butcp perf\b([^|;&>]*)", command):
        if not re.search(r"(^|\s)(-s|--server|-t|--time|-n|--bytes)(\s|$)", m[1]):
            command = command[:m.start()] + "utcp perf -t 1" + command[m.start() + 9:]
            break
    command = re.sub(r"(-n|--bytes) (\d+(?:\.\d+)?)([KMGkmg]?)\b", size, command)
    private, public = _sample_keys()
    for keyfile in sorted(cwd.glob("*.key")):
        made = dict(re.findall(r"^(private|public): (\S+)$", keyfile.read_text(), re.M))
        if len(made) == 2:
            command = command.replace(private, made["private"])
            command = command.replace(public, made["public"])
    return command


def _split_comment(line: str) -> tuple[str, str]:
    m = re.search(r"(?:^|\s)#(\s|$)", line)
    return (line[:m.start()].rstrip(), line[m.end():].strip()) if m else (line.rstrip(), "")


def _children(pids: set[int]) -> set[int]:
    """`pids` and all their descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(pids)
    while True:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def _listening(pid: int) -> bool:
    """Whether the process tree of `pid` holds a bound UDP or a listening TCP socket."""
    inodes: set[str] = set()
    for p in _children({pid}):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    for table, state in (("udp", None), ("udp6", None), ("tcp", "0A"), ("tcp6", "0A")):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = row.split()
                if cols[9] in inodes and (state is None or cols[3] == state):
                    return True
    return False


def _default_sigint() -> None:
    """Ctrl-C as in a terminal, even under a runner that ignores SIGINT (a background job
    of a script does): an ignored signal stays ignored across exec, and a shell cannot
    reset it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# The paths carried over ("$@") are bound to /mnt/1, /mnt/2... (a tmpfs there, in the new
# mount namespace only), and moved back onto the fresh /tmp once it is mounted.
PRIVATE_TMP = ('mount --make-rprivate / && mount -t tmpfs keep /mnt && i=0'
               ' && for p; do i=$((i + 1)); mkdir /mnt/$i && mount --bind "$p" /mnt/$i'
               ' || exit 1; done && mount -t tmpfs tmp /tmp && i=0'
               ' && for p; do i=$((i + 1)); mkdir -p "$p" && mount --move /mnt/$i "$p"'
               ' || exit 1; done && umount /mnt')


def _under_tmp(workdir: Path) -> list[str]:
    """What the commands need from the real /tmp: the test's directory, and this checkout
    and this Python where they live there (CI's clone may), outermost paths only."""
    tmp = Path("/tmp").resolve()
    wanted = {workdir.parent, ROOT, Path(sys.prefix), Path(sys.base_prefix),
              *(Path(p) for p in sys.path if p)}
    inside = sorted({p.resolve() for p in wanted if p.resolve().is_relative_to(tmp)
                     and p.resolve() != tmp and p.exists()})
    return [str(p) for p in inside
            if not any(p != q and p.is_relative_to(q) for q in inside)]


class Namespace:
    """A network namespace with only loopback, and the processes started in it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bindir = workdir.parent / "bin"
        self.bindir.mkdir(exist_ok=True)
        for name, argv in (("utcp", f'"{sys.executable}" -m utcp'),
                           ("python3", f'"{sys.executable}"')):
            script = self.bindir / name
            script.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
            script.chmod(0o755)
        # A mount namespace too, with a /tmp of its own: the doc's paths there
        # (/tmp/perf.pcap, /tmp/x.png...) are fixed, and another run of this suite on the
        # machine (a pytest-xdist worker of it, or CI beside a developer) writes the same
        # ones. What the commands need from the real /tmp is carried over.
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "sh", "-c", PRIVATE_TMP
             + " && ip link set lo up && echo up && exec sleep 600", "sh",
             *_under_tmp(workdir)],
            stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline().strip() == "up", \
            "no network namespace with a /tmp of its own"
        self.background: list[tuple[str, subprocess.Popen[str]]] = []

    def start(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net",
             f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--wd={self.workdir}", "bash", "-c",
             command],
            cwd=self.workdir, env=_env(self.bindir), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, preexec_fn=_default_sigint)

    def run(self, command: str, ctrl_c: bool = False) -> tuple[int, str]:
        proc = self.start(command)
        first: list[str] = []
        try:
            if ctrl_c:
                # counted from its first line, so that a slow start on a loaded machine
                # is not interrupted before it is under way
                assert proc.stdout is not None
                stdout = proc.stdout
                reader = threading.Thread(target=lambda: first.append(stdout.readline()),
                                          daemon=True)
                reader.start()
                reader.join(TIMEOUT)
                assert first and first[0], f"{command!r} printed nothing"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(CTRL_C_AFTER)
                    raise AssertionError(f"{command!r} ended before its Ctrl-C")
                os.killpg(proc.pid, signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{command!r} still runs after {TIMEOUT} s: if it is a server, end its "
                    "line with & (see the top of docs/cli.md)") from None
        finally:
            self._kill(proc)
        return proc.returncode, "".join(first) + out

    def serve(self, command: str) -> None:
        proc = self.start(command)
        self.background.append((command, proc))
        end = time.monotonic() + TIMEOUT
        while not _listening(proc.pid):
            if proc.poll() is not None:
                raise AssertionError(f"{command!r} exited ({proc.returncode}) before "
                                     f"listening: {proc.communicate()[0]}")
            assert time.monotonic() < end, f"{command!r} never listened"
            time.sleep(0.05)

    def stop_background(self) -> list[tuple[str, int, str]]:
        """Interrupt the servers (after a moment to end on their own) and reap them."""
        results = []
        deadline = time.monotonic() + 2
        for command, proc in self.background:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=15)
            finally:
                self._kill(proc)
            results.append((command, proc.returncode, out))
        self.background.clear()
        return results

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)

    def close(self) -> None:
        try:
            for _, proc in self.background:
                self._kill(proc)
        finally:
            self.holder.kill()
            self.holder.wait(10)


@contextlib.contextmanager
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")
                                 and shutil.which("ip")):
        pytest.skip("needs root, unshare, nsenter and ip for a network namespace of its "
                    "own (docs/cli.md uses fixed ports)")
    work = tmp_path / "work"
    (work / "somedir").mkdir(parents=True)
    (work / "somedir" / "notes.txt").write_text("utcp carries this file\n" * 1000)
    ns = Namespace(work)
    try:
        yield ns
    finally:
        ns.close()


def _cli_blocks(lang: str) -> list[str]:
    return [body for kind, body in code_blocks(CLI_MD.read_text()) if kind == lang]


def _params(lang: str) -> list[Any]:
    """The blocks as test cases, with the marks docs/cli.md declares before a block:
    `<!-- not run: REASON -->` leaves it out, `<!-- needs: MODULE -->` skips it when the
    optional MODULE is not installed."""
    params = []
    text = CLI_MD.read_text()
    for body, ident in zip(_cli_blocks(lang), _ids(_cli_blocks(lang)), strict=True):
        before = text[:text.index(f"```{lang}\n{body}")].rstrip().rsplit("\n", 1)[-1]
        marks: list[Any] = []
        if re.fullmatch(r"<!-- not run: (.*) -->", before):
            continue  # an illustration (a hand-driven session, two hosts): not a test case
        if m := re.fullmatch(r"<!-- needs: ([\w.]+) -->", before):
            missing = importlib.util.find_spec(m[1]) is None
            marks.append(pytest.mark.skipif(missing, reason=f"{m[1]} is not installed"))
        params.append(pytest.param(body, marks=marks, id=ident))
    return params


# programs a documented command may use besides utcp: a test skips without them
OPTIONAL_TOOLS = {"curl", "tar", "tshark", "tcpdump", "nc", "socat", "iperf3", "sed", "head"}


def _needs(command: str) -> None:
    for program in re.findall(r"(?:^|[|;(&]\s*)([\w.$-]+)", command):
        if program in {"utcp", "python3", "umask", "echo", "export", "cat"}:
            continue
        assert program in OPTIONAL_TOOLS, (
            f"{program!r} in {command!r} is not a command this test knows: a prompt or "
            "a placeholder? Mark the block <!-- not run: REASON --> (top of docs/cli.md), "
            "or add the tool to OPTIONAL_TOOLS")
        if not shutil.which(program):
            pytest.skip(f"{program} is not installed")


def _ids(blocks: list[str]) -> list[str]:
    return [_split_comment(next(line for line in block.splitlines()
                                if line.strip() and not line.startswith("#")))[0][:40]
            for block in blocks]


SH_BLOCKS = _cli_blocks("sh")
CONSOLE_BLOCKS = _cli_blocks("console")


def test_cli_md_has_the_blocks_these_tests_run() -> None:
    assert len(SH_BLOCKS) >= 4 and len(CONSOLE_BLOCKS) >= 4
    assert any("&" in block for block in SH_BLOCKS)


def test_blocks_run_with_a_tmp_of_their_own(tmp_path: Path) -> None:
    """The doc's fixed /tmp paths stay in the block's namespace: another run of the suite
    on the machine (a pytest-xdist worker, CI beside a developer) uses the same names."""
    name = Path("/tmp", f"utcp-doc-block-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with namespace(tmp_path) as ns:
            rc, out = ns.run(f"echo inside > {name} && cat {name} && ls somedir")
            assert rc == 0, out
            assert out.split() == ["inside", "notes.txt"], out  # and in the block's directory
        assert not name.exists(), "the block wrote into the machine's /tmp"
    finally:
        name.unlink(missing_ok=True)


def test_blocks_see_a_checkout_that_lives_in_tmp(tmp_path: Path,
                                                 tmp_path_factory: pytest.TempPathFactory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """...while a checkout (and so an editable install's sources) under the real /tmp,
    as a CI clone may be, is still there for `utcp` to import."""
    checkout = tmp_path_factory.mktemp("checkout")  # beside tmp_path, not inside it
    (checkout / "marker").write_text("the checkout\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", checkout)
    with namespace(tmp_path) as ns:
        rc, out = ns.run(f"cat {checkout / 'marker'}")
    assert (rc, out) == (0, "the checkout\n")


@pytest.mark.parametrize("block", _params("sh"))
def test_cli_md_sh_block_runs_as_written(block: str, tmp_path: Path) -> None:
    steps = []
    for raw in block.splitlines():
        command, comment = _split_comment(raw)
        if command:
            _needs(command)
            steps.append((command, comment))
    with namespace(tmp_path) as ns:
        outputs = []
        for command, comment in steps:
            line = substitute(command, ns.workdir)
            if line.endswith("&"):
                ns.serve(line.removesuffix("&").rstrip())
                continue
            rc, out = ns.run(line, ctrl_c="Ctrl-C" in comment)
            assert rc == 0, f"{line!r} exited {rc}: {out}"
            assert "Traceback" not in out, out
            outputs.append((line, out))
        for command, rc, out in ns.stop_background():
            assert "Traceback" not in out, f"{command!r}: {out}"
            assert rc in (0, 130, -signal.SIGINT), f"{command!r} exited {rc}: {out}"
        # what the commands did, beyond exiting 0
        for line, out in outputs:
            if line.startswith("curl "):  # through both tunnels to the web server
                assert "somedir/" in out, out
        if "> backup.tar" in block:
            with tarfile.open(ns.workdir / "backup.tar") as tar:
                member = tar.extractfile("somedir/notes.txt")
                assert member is not None
                assert member.read() == (ns.workdir / "somedir" / "notes.txt").read_bytes()


@pytest.mark.parametrize("block", _params("console"))
def test_cli_md_console_block_prints_what_it_shows(block: str, tmp_path: Path) -> None:
    steps: list[tuple[str, str, list[str]]] = []
    for raw in block.splitlines():
        if raw.startswith("$ "):
            command, comment = _split_comment(raw[2:])
            steps.append((command, comment, []))
        else:
            assert steps, f"output before any command: {raw!r}"
            steps[-1][2].append(raw)
    with namespace(tmp_path) as ns:
        for command, comment, shown in steps:
            line = substitute(command, ns.workdir)
            if line.endswith("&"):
                ns.serve(line.removesuffix("&").rstrip())
                continue
            rc, out = ns.run(line, ctrl_c="Ctrl-C" in comment)
            assert "Traceback" not in out, out
            real = out.splitlines()
            assert output_matches(shown, real), (
                f"{line!r} printed (exit {rc}):\n{out}\nthe doc shows:\n" + "\n".join(shown))
        for command, _, out in ns.stop_background():
            assert "Traceback" not in out, f"{command!r}: {out}"


def _same_keys(doc: Any, real: Any, where: str = "") -> None:
    """The same keys at every level; a list's elements are compared with the doc's first
    (an empty list matches: a run quicker than a twentieth of the interval has no
    interval rows)."""
    if isinstance(doc, dict):
        assert isinstance(real, dict), where
        assert sorted(doc) == sorted(real), (where, sorted(doc), sorted(real))
        for key in doc:
            _same_keys(doc[key], real[key], f"{where}.{key}")
    elif isinstance(doc, list):
        assert isinstance(real, list), where
        for item in real:
            _same_keys(doc[0], item, f"{where}[]")


def test_cli_md_json_example_has_the_keys_the_command_prints() -> None:
    text = CLI_MD.read_text()
    body = next(body for lang, body in code_blocks(text) if lang == "json")
    after = text[text.index(body) + len(body):]
    m = re.search(r"\(`utcp (perf [^`]*(?:--json|-J))`", after)
    assert m, "the command behind the JSON example is not named after it"
    result = subprocess.run([sys.executable, "-m", "utcp", *m[1].split()], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                            check=False)
    assert result.returncode == 0, result.stderr
    _same_keys(json.loads(body), json.loads(result.stdout))


# ---------------------------------------------------------------------- user-guide.md

def test_user_guide_packet_capture_commands(tmp_path: Path) -> None:
    """The capture recipe of docs/user-guide.md: a perf self-test, then tshark reads it."""
    text = (ROOT / "docs" / "user-guide.md").read_text()
    section = text[text.index("## Packet captures"):]
    block = next(body for lang, body in code_blocks(section) if lang == "sh")
    commands = [line for line in block.splitlines() if line.strip()]
    assert commands[0].startswith("utcp perf ") and "--pcap" in commands[0]
    if any(c.startswith("tshark") for c in commands) and not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "utcp").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m utcp "$@"\n')
    (bindir / "utcp").chmod(0o755)
    # the capture's path as written is in /tmp, shared with any other run: use our own
    pcap = re.search(r"--pcap (\S+)", commands[0])
    assert pcap
    outputs = []
    for command in commands:
        result = subprocess.run(["bash", "-c", command.replace(pcap[1], str(tmp_path / "x.pcap"))],
                                cwd=tmp_path, env=_env(bindir), capture_output=True, text=True,
                                timeout=TIMEOUT, check=False)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        outputs.append(result.stdout)
    assert "sender" in outputs[0]
    # -z conv,tcp: one TCP conversation, between two loopback ports
    assert re.search(r"127\.0\.0\.1:\d+\s+<->\s+127\.0\.0\.1:\d+", outputs[1]), outputs[1]


# ---------------------------------------------------------------------- examples/

def test_every_example_is_run_by_test_examples() -> None:
    """A program added to examples/ gets run (as its docstring says) in test_examples.py."""
    tests = (ROOT / "tests" / "test_examples.py").read_text()
    for program in sorted((ROOT / "examples").glob("*.py")):
        assert f'"{program.name}"' in tests, f"{program.name} is not run by test_examples.py"
