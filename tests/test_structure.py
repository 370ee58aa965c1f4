"""The core's shape, as issue #13 set it: a connection a newcomer can hold in their head.

No function or method over 60 lines (def line to last line, docstring included), no class
over 600, and `Connection` with at most 40 attributes: the TCB's variables and its
collaborators, each of which owns one concern (docs/architecture.md). A change that grows
past a limit fails here and is split, not waved through.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utcp.config import Config
from utcp.connection import Connection

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "utcp").rglob("*.py"))
FUNCTION_LIMIT = 60
CLASS_LIMIT = 600
CONNECTION_ATTRIBUTES = 40


def _lengths(path: Path, kinds: tuple[type, ...]) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            assert node.end_lineno is not None
            found.append((node.name, node.end_lineno - node.lineno + 1))  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_over_60_lines(path: Path) -> None:
    long = [(name, n) for name, n in _lengths(path, (ast.FunctionDef, ast.AsyncFunctionDef))
            if n > FUNCTION_LIMIT]
    assert long == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_class_over_600_lines(path: Path) -> None:
    long = [(name, n) for name, n in _lengths(path, (ast.ClassDef,)) if n > CLASS_LIMIT]
    assert long == []


def test_the_connection_has_at_most_40_attributes() -> None:
    # compiled with mypyc, a native class lists its attributes in __mypyc_attrs__
    declared = getattr(Connection, "__slots__", None) or Connection.__mypyc_attrs__  # type: ignore[attr-defined]
    slots = set(declared) - {"__dict__", "__weakref__"}
    assert len(slots) <= CONNECTION_ATTRIBUTES, sorted(slots)
    # and no attribute lives outside them: the "__dict__" fallback stays unused
    conn = Connection(Config(), local_port=1, remote_port=2)
    conn.connect(0.0)
    conn.datagrams_to_send(0.0)
    assert not getattr(conn, "__dict__", {})


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    long_source = tmp_path / "long.py"
    long_source.write_text("def f() -> None:\n" + "    x = 1\n" * 70
                           + "class C:\n" + "    y = 1\n" * 601)
    lengths = dict(_lengths(long_source, (ast.FunctionDef, ast.ClassDef)))
    assert lengths == {"f": 71, "C": 602}
    assert len(SOURCES) > 30  # the glob found the package
