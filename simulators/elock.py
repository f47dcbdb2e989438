"""E-lock behaviour: the custody sequence of a sealed trip, heartbeats, battery.

A trip's lock seals (``locked``) inside the origin fence before departure, opens with an RFID
card (``unlocked``, ``rfid``) at each consignee after the truck has stopped there, closes
again before the truck leaves an intermediate consignee, and opens for good at the last one.
Between those it sends ``heartbeat`` events. Event times carry milliseconds (a lock event is
never at the same instant as a whole-second GPS fix of a combined unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulators.roads import IntArray

#: battery level at which a lock reports low battery (contract §4)
LOW_BATTERY_PCT = 15


@dataclass(frozen=True, slots=True)
class LockAction:
    """One lock event the script will send. ``positioned=False``: the lock has no GPS
    position to add (jammed), so ``lat``/``lon`` are left out."""

    ts_ms: int
    event: str
    method: str | None = None
    positioned: bool = True


@dataclass(frozen=True, slots=True)
class StopVisit:
    """The truck stands at a consignee from ``arrive_ms`` to ``leave_ms``."""

    stop_id: str
    arrive_ms: int
    leave_ms: int
    last: bool


def _ms(rng: np.random.Generator, lo_s: float, hi_s: float) -> int:
    """A random delay in whole milliseconds that is never a whole second."""
    return int(rng.uniform(lo_s, hi_s)) * 1000 + int(rng.integers(1, 1000))


def custody(
    seal_ms: int, visits: Sequence[StopVisit], rng: np.random.Generator
) -> list[LockAction]:
    """Seal at the origin, unseal/reseal at each consignee, unseal at the last."""
    out = [LockAction(seal_ms, "locked")]
    for v in visits:
        out.append(LockAction(v.arrive_ms + _ms(rng, 60, 180), "unlocked", "rfid"))
        if not v.last:
            out.append(LockAction(v.leave_ms - _ms(rng, 60, 150), "locked"))
    return out


def unseal_ms(actions: Sequence[LockAction]) -> int:
    """Time of the final ``unlocked`` (the trip's completion)."""
    return max(a.ts_ms for a in actions if a.event == "unlocked")


def heartbeat_times(on_ms: int, off_ms: int, every_s: int, rng: np.random.Generator) -> IntArray:
    """Heartbeats every ``every_s`` from a random phase after power-on."""
    first = on_ms + _ms(rng, 5, min(every_s, 60))
    return np.arange(first, off_ms, every_s * 1000, dtype=np.int64)


def battery_crossing_ms(on_ms: int, battery0: float, drain_per_h: float) -> int | None:
    """When a draining battery first reads ≤ ``LOW_BATTERY_PCT`` (whole percent, rounded)."""
    if drain_per_h <= 0:
        return None
    # round(b) <= 15  <=>  b < 15.5
    hours = (battery0 - (LOW_BATTERY_PCT + 0.5)) / drain_per_h
    return on_ms + max(int(hours * 3_600_000) + 1, 0)
