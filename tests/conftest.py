"""The whole suite runs on every CPU (pytest-xdist); a file or a test named runs in-process.

`python -m pytest -q` (the README's command, and CI's) gives pytest no path, so it runs
`testpaths`: then, unless `-n` was given, one worker per usable CPU is started (`-n auto`;
PYTEST_XDIST_AUTO_NUM_WORKERS overrides the count). Most tests wait on sockets, timers or
child processes rather than compute, and the rest are spread over the cores. Naming a file,
a directory or a test (`python -m pytest -q tests/test_wire.py`) keeps the usual single
process: the workers' start-up (each imports and collects) would cost more than it saves,
and `--pdb`, `-s` and breakpoints work as usual. That is why it is decided here rather than
with `-n auto` in pyproject's `addopts`; `-n 0` or `-p no:xdist` turns it off for a whole
run, `-n N` picks the count.

The tests of a module that share a module-scoped fixture (a wheel built with mypyc, a
venv, a recorded lossy transfer) are kept on one worker (`--dist loadgroup`, in pyproject's
`addopts` so that the workers see it too): a worker that ran only some of them would make
the fixture again, and a mypyc build costs a minute or two of CPU.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # Runs before xdist's own pytest_cmdline_main (a conftest registers after the plugin,
    # and hooks of the same kind run last-registered first), which turns `numprocesses`
    # into the workers. A worker has `workerinput`: it must not start workers of its own.
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if (config.option.numprocesses is None
            and config.args_source is pytest.Config.ArgsSource.TESTPATHS
            and not config.option.collectonly):
        config.option.numprocesses = "auto"  # xdist drops it again under --pdb


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
