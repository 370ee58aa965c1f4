"""docs/architecture.md names only what the code has (issue #13).

The page maps modules and walks a datagram through named functions; the core is
restructured often, and a renamed method would leave the page describing code that no
longer exists without anything noticing. So every reference the page makes is checked
against the code itself:

- every repository path (`utcp/...`, `tests/...`, `benchmarks/...`, `docs/...`,
  `examples/...`), in prose, tables and diagrams alike, exists;
- every dotted name in backticks (`Connection.receive`, `wire.parse`,
  `Timer.RTX`, `asyncio.Protocol.data_received`) resolves by import and getattr: the
  first part is a utcp module, a class defined in utcp (it must be unique, else the
  page must qualify it with its module), or an importable module; an instance
  attribute counts if a method of its class assigns `self.<name>`;
- every bare call in backticks (`handle_timer(now)`) is a function or method defined
  in utcp; every bare CamelCase name is a class (or other object) of utcp or asyncio;
- every other bare identifier in backticks (`ack_now`, `RECV_BATCH`) occurs as a name
  in utcp's source.

The checker is tested too: made-up names and paths must be reported.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import importlib
import importlib.util
import inspect
import io
import keyword
import pkgutil
import re
import sys
import threading
import tokenize
import types
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

import utcp

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"

PATH_RE = re.compile(r"(?<![\w./-])((?:utcp|tests|benchmarks|docs|examples)/[\w./-]*[\w/])")
SPAN_RE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
IDENT = r"[A-Za-z_]\w*"
DOTTED_RE = re.compile(rf"({IDENT}(?:\.{IDENT})+)(\(.*\))?")
CALL_RE = re.compile(rf"({IDENT})\(.*\)")
BARE_RE = re.compile(IDENT)
FILE_RE = re.compile(r"\w+\.py")


@cache
def utcp_modules() -> dict[str, ModuleType]:
    """Every module of the package, by dotted name (CLI and plotting included)."""
    found = {"utcp": utcp}
    for info in pkgutil.walk_packages(utcp.__path__, "utcp."):
        if info.name == "utcp.__main__":
            continue  # running it would start the command line
        found[info.name] = importlib.import_module(info.name)
    return found


@cache
def definitions() -> dict[str, list[object]]:
    """Classes and functions by bare name, where they are defined (not re-exported)."""
    by_name: dict[str, list[object]] = {}
    for modname, module in utcp_modules().items():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                    getattr(obj, "__module__", None) == modname:
                by_name.setdefault(name, []).append(obj)
    return by_name


@cache
def source_names() -> frozenset[str]:
    """Every identifier token in utcp's source."""
    names: set[str] = set()
    for path in (ROOT / "utcp").rglob("*.py"):
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        names.update(tok.string for tok in tokens if tok.type == tokenize.NAME)
    return frozenset(names)


@cache
def callables() -> frozenset[str]:
    """Names of every function and method defined in utcp's source."""
    names: set[str] = set()
    for path in (ROOT / "utcp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return frozenset(names)


def _instance_attribute(cls: type, name: str) -> bool:
    """Whether a method of `cls` (or a base) assigns `self.<name>`."""
    for klass in cls.__mro__:
        try:
            tree = ast.parse(_dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            tree = _class_in_source(klass)
            if tree is None:
                continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self" and \
                    node.attr == name:
                return True
    return False


def _class_in_source(klass: type) -> ast.ClassDef | None:
    """`klass`'s definition, read from the source beside its module: inspect finds no
    source for a class of a compiled module, even a plain Python class there
    (`utcp.aio.port.UdpPort`)."""
    path = ROOT.joinpath(*klass.__module__.split(".")).with_suffix(".py")
    if not klass.__module__.startswith("utcp.") or not path.is_file():
        return None
    return next((node for node in ast.parse(path.read_text()).body
                 if isinstance(node, ast.ClassDef) and node.name == klass.__name__), None)


def _dedent(source: str) -> str:
    lines = source.splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "\n".join(line[indent:] for line in lines)


def _start(first: str) -> tuple[object | None, str]:
    """The object a dotted reference starts from, or None with the reason."""
    modules = utcp_modules()
    by_base = {name.rsplit(".", 1)[-1]: mod for name, mod in modules.items()}
    if first == "utcp":
        return utcp, ""
    if first in by_base:
        return by_base[first], ""
    defined = definitions().get(first, [])
    if len(defined) == 1:
        return defined[0], ""
    if len(defined) > 1:
        where = ", ".join(f"{o.__module__}.{first}" for o in defined)  # type: ignore[attr-defined]
        return None, f"{first} is ambiguous ({where}): qualify it with its module"
    if hasattr(asyncio, first):
        return getattr(asyncio, first), ""
    if importlib.util.find_spec(first) is not None:
        return importlib.import_module(first), ""
    return None, f"{first} is no utcp module, utcp class or importable module"


def resolve(ref: str) -> str | None:
    """None if a dotted reference names something that exists, else why not."""
    first, *rest = ref.split(".")
    obj, why = _start(first)
    if obj is None:
        return why
    for i, part in enumerate(rest):
        if isinstance(obj, ModuleType) and not hasattr(obj, part):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
                continue
            except ImportError:
                pass
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if i == len(rest) - 1 and inspect.isclass(obj) and _instance_attribute(obj, part):
            return None
        return f"{'.'.join([first, *rest[:i]])} has no {part!r}"
    return None


def check_path(path: str) -> str | None:
    return None if (ROOT / path.rstrip("/")).exists() else f"{path}: no such file"


def check_span(span: str) -> str | None:
    """None if a backticked span names only what exists (or is no name at all)."""
    span = span.strip()
    if FILE_RE.fullmatch(span):  # a file by its name alone, as `inbound.py`
        found = any(any((ROOT / top).rglob(span)) for top in ("utcp", "tests", "benchmarks"))
        return None if found else f"{span}: no such file in utcp/, tests/ or benchmarks/"
    if m := DOTTED_RE.fullmatch(span):
        return resolve(m[1])
    if m := CALL_RE.fullmatch(span):
        return None if m[1] in callables() else f"{m[1]}(): no function or method in utcp"
    if BARE_RE.fullmatch(span):
        if keyword.iskeyword(span) or hasattr(builtins, span):
            return None
        if span[0].isupper() and any(c.islower() for c in span):
            return None if span in definitions() or hasattr(asyncio, span) or \
                span in source_names() else f"{span}: no such class in utcp or asyncio"
        return None if span in source_names() else f"{span}: not a name in utcp's source"
    return None  # an expression, a command, a literal: not a reference


def references(text: str) -> tuple[list[str], list[str]]:
    """The paths, and the backticked spans, of a Markdown page."""
    paths = PATH_RE.findall(text)
    # a fenced block is shown as it is: its paths count, its backticks are no spans
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return paths, SPAN_RE.findall(prose)


def problems(text: str) -> list[str]:
    paths, spans = references(text)
    found = [p for p in map(check_path, paths) if p]
    found += [f"`{s}`: {p}" for s in spans if (p := check_span(s))]
    return found


# ---------------------------------------------------------------------- the page


def test_every_name_and_path_in_architecture_md_exists() -> None:
    found = problems(DOC.read_text(encoding="utf-8"))
    assert not found, "docs/architecture.md names what the code does not have:\n" + \
        "\n".join(found)


def test_architecture_md_is_checked_at_all() -> None:
    """The patterns above see the page's references (a broken regex would check nothing)."""
    paths, spans = references(DOC.read_text(encoding="utf-8"))
    dotted = [s for s in spans if DOTTED_RE.fullmatch(s.strip())]
    assert len(set(paths)) >= 20, paths
    assert len(set(dotted)) >= 100, dotted
    for module in ("connection", "inbound", "receiver", "sender", "recovery", "buffers",
                   "timers", "state", "stats", "endpoint", "aio/port", "aio/transport"):
        assert f"utcp/{module}.py" in paths, f"utcp/{module}.py is not on the page"


# ---------------------------------------------------------------------- the checker


@pytest.mark.parametrize("bad", [
    "`Connection.no_such_method`",
    "`inbound.segmentt`",
    "`wire.parse_fast`",
    "`Timer.RETRANSMIT`",
    "`NoSuchClass.method`",
    "`Segment.payload`",           # wire.Segment or rack.Segment: must be qualified
    "`no_such_function(now)`",
    "`NoSuchClass`",
    "`_rtx_deadline`",             # an attribute the restructured core no longer has
    "see utcp/no_such_module.py",
    "`tests/test_no_such_file.py`",
    "`no_such_module.py`",
])
def test_the_checker_reports_made_up_names(bad: str) -> None:
    assert problems(f"Some prose {bad} and more.\n"), bad


@pytest.mark.parametrize("good", [
    "`Connection.receive`", "`inbound.segment`", "`wire.parse`", "`Timer.RTX`",
    "`wire.Segment.payload`", "`handle_timer(now)`", "`Connection`", "`ack_now`",
    "`UdpPort.transports`", "`asyncio.Protocol.data_received`", "`utcp.aio.port`",
    "`Config.ack_delay`", "`Counters.timeouts`", "utcp/connection.py",
    "`python -m benchmarks.core`", "`now + rto`", "`inbound.py`", "`port.py`",
])
def test_the_checker_accepts_real_names(good: str) -> None:
    assert not problems(f"Some prose {good} and more.\n"), problems(good)


# ---------------------------------------------------------------------- the walk, traced

WALK_TIMEOUT = 30.0  # seconds; generous for a loaded machine, the walk takes milliseconds
REPLY = 3000  # bytes: more than one segment, so one of them draws an ACK at once


def walk_steps(text: str) -> list[str]:
    """The names in bold in the walk section, in the order the page gives them."""
    start = text.index("## One datagram")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"\*\*`([\w.]+)`\*\*", section)


def _code_key(ref: str) -> tuple[str, str] | str:
    """What a traced call is matched by: utcp's (file, qualified name), or, for a method
    of asyncio's protocol classes (the application overrides it), its bare name."""
    first, *rest = ref.split(".")
    obj, why = _start(first)
    assert obj is not None, why
    for part in rest:
        obj = getattr(obj, part)
    if getattr(obj, "__module__", "").startswith("asyncio"):
        return ref.rsplit(".", 1)[-1]
    code = obj.__code__  # type: ignore[union-attr]
    return (code.co_filename, code.co_qualname)


def _trace_one_reply() -> list[tuple[str, str]]:
    """Every call the server's thread makes, from the moment it has sent a greeting
    (which the client's reply then acknowledges: that reply takes the general path) to
    the last byte of the reply reaching `data_received`."""
    calls: list[tuple[str, str]] = []
    ready = threading.Event()
    port: list[int] = []
    failure: list[BaseException] = []

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code
            calls.append((code.co_filename, code.co_qualname))

    class Server(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.done, self.got = done, 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"hello")
            sys.setprofile(profile)  # from here: the reply's way in

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= REPLY and not self.done.done():
                sys.setprofile(None)
                self.done.set_result(None)

    async def client() -> None:
        ready.wait(WALK_TIMEOUT)
        # base-size segments (on loopback they would start at 64 KiB): REPLY takes three
        reader, writer = await utcp.open_connection(
            "127.0.0.1", port[0], config=utcp.Config(pmtu_probing=False))
        try:
            await reader.readexactly(5)
            writer.write(b"r" * REPLY)  # carries the ACK of the greeting
            await writer.drain()
            await asyncio.wait_for(reader.read(), WALK_TIMEOUT)  # the server's close
        finally:
            writer.close()

    def run_client() -> None:
        try:
            asyncio.run(asyncio.wait_for(client(), WALK_TIMEOUT))
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    async def server() -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        srv = await utcp.create_server(lambda: Server(done), "127.0.0.1", 0)
        port.append(srv.sockets[0].getsockname()[1])
        ready.set()
        try:
            await asyncio.wait_for(done, WALK_TIMEOUT)
        finally:
            sys.setprofile(None)
            srv.close()
            srv.abort_clients()

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    try:
        asyncio.run(server())
    finally:
        thread.join(WALK_TIMEOUT)
    assert not thread.is_alive(), "the client did not finish"
    assert not failure or isinstance(failure[0], ConnectionError), failure
    return calls


def test_the_walk_is_the_order_the_code_calls() -> None:
    """The walk's steps in bold happen in that order when a datagram comes in over a
    real socket (a reply of two segments that acknowledges data: the general path, an
    ACK sent at once, then delivery)."""
    if utcp.compiled:
        pytest.skip("a trace sees Python frames only; compiled core functions call each "
                    "other natively (the pure-Python run checks the walk)")
    steps = walk_steps(DOC.read_text(encoding="utf-8"))
    assert len(steps) >= 15, steps
    calls = _trace_one_reply()
    i = 0
    for step in steps:
        key = _code_key(step)
        while i < len(calls) and not (calls[i] == key or calls[i][1].rsplit(".", 1)[-1] == key):
            i += 1
        assert i < len(calls), f"{step} is not called after the step before it"
        i += 1
