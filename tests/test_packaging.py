"""utcp as users install it (issue 14, item 5).

`python -m build` makes the wheel and the sdist from a copy of this tree; their file lists are
checked (`py.typed` and the LICENSE in the wheel, no tests there; docs, tests, examples,
benchmarks, README, CHANGELOG and LICENSE in the sdist). Then the README's own install line
puts the wheel in a fresh venv (no system site-packages, so nothing of this checkout or of the
developer's environment can stand in for what the wheel lacks), and a smoke test runs there:
a loopback echo through `utcp.start_server` / `utcp.open_connection`, `utcp --version` and
`python -m utcp perf -n 1M` against its in-process server; mypy checks user code against the
installed wheel's annotations. `python -m build` builds the wheel from the sdist, so a wheel
that works also shows the sdist builds.

The build backend and the dependencies come from the registry through pip's cache (a warm
cache makes each step take seconds); the whole module takes ~30 s on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import utcp

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT = 600.0  # one build or install on a loaded 2-core machine (a mypyc wheel: ~2 min)

pytestmark = pytest.mark.timeout(900)

# left behind by tools, or made by a build: not part of the project
_JUNK_DIRS = {".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
              ".hypothesis", ".venv", "venv"}
_TOP_JUNK = {"build", "dist"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory).resolve() == ROOT
    return {name for name in names
            if name in _JUNK_DIRS or name.endswith((".egg-info", ".pyc", ".pcap", ".so"))
            or name == "_mypyc_build.json"
            or (top and name in _TOP_JUNK)}


def _project_files(root: Path) -> set[str]:
    """The files a sdist must carry from docs/, tests/, examples/ and benchmarks/."""
    found = set()
    for top in ("docs", "tests", "examples", "benchmarks"):
        for path in (root / top).rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and not _ignore(str(path.parent), [path.name]) \
                    and not set(rel.parts) & _JUNK_DIRS:
                found.add(rel.as_posix())
    return found


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         shell: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args[0] if shell else args, cwd=cwd, env=env, shell=shell,
                            capture_output=True, text=True, timeout=STEP_TIMEOUT,
                            executable="/bin/bash" if shell else None)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-4000:]}")
    return result


def _readme_install_block() -> list[str]:
    """The shell lines of the README's Install section: the test runs them as written."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Install\n(.*?)^## ", readme, re.S | re.M)
    assert section, "README.md has no '## Install' section"
    block = re.search(r"```sh\n(.*?)```", section.group(1), re.S)
    assert block, "README.md's Install section has no sh block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


def _wheel_is_compiled(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as archive:
        return any(name.endswith(".so") for name in archive.namelist())


@dataclass(frozen=True)
class Built:
    src: Path      # the copied tree, as a clone would be
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (it is in the dev extra: "
                    "pip install -e '.[dev]')")
    # a copy, so that the build's egg-info and dist/ never land in the developer's tree
    src = tmp_path_factory.mktemp("pkg") / "utcp-src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    # the README's `python -m build`, run by this interpreter (which has `build`)
    assert any(line.endswith("python -m build") for line in _readme_install_block())
    _run([sys.executable, "-m", "build", "."], cwd=src)
    wheels = sorted((src / "dist").glob("utcp-*.whl"))
    sdists = sorted((src / "dist").glob("utcp-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted((src / "dist").iterdir())
    return Built(src, wheels[0], sdists[0])


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh venv holding the wheel (installed by the README's line) and its dependencies;
    yields the environment that runs its `python` and `utcp` first on PATH."""
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip("this Python cannot make a venv with pip (no ensurepip; Debian: "
                    "apt-get install python3-venv)")
    where = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", str(where)], cwd=where.parent)
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}}
    env.update(VIRTUAL_ENV=str(where), PATH=f"{where / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    install = [line for line in _readme_install_block() if "install dist/utcp-" in line]
    assert install == ["python -m pip install dist/utcp-*.whl"], install
    _run([install[0]], cwd=built.src, env=env, shell=True)
    yield env


def test_wheel_files(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"utcp-{utcp.__version__}.dist-info"
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    # compiled with mypyc when the build machine could (tests/test_build_compiled.py): a
    # CPython- and platform-specific wheel carrying the compiled modules and their record
    if _wheel_is_compiled(built.wheel):
        assert re.fullmatch(rf"utcp-{re.escape(utcp.__version__)}-cp3\d+-cp3\d+-\w+\.whl",
                            built.wheel.name), built.wheel.name
        assert "utcp/_mypyc_build.json" in names
        assert any(re.fullmatch(r"utcp/connection\.cpython-.*\.so", name) for name in names)
    else:
        assert built.wheel.name == f"utcp-{utcp.__version__}-py3-none-any.whl"
    assert "utcp/py.typed" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    # the package and its metadata only: no tests, benchmarks, examples or docs (and, when
    # compiled, mypyc's shared library for the compiled modules)
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.startswith("utcp_core__mypyc.")} == {"utcp", dist_info}
    for module in ("utcp/__init__.py", "utcp/cli.py", "utcp/aio/api.py", "utcp/__main__.py"):
        assert module in names
    assert f"\nVersion: {utcp.__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    assert re.search(r"^Requires-Dist: cryptography\b", metadata, re.M)
    assert re.search(r"^Requires-Dist: structlog\b", metadata, re.M)
    assert "Classifier: Typing :: Typed" in metadata
    assert "utcp = utcp.cli:main" in entry_points


def test_sdist_files(built: Built) -> None:
    prefix = f"utcp-{utcp.__version__}/"
    with tarfile.open(built.sdist) as sdist:
        names = {name.removeprefix(prefix) for name in sdist.getnames()}
    for name in ("README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "MANIFEST.in",
                 "utcp/py.typed", "utcp/__init__.py", "docs/protocol.md",
                 "examples/echo_server.py", "tests/test_packaging.py", "tests/aio/util.py",
                 "benchmarks/README.md"):
        assert name in names, f"{name} is missing from {built.sdist.name}"
    missing = _project_files(built.src) - names
    assert not missing, f"{built.sdist.name} lacks {sorted(missing)}"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.endswith((".so", "_mypyc_build.json"))]


def test_wheel_in_fresh_venv(built: Built, venv: dict[str, str], tmp_path: Path) -> None:
    # run from an empty directory: `python -m` puts the cwd first on sys.path, and a
    # checkout there would be imported instead of the installed wheel
    script = tmp_path / "smoke.py"
    script.write_text(textwrap.dedent('''
        import asyncio
        import importlib.metadata
        import importlib.resources
        import sys
        from pathlib import Path

        import utcp

        PAYLOAD = bytes(range(256)) * 1024  # 256 KiB: many segments, and the FIN after them


        async def handle(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()


        async def echo():
            server = await utcp.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await utcp.open_connection("127.0.0.1", port)
            writer.write(PAYLOAD)
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(-1), 60)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            return echoed


        location = Path(utcp.__file__).resolve()
        assert Path(sys.prefix).resolve() in location.parents, location
        assert importlib.resources.files("utcp").joinpath("py.typed").is_file()
        assert importlib.metadata.version("utcp") == utcp.__version__
        assert asyncio.run(echo()) == PAYLOAD
        print("echoed", len(PAYLOAD), "utcp", utcp.__version__, "from", location)
    '''))
    smoke = _run(["python", str(script)], cwd=tmp_path, env=venv)
    assert f"echoed {256 * 1024} utcp {utcp.__version__}" in smoke.stdout
    # the README's check line, as written, with the venv's `utcp` and `python` first on PATH
    check = [line for line in _readme_install_block() if line.startswith("utcp --version")]
    assert check == ["utcp --version && python -m utcp perf -n 1M"], check
    result = _run([check[0]], cwd=tmp_path, env=venv, shell=True)
    lines = result.stdout.splitlines()
    build = "compiled with mypyc" if _wheel_is_compiled(built.wheel) else "pure Python"
    assert lines[0] == f"utcp {utcp.__version__} ({build})"
    assert re.search(r"1\.00 MBytes .* receiver", result.stdout), result.stdout
    _run(["python", "-m", "pip", "check"], cwd=tmp_path, env=venv)


def test_type_checkers_read_the_installed_wheel(venv: dict[str, str], tmp_path: Path) -> None:
    """PEP 561: with `py.typed` installed, mypy checks a user's calls against utcp's own
    annotations; without it, mypy skips the package and every utcp name is `Any`."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the dev extra: pip install -e '.[dev]')")
    # an empty directory, so that mypy can only find utcp where the venv installed it
    (tmp_path / "user_code.py").write_text(textwrap.dedent('''
        import utcp

        reveal_type(utcp.open_connection)
        wrong: int = utcp.Config()
    '''))
    python = Path(venv["VIRTUAL_ENV"]) / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(python),
         "--cache-dir", str(tmp_path / "cache"), "user_code.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert "py.typed" not in result.stdout, result.stdout
    assert re.search(r"Revealed type is .*StreamReader.*StreamWriter", result.stdout), \
        result.stdout
    assert 'expression has type "Config", variable has type "int"' in result.stdout, \
        result.stdout


def test_one_version_source() -> None:
    """pyproject takes the version from `utcp.__version__`, and the CLI says the same."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "utcp.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?",
                        utcp.__version__), utcp.__version__
    result = subprocess.run([sys.executable, "-m", "utcp", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    build = "compiled with mypyc" if utcp.compiled else "pure Python"
    assert result.stdout.strip() == f"utcp {utcp.__version__} ({build})"


def test_license_and_changelog() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} the utcp authors$", license_text, re.M)
    # Keep a Changelog: Unreleased first, then the releases, newest first, each dated
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, re.M)
    assert headings[0] == ("Unreleased", "")
    assert ("0.1.0", "2026-11-21") in headings
    released = [version for version, date in headings[1:] if date]
    assert released == [version for version, _ in headings[1:]]
