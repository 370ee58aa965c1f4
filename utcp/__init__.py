"""utcp: TCP's reliable byte streams over UDP, for asyncio.

The public API is this module's names only (DESIGN §1).
"""

from utcp.config import Config
from utcp.connection import Stats
from utcp.state import State

__all__ = ["Config", "State", "Stats"]
__version__ = "0.1.0"
