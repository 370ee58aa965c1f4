"""The mypyc build (issue #13, "Compile it"): switches, fallbacks, `utcp.compiled`, and no
stale compiled module in place of an edited source.

Every build runs in a copy of this tree (as `tests/test_packaging.py` does), never in the
checkout. The compiled copy is built once for the module, the way a developer gets one
(`UTCP_COMPILE=1 pip install -e .`, into a venv that sees this interpreter's packages); that
compile takes a minute or two of CPU, the pure builds seconds. When this checkout is itself
compiled in place (CI's compiled run, `.ci/run`), the copy takes its compiled modules
instead of compiling again.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import utcp

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT = 900.0  # a mypyc compile on a loaded 2-core machine; normally ~1 min

pytestmark = pytest.mark.timeout(2400)

_JUNK = shutil.ignore_patterns(".git", "__pycache__", ".mypy_cache", ".pytest_cache",
                               ".ruff_cache", ".hypothesis", "build", "dist", "*.egg-info",
                               "*.so", "_mypyc_build.json", "*.pcap", ".venv", "venv")
_JUNK_BUT_BUILD = shutil.ignore_patterns(
    ".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "build", "dist", "*.egg-info", "*.pcap", ".venv", "venv")


def _copy_tree(where: Path, *, with_build: bool = False) -> Path:
    src = where / "utcp-src"
    shutil.copytree(ROOT, src, ignore=_JUNK_BUT_BUILD if with_build else _JUNK)
    return src


def _checkout_compiled_in_place() -> bool:
    return utcp.compiled and (ROOT / "utcp" / "_mypyc_build.json").is_file()


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "UTCP_PURE_PYTHON", "UTCP_COMPILE", "CC"}}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


def _run(args: list[str], *, cwd: Path, env: dict[str, str],
         check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=STEP_TIMEOUT)
    if check:
        assert result.returncode == 0, (
            f"{args} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}")
    return result


def _need_build() -> None:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (dev extra)")


def _build_wheel(src: Path, env: dict[str, str]) -> tuple[Path, str]:
    result = _run([sys.executable, "-m", "build", "--wheel", "."], cwd=src, env=env)
    wheels = sorted((src / "dist").glob("utcp-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], result.stdout + result.stderr


def _compiled_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist()
                if name.endswith(".so") or name.endswith("_mypyc_build.json")]


# --- the switches and the fallbacks: a pure wheel, tagged as one, with the reason said


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("UTCP_PURE_PYTHON", "1", None),
    ("CC", "/nonexistent/cc", "no C compiler found"),
    # mypyc runs and writes its C; the compiler then fails on it
    ("CC", "false", "compiling the core with mypyc failed"),
])
def test_pure_wheel(tmp_path: Path, variable: str, value: str, said: str | None) -> None:
    _need_build()
    src = _copy_tree(tmp_path)
    wheel, output = _build_wheel(src, _env(**{variable: value}))
    assert wheel.name == f"utcp-{utcp.__version__}-py3-none-any.whl", wheel.name
    assert _compiled_names(wheel) == []
    with zipfile.ZipFile(wheel) as archive:
        assert "utcp/connection.py" in archive.namelist()
        assert "Root-Is-Purelib: true" in archive.read(
            f"utcp-{utcp.__version__}.dist-info/WHEEL").decode()
    if said is not None:
        assert f"*** utcp: {said}" in output, output[-3000:]


def test_editable_install_is_pure_by_default(tmp_path: Path) -> None:
    """`pip install -e .` compiles nothing (unless UTCP_COMPILE=1): the sources it links to
    are what runs, edits included."""
    src = _copy_tree(tmp_path)
    venv = _venv(tmp_path / "venv")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-e", "."],
         cwd=src, env=_env())
    assert not list((src / "utcp").rglob("*.so"))
    assert not (src / "utcp" / "_mypyc_build.json").exists()


# --- the compiled build, in place in a copy, as `UTCP_COMPILE=1 pip install -e .` makes it


def _venv(where: Path) -> Path:
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip("this Python cannot make a venv with pip (no ensurepip)")
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(where)], cwd=where.parent,
         env=_env())
    return where


@dataclass(frozen=True)
class Compiled:
    src: Path
    python: Path
    env: dict[str, str]

    def probe(self, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`import utcp` in a fresh interpreter, from the copy (first on sys.path),
        reporting what ran."""
        script = textwrap.dedent("""
            import utcp, utcp.connection, utcp.seq
            print("compiled", utcp.compiled)
            print("connection", utcp.connection.__file__)
            print("edited", getattr(utcp.seq, "EDITED_SINCE_COMPILED", None))
        """)
        return _run([str(self.python), "-W", "always", "-c", script], cwd=self.src,
                    env=env or self.env)

    def version(self, *, env: dict[str, str] | None = None) -> str:
        result = _run([str(self.python), "-m", "utcp", "--version"], cwd=self.src,
                      env=env or self.env)
        return result.stdout.strip()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compiled]:
    if shutil.which((os.environ.get("CC") or "cc").split()[0]) is None:
        pytest.skip("no C compiler: nothing to compile")
    where = tmp_path_factory.mktemp("compiled")
    if _checkout_compiled_in_place():
        yield Compiled(_copy_tree(where, with_build=True), Path(sys.executable), _env())
        return
    src = _copy_tree(where)
    venv = _venv(where / "venv")
    python = venv / "bin" / "python"
    env = _env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    _run([str(python), "-m", "pip", "install", "--no-deps", "-e", "."], cwd=src,
         env={**env, "UTCP_COMPILE": "1"})
    yield Compiled(src, python, env)


def test_compiled_in_place(compiled: Compiled) -> None:
    assert (compiled.src / "utcp" / "_mypyc_build.json").is_file()
    assert list((compiled.src / "utcp").glob("connection.*.so"))
    probe = compiled.probe()
    assert "compiled True" in probe.stdout, probe.stdout + probe.stderr
    assert re.search(r"^connection .*/connection\.cpython-[^/]*\.so$", probe.stdout, re.M), \
        probe.stdout
    assert "RuntimeWarning" not in probe.stderr, probe.stderr
    # the CLI's version line says which build runs
    assert compiled.version() == f"utcp {utcp.__version__} (compiled with mypyc)"


def test_pure_switch_at_run_time(compiled: Compiled) -> None:
    """UTCP_PURE_PYTHON=1 when importing runs the sources though compiled modules sit
    beside them (CI runs the suite both ways from one in-place build)."""
    probe = compiled.probe(env={**compiled.env, "UTCP_PURE_PYTHON": "1"})
    assert "compiled False" in probe.stdout, probe.stdout
    assert re.search(r"^connection .*/connection\.py$", probe.stdout, re.M), probe.stdout
    assert "RuntimeWarning" not in probe.stderr, probe.stderr
    assert compiled.version(env={**compiled.env, "UTCP_PURE_PYTHON": "1"}) == \
        f"utcp {utcp.__version__} (pure Python)"


def test_edited_source_is_not_shadowed(compiled: Compiled) -> None:
    """An edit after the compile runs: every compiled module is refused, with a warning
    that names the edited one, and the edit is undone when the source is restored."""
    seq = compiled.src / "utcp" / "seq.py"
    original = seq.read_text(encoding="utf-8")
    try:
        seq.write_text(original + "\nEDITED_SINCE_COMPILED = 1\n", encoding="utf-8")
        probe = compiled.probe()
        assert "edited 1" in probe.stdout, probe.stdout + probe.stderr
        assert "compiled False" in probe.stdout, probe.stdout
        # all of them: mypyc's calls between the compiled modules bypass the import system
        assert re.search(r"^connection .*/connection\.py$", probe.stdout, re.M), probe.stdout
        assert "RuntimeWarning" in probe.stderr and "utcp.seq changed since compiled" in \
            probe.stderr, probe.stderr
    finally:
        seq.write_text(original, encoding="utf-8")
    probe = compiled.probe()
    assert "compiled True" in probe.stdout and "edited None" in probe.stdout, probe.stdout


def test_no_build_record_refuses(compiled: Compiled) -> None:
    record = compiled.src / "utcp" / "_mypyc_build.json"
    saved = record.read_bytes()
    try:
        record.unlink()
        probe = compiled.probe()
        assert "compiled False" in probe.stdout, probe.stdout
        assert "no readable _mypyc_build.json" in probe.stderr, probe.stderr
    finally:
        record.write_bytes(saved)


def test_this_checkout_says_which_build_runs() -> None:
    """`utcp --version` and `utcp.compiled` agree for whatever build runs the suite."""
    result = subprocess.run([sys.executable, "-m", "utcp", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    build = "compiled with mypyc" if utcp.compiled else "pure Python"
    assert result.stdout.strip() == f"utcp {utcp.__version__} ({build})"
    source = sys.modules["utcp.connection"].__file__
    assert source is not None
    assert source.endswith(".py") is not utcp.compiled
