"""cargowatch: composition root (settings, clock, errors, CLI) for the engine packages.

Data flows one way: broker -> ``telemetry`` (validate, dead-letter, store) -> ``rules``
(batched arrays) -> ``alerts`` (alarm life cycle, deadlines, webhooks) -> ``api`` (HTTP, live feed).
"""

from core.clock import Clock, ManualClock, SystemClock
from core.errors import CargowatchError

__all__ = ["CargowatchError", "Clock", "ManualClock", "SystemClock"]
