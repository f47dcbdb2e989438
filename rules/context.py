"""What rule functions work on during one engine call."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rules.emit import Emitter
from rules.geometry import TripGeometry
from rules.state import DeviceTable, TripTable

__all__ = ["Ctx", "FlagKey", "Outcome"]

FlagKey = tuple[str, int, int | None]

# Position states reported per fix (PositionUpdate.state).
ON_ROUTE, OFF_ROUTE, STOPPED, IDLE = 0, 1, 2, 3
STATE_NAMES = ("on_route", "off_route", "stopped", "idle")


@dataclass(slots=True)
class Outcome:
    """Per message of a run: duplicates found against state; per fix: valid for rules,
    position state and route distance."""

    dup: npt.NDArray[np.bool_]
    valid: npt.NDArray[np.bool_]
    state: npt.NDArray[np.int8]
    dist: npt.NDArray[np.float64]
    lock_dup: npt.NDArray[np.bool_]

    @classmethod
    def new(cls, n_fixes: int, n_locks: int) -> Outcome:
        return cls(
            np.zeros(n_fixes, bool),
            np.zeros(n_fixes, bool),
            np.full(n_fixes, IDLE, np.int8),
            np.full(n_fixes, np.nan),
            np.zeros(n_locks, bool),
        )


@dataclass(slots=True)
class Ctx:
    """Engine tables plus the per-call collectors (events, flags, status changes)."""

    trips: TripTable
    devices: DeviceTable
    geometry: TripGeometry
    emit: Emitter
    default_rules: npt.NDArray[np.float64]
    flagged: list[tuple[FlagKey, str]] = field(default_factory=list)
    status_changed: set[int] = field(default_factory=set)

    @property
    def now_ms(self) -> int:
        return self.emit.now_ms
