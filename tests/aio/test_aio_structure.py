"""The asyncio layer's structure (issue #13): no import circle among its modules, and
no module reaching into another's private names.

Static checks over the source (ast), so an import made only for type checking counts
too: a circle hidden behind TYPE_CHECKING still means neither module can be read, or
loaded by a tool that evaluates annotations, without the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import utcp.aio

AIO_DIR = Path(utcp.aio.__file__).parent
PACKAGE = "utcp.aio"
MODULES = sorted(f"{PACKAGE}.{p.stem}" for p in AIO_DIR.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """The utcp.aio submodules `module` imports, at any level (TYPE_CHECKING included)."""
    tree = ast.parse((AIO_DIR / (module.rsplit(".", 1)[1] + ".py")).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = PACKAGE if node.level == 1 else PACKAGE.rsplit(".", node.level - 1)[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from utcp.aio import batch` imports the submodule batch
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_sees_imports() -> None:
    # the check below is only worth something if it finds the imports that do exist
    assert f"{PACKAGE}.port" in _imports(f"{PACKAGE}.transport")
    assert f"{PACKAGE}.batch" in _imports(f"{PACKAGE}.port")
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_circle_among_aio_modules() -> None:
    graph = {module: _imports(module) for module in MODULES}
    assert _find_cycle(graph) is None, graph


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    """In a fresh interpreter, importing one module loads no other aio module it does
    not need, and loads it completely (nothing half-initialised by a circle)."""
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"mod = sys.modules[{module!r}]\n"
        "assert mod.__spec__ is not None and not getattr(mod.__spec__, '_initializing', False)\n"
        "print('ok')\n"
    )
    root = AIO_DIR.parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# asyncio keeps these on its own objects with no public accessor; each is read in one
# small compatibility function of api.py, and nowhere else.
ASYNCIO_COMPAT = {
    "_ssl_app_transport": {"_app_transport"},
    "_stream_protocol_is_server": {"_client_connected_cb"},
    "_stream_protocol_replace_writer": {"_replace_writer"},
    "_stream_writer_protocol": {"_protocol"},
    "_stream_writer_set_transport": {"_transport"},
}


def _private_uses(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, name) for every `x._name` where x is not self/cls."""
    found: list[tuple[int, str, str]] = []

    def walk(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                     else function)
            if (isinstance(child, ast.Attribute) and child.attr.startswith("_")
                    and not child.attr.startswith("__")
                    and not (isinstance(child.value, ast.Name)
                             and child.value.id in ("self", "cls"))):
                found.append((child.lineno, function, child.attr))
            walk(child, inner)

    walk(ast.parse(source), "")
    return found


def test_the_private_check_sees_private_uses() -> None:
    source = "def f(t):\n    t._attach(1)\n    self._ok()\n    t.public()\n"
    assert _private_uses(source) == [(2, "f", "_attach")]


@pytest.mark.parametrize("module", [*MODULES, f"{PACKAGE}.__init__"])
def test_no_private_names_across_objects(module: str) -> None:
    """A module calls other modules' and objects' public names only (issue #13);
    asyncio's private ones only inside their compatibility functions."""
    source = (AIO_DIR / (module.rsplit(".", 1)[1] + ".py")).read_text()
    bad = [(line, function, name) for line, function, name in _private_uses(source)
           if name not in ASYNCIO_COMPAT.get(function, set())]
    assert bad == []
