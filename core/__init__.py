"""The base every cargowatch package may import: the error tree and the injectable clock.

It imports nothing of the project's own; the composition root (``cargowatch``) imports
everything else.
"""

from core.clock import Clock, ManualClock, ScaledClock, SystemClock
from core.errors import CargowatchError, Conflict, InvalidInput, NotFound, Unavailable

__all__ = [
    "CargowatchError",
    "Clock",
    "Conflict",
    "InvalidInput",
    "ManualClock",
    "NotFound",
    "ScaledClock",
    "SystemClock",
    "Unavailable",
]
