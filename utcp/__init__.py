"""utcp: TCP's reliable byte streams over UDP, for asyncio.

`utcp.open_connection` / `utcp.start_server` / `utcp.create_connection` /
`utcp.create_server` take the place of asyncio's; the public API is this module's
names only (docs/protocol.md §1). `utcp.compiled` says whether the core that runs is the
mypyc-compiled build (README, Install).
"""

# First, before any core module: refuses compiled modules older than their sources.
from utcp import _build
from utcp.aio.api import (
    Server,
    create_connection,
    create_server,
    open_connection,
    start_server,
)
from utcp.aio.transport import UtcpTransport
from utcp.config import Config
from utcp.state import State
from utcp.stats import Stats

__all__ = [
    "Config",
    "Server",
    "State",
    "Stats",
    "UtcpTransport",
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
]
compiled: bool = _build.compiled()
__version__ = "0.2.0.dev0"  # PEP 440; the one version source (pyproject reads it)
