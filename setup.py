"""Build: the sans-IO core compiled with mypyc when it can be, pure Python when not.

pyproject.toml holds the project's metadata; this file only decides `ext_modules`.

- `COMPILED_DIRS` minus `PURE_MODULES` is the one list of compiled modules: a new core module
  is compiled without a change here, and leaving one out is a one-line change.
- `UTCP_PURE_PYTHON=1` never compiles; `UTCP_COMPILE=1` compiles even for an editable install
  and turns a compile failure into a failed build (CI uses it, so a broken compile cannot pass
  as a second pure-Python run). Otherwise a regular install compiles when a C compiler is
  found, and any failure (mypyc's type check, the C compiler) falls back to the pure-Python
  package with a warning: a slower install, never a broken one.
- An editable install (`pip install -e .`) is pure Python by default: a compiled module next
  to its source is what Python imports, so an edit to the source would silently not run.
  `utcp/_build.py` guards the forced case at import time with the hashes recorded here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

# The per-segment core and the asyncio adapter that drives it: every module of these
# directories is compiled unless listed below.
COMPILED_DIRS = ("utcp", "utcp/congestion", "utcp/aio")
# Left pure: package inits and the import guard; tools that run once per process (cli, log,
# pcap, plot, plotdata, workers); the handshake crypto, whose work is in `cryptography`'s C;
# errors.py, exceptions that mypyc cannot compile as native classes; aio/api.py and
# aio/shutdown.py, what runs once per connection or per loop (the opening and accepting
# calls with their asyncio compatibility shims; the loop's shutdown hook, an async
# generator, which mypyc does not compile); config.py,
# whose checks must see what the user passed (a native dataclass converts True to 1 before
# __post_init__ can refuse it), and which is read, not run, per segment.
# Paths from the repository's root, so a new module of the same name elsewhere is compiled.
PURE_MODULES = frozenset({
    "utcp/__init__.py", "utcp/__main__.py", "utcp/_build.py", "utcp/cli.py", "utcp/log.py",
    "utcp/pcap.py", "utcp/plot.py", "utcp/plotdata.py", "utcp/workers.py", "utcp/secure.py",
    "utcp/crypto.py", "utcp/errors.py", "utcp/config.py", "utcp/congestion/__init__.py",
    "utcp/aio/__init__.py", "utcp/aio/api.py", "utcp/aio/shutdown.py",
})
# mypyc's shared library for the compiled modules: utcp_core__mypyc.*.so, beside the package
GROUP = "utcp_core"
# Written beside the compiled modules; utcp/_build.py reads it (keep the two names equal).
MANIFEST = "_mypyc_build.json"
# Commands that produce importable modules; metadata-only runs (egg_info, dist_info, sdist)
# must not pay for a mypyc run (pip runs setup.py three times for one wheel).
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install", "editable_wheel", "develop"}
_EDITABLE_COMMANDS = {"editable_wheel", "develop"}


def compiled_sources() -> list[str]:
    return sorted(source for directory in COMPILED_DIRS
                  for path in (HERE / directory).glob("*.py")
                  if (source := path.relative_to(HERE).as_posix()) not in PURE_MODULES)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _warn(message: str) -> None:
    # stderr, with a banner: pip shows a backend's output only with -v, or when it fails,
    # but `python -m build` and CI logs show it as is
    print(f"\n*** utcp: {message}\n", file=sys.stderr, flush=True)


def _have_compiler() -> bool:
    # CC as the build will run it: the environment's first, then the interpreter's own
    command = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    return bool(command) and shutil.which(command[0]) is not None


def _source_hashes(sources: list[str]) -> dict[str, str]:
    """module name -> sha256 of the source mypyc compiled, for the import-time staleness
    check (a hash, not an mtime: a checkout or a copy changes mtimes, not content)."""
    return {source.removesuffix(".py").replace("/", "."):
            hashlib.sha256((HERE / source).read_bytes()).hexdigest()
            for source in sources}


class BuildExt(build_ext):
    """Falls back to the pure-Python package when the C compiler fails, and records what was
    compiled, beside the compiled modules."""

    forced = False
    hashes: dict[str, str] = {}

    def run(self) -> None:
        if not self.extensions:
            super().run()
            return
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, a missing header: anything
            if self.forced:
                raise
            _warn(f"compiling the core with mypyc failed ({exc!r}); installing the "
                  "pure-Python build, which behaves the same, only slower")
            self._drop_outputs()
            return
        problem = self._smoke_import()
        if problem:
            if self.forced:
                raise SystemExit(f"utcp: the compiled core does not import: {problem}")
            _warn(f"the compiled core does not import ({problem}); installing the pure-Python "
                  "build, which behaves the same, only slower")
            self._drop_outputs()
            return
        self._write_manifest()

    def _smoke_import(self) -> str:
        """Imports every compiled module in a child process: mypyc accepts some code it then
        compiles wrong (a native subclass of `deque` dies at import with SIGSEGV), and a
        wheel whose `import utcp` crashes would be the broken install this file exists to
        avoid. A copy of the package with an empty `__init__` imports the core alone; the
        isolated build environment lacks the runtime dependencies (cryptography, structlog),
        which stand-in modules replace (skipping the modules that import them would skip
        connection.py, the one that crashed)."""
        modules = sorted(self.hashes)
        script = textwrap.dedent(f"""
            import importlib, importlib.abc, importlib.machinery, sys, types

            class Stub:
                def __call__(self, *args, **kwargs): return self
                def __getattr__(self, name): return self

            class StubModule(types.ModuleType):
                __path__ = []
                def __getattr__(self, name):
                    if name.startswith("__"):
                        raise AttributeError(name)
                    return Stub()

            class Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
                # last on the path: only what the build environment lacks
                def find_spec(self, name, path, target=None):
                    if name.partition(".")[0] == "utcp":
                        return None
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)
                def create_module(self, spec): return StubModule(spec.name)
                def exec_module(self, module): pass

            sys.meta_path.append(Stubs())
            for name in {modules!r}:
                module = importlib.import_module(name)
                assert module.__file__.endswith({tuple(EXTENSION_SUFFIXES)!r}), module
            """)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "utcp"
            shutil.copytree(self._package_dir(), copy,
                            ignore=shutil.ignore_patterns("__pycache__"))
            # and mypyc's shared library for the group, beside the package
            for shared in self._package_dir().parent.glob(f"{GROUP}__mypyc.*"):
                shutil.copy2(shared, tmp)
            (copy / "__init__.py").write_text("", encoding="utf-8")
            result = subprocess.run([sys.executable, "-c", script], cwd=tmp,
                                    capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            return ""
        return (f"exit status {result.returncode}: "
                f"{result.stderr.strip().splitlines()[-1:] or ['no message']}")

    def _package_dir(self) -> Path:
        # where utcp/connection's compiled module went: build/lib... or, in place, utcp/
        return Path(self.get_ext_fullpath("utcp.connection")).parent

    def _write_manifest(self) -> None:
        path = self._package_dir() / MANIFEST
        path.write_text(json.dumps({"compiler": "mypyc", "modules": self.hashes},
                                   indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def _drop_outputs(self) -> None:
        for ext in self.extensions:
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
        (self._package_dir() / MANIFEST).unlink(missing_ok=True)
        self.extensions = []
        self.distribution.ext_modules = []
        # bdist_wheel chose a platform tag before the build; a pure wheel says py3-none-any
        wheel = self.distribution.command_obj.get("bdist_wheel")
        if wheel is not None:
            wheel.root_is_pure = True  # type: ignore[attr-defined]

    def get_outputs(self) -> list[str]:
        outputs: list[str] = super().get_outputs()
        if self.extensions:
            outputs.append(str(self._package_dir() / MANIFEST))
        return outputs


def _ext_modules() -> tuple[list[Any], bool]:
    """The extensions to build, and whether a failure must fail the build."""
    commands = set(sys.argv[1:])
    if not commands & _BUILD_COMMANDS:
        return [], False
    if _flag("UTCP_PURE_PYTHON"):
        return [], False
    forced = _flag("UTCP_COMPILE")
    if commands & _EDITABLE_COMMANDS and not forced:
        _warn("editable install: pure Python (set UTCP_COMPILE=1 to compile it)")
        return [], False
    if not _have_compiler():
        if forced:
            raise SystemExit("utcp: UTCP_COMPILE=1 but no C compiler was found")
        _warn("no C compiler found; installing the pure-Python build")
        return [], False
    sources = compiled_sources()
    BuildExt.hashes = _source_hashes(sources)
    try:
        from mypyc.build import mypycify

        # The strict type check is `mypy utcp`'s job; here, a dependency missing from the
        # isolated build environment (cryptography's types) only makes a name `Any`, which
        # the strict flags of pyproject's [tool.mypy] would otherwise report.
        relaxed = ["--ignore-missing-imports", "--no-warn-return-any", "--no-warn-unused-ignores",
                   "--allow-subclassing-any", "--allow-untyped-calls"]
        # One shared library for the group, at the top level: named inside the package
        # ("utcp._core"), mypyc (2.4) gives every compiled module a wrong `__file__`
        # (utcp/utcp/x.so).
        return mypycify([*relaxed, *sources], opt_level="3", group_name=GROUP), forced
    except BaseException as exc:  # mypy reports type errors by SystemExit
        if forced:
            raise
        _warn(f"mypyc could not compile the core ({exc!r}); installing the pure-Python build")
        return [], False


ext_modules, BuildExt.forced = _ext_modules()
setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
