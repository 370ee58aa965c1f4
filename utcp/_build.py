"""Which build of the core runs, and never a stale compiled one (issue #13).

setup.py compiles the core with mypyc and writes `_mypyc_build.json` beside it: the sha256 of
each source it compiled. Python imports `x.cpython-311-*.so` in preference to `x.py` in the
same directory, so in a checkout built in place (`UTCP_COMPILE=1 pip install -e .`) an edit to
`x.py` would silently not run. Before any core module is imported, `utcp/__init__` imports
this module, which compares the recorded hashes with the sources beside the compiled modules;
on any difference (or with no record, or with `UTCP_PURE_PYTHON=1` set) every compiled module
is refused and the sources load instead. All of them, not only the edited one: mypyc calls
between the modules it compiled together bypass Python's import, so a mixture would still
run old code. A hash, not an mtime: a checkout, a copy or a wheel install rewrites mtimes.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MANIFEST = "_mypyc_build.json"  # setup.py's name for it
PURE_SWITCH = "UTCP_PURE_PYTHON"
_PACKAGE = Path(__file__).resolve().parent


class _SourceFinder:
    """Finds the refused modules' sources ahead of the path finder, which would pick the
    compiled file. (A meta path finder needs only `find_spec`; importlib.abc, json and
    hashlib are left unimported at startup, as a pure-Python install never needs them.)"""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _compiled_beside_source() -> dict[str, Path]:
    """module name -> source, for every compiled module that has its source beside it (mypyc's
    shared library has none, and a wheel without sources has nothing to refuse)."""
    found: dict[str, Path] = {}
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for directory, subdirs, files in os.walk(_PACKAGE):
        subdirs[:] = [name for name in subdirs if name != "__pycache__"]
        for name in files:
            if not name.endswith(suffixes):
                continue
            source = Path(directory, name.split(".", 1)[0] + ".py")
            if source.is_file():
                parts = source.relative_to(_PACKAGE.parent).with_suffix("").parts
                found[".".join(parts)] = source
    return found


def _recorded() -> dict[str, str] | None:
    import json

    try:
        record = json.loads((_PACKAGE / MANIFEST).read_text(encoding="utf-8"))
        modules = record["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return modules if isinstance(modules, dict) else None


def _refusal(compiled: dict[str, Path]) -> str:
    """Why the compiled modules must not run; empty if they may."""
    if os.environ.get(PURE_SWITCH, "").strip().lower() in {"1", "true", "yes", "on"}:
        return ""  # asked for: no warning, the caller knows
    import hashlib

    recorded = _recorded()
    if recorded is None:
        return f"no readable {MANIFEST} records what was compiled"
    changed = sorted(name for name, source in compiled.items()
                     if recorded.get(name) != hashlib.sha256(source.read_bytes()).hexdigest())
    if changed:
        return f"{', '.join(changed)} changed since compiled"
    return ""


def _guard() -> bool:
    """Installs the source finder if the compiled modules must not run; True if they may."""
    compiled = _compiled_beside_source()
    if not compiled:
        return False
    pure = os.environ.get(PURE_SWITCH, "").strip().lower() in {"1", "true", "yes", "on"}
    reason = _refusal(compiled)
    if not pure and not reason:
        return True
    sys.meta_path.insert(0, _SourceFinder(compiled))
    if reason:
        warnings.warn(f"utcp: running the pure-Python core, not the compiled one: {reason} "
                      "(rebuild: UTCP_COMPILE=1 pip install -e .)", RuntimeWarning,
                      stacklevel=2)
    return False


_ALLOWED = _guard()


def compiled() -> bool:
    """Whether the core modules that run are mypyc's: allowed by the guard, and each one
    recorded as compiled and already imported is the extension module."""
    if not _ALLOWED:
        return False
    recorded = _recorded()
    if not recorded:
        return False
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return all(str(getattr(sys.modules[name], "__file__", "")).endswith(suffixes)
               for name in recorded if name in sys.modules)
