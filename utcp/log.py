"""structlog wiring. Off by default, and then a single attribute test per call site."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Whether the log is on: `enabled()` answers it, and code compiled with mypyc reads it
# without a call into this interpreted module (`Connection.set_state`, at each of a
# connection's transitions)
on = False
_logger: Any = structlog.get_logger("utcp")


def enabled() -> bool:
    return on


def emit(event: str, **fields: Any) -> None:
    """Log one event; callers test `enabled()` first so disabled logging costs nothing."""
    _logger.info(event, **fields)


def configure(*, json: bool = False, level: int | str = logging.INFO, stream: Any = None,
              processors: list[Any] | None = None) -> None:
    """Turn utcp's event log on. `processors` replaces the rendering chain (tests capture)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    chain = processors if processors is not None else [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        renderer,
    ]
    global _logger, on
    _logger = structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
    on = True


def disable() -> None:
    global on
    on = False
