"""Real UDP sockets on loopback; every async test runs on asyncio's loop and on uvloop.

pytest-asyncio (>= 1.4) parametrizes each async test here with the loop factories this
hook returns, so a test id ends in `[asyncio]` or `[uvloop]`. A pytest-asyncio without
the hook rejects it as unknown, rather than silently running on one loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import pytest
import uvloop

from tests.aio.util import StateLog
from utcp import log

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return LOOP_FACTORIES


@pytest.fixture
def state_log() -> Iterator[StateLog]:
    """utcp's structlog events (state changes...) captured for the test, then logging off."""
    recorder = StateLog()
    log.configure(processors=[recorder])
    try:
        yield recorder
    finally:
        log.disable()

