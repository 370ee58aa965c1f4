"""tests/conftest.py: the whole suite runs on pytest-xdist workers, a named file runs
in-process, and the tests sharing a module-scoped fixture (a mypyc build) share a worker.

Each case runs pytest in a subprocess on a small project of its own that has this
repository's conftest and its pytest options (pyproject's `addopts`).
"""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent.parent

RECORD = """
    import os
    from pathlib import Path

    import pytest

    LOG = Path(__file__).parent.parent / "log"


    def note(what: str) -> None:
        with LOG.open("a") as f:
            f.write(f"{what} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    addopts = options["ini_options"].get("addopts", [])
    pytester.makeini("[pytest]\ntestpaths = t\naddopts = " + " ".join(addopts) + "\n")
    t = pytester.mkdir("t")
    (t / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "2")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # this suite's own worker's
    return pytester


def _log(project: pytest.Pytester) -> list[str]:
    return (project.path / "log").read_text().splitlines()


def _write(project: pytest.Pytester, name: str, body: str) -> None:
    (project.path / "t" / name).write_text(textwrap.dedent(RECORD) + textwrap.dedent(body))


def test_the_whole_suite_runs_on_workers_a_named_file_in_process(
        project: pytest.Pytester) -> None:
    _write(project, "test_a.py", """
        @pytest.mark.parametrize("i", range(4))
        def test_a(i: int) -> None:
            note(f"test {i}")
    """)
    project.runpytest_subprocess("-q", "-p", "no:cacheprovider").assert_outcomes(passed=4)
    workers = {line.split()[-1] for line in _log(project)}
    assert workers <= {"gw0", "gw1"} and workers, workers
    (project.path / "log").unlink()
    project.runpytest_subprocess("-q", "-p", "no:cacheprovider",
                                 "t/test_a.py").assert_outcomes(passed=4)
    assert {line.split()[-1] for line in _log(project)} == {"main"}


def test_tests_sharing_a_module_fixture_share_a_worker(project: pytest.Pytester) -> None:
    _write(project, "test_b.py", """
        @pytest.fixture(scope="module")
        def built() -> str:
            note("built")  # a mypyc build, in the real suite
            return "wheel"


        @pytest.mark.parametrize("i", range(6))
        def test_uses_it(built: str, i: int) -> None:
            note(f"uses {i}")


        @pytest.mark.parametrize("i", range(6))
        def test_other(i: int) -> None:
            note(f"other {i}")
    """)
    project.runpytest_subprocess("-q", "-p", "no:cacheprovider",
                                 "-n", "2").assert_outcomes(passed=12)
    log = _log(project)
    assert len([line for line in log if line.startswith("built ")]) == 1, log
    assert len({line.split()[-1] for line in log if line.startswith("uses ")}) == 1, log
