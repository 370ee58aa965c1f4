"""The asyncio adapter: UDP socket I/O, the Transport, and the public calls."""

from utcp.aio.api import (
    Server,
    create_connection,
    create_server,
    open_connection,
    start_server,
)
from utcp.aio.transport import UtcpTransport

__all__ = ["Server", "UtcpTransport", "create_connection", "create_server",
           "open_connection", "start_server"]
