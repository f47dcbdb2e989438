"""The one injectable wall clock.

Event time (device ``ts``) drives the rules; wall-clock timers (signal loss, late arrival,
ack/resolve deadlines, webhook retries) read this clock so tests and simulations can run
hours in seconds. Times are integer epoch milliseconds everywhere in the engine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

#: shortest real sleep of an accelerated clock (x300: six simulated seconds)
MIN_REAL_SLEEP_S = 0.02


class Clock(Protocol):
    def now_ms(self) -> int:
        """Current wall-clock time, epoch milliseconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Real time."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start_ms: int = 1_795_334_400_000) -> None:
        self._now = int(start_ms)

    def now_ms(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += round(seconds * 1000)

    def set(self, now_ms: int) -> None:
        self._now = int(now_ms)

    async def sleep(self, seconds: float) -> None:
        # Yield control so loops progress; time moves only via advance().
        await asyncio.sleep(0)


class ScaledClock:
    """Wall time running ``speed`` times faster, reading ``start_ms`` at real time ``anchor_ms``.

    Two processes given the same (speed, start_ms, anchor_ms) agree on the time: that is how a
    simulator and a separately started engine share accelerated time in end-to-end tests.
    """

    def __init__(
        self, speed: float = 1.0, start_ms: int | None = None, anchor_ms: int | None = None
    ) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = float(speed)
        real_now = time.time_ns() // 1_000_000
        self._anchor = real_now if anchor_ms is None else int(anchor_ms)
        self._t0 = self._anchor if start_ms is None else int(start_ms)

    def now_ms(self) -> int:
        real = time.time_ns() // 1_000_000
        return self._t0 + int((real - self._anchor) * self.speed)

    async def sleep(self, seconds: float) -> None:
        # Not below MIN_REAL_SLEEP_S of real time (unless asked for less): a loop that polls
        # every simulated second would otherwise hit the store hundreds of times a second
        # at x300 and starve the pipeline it shares the machine with.
        await asyncio.sleep(max(seconds / self.speed, min(seconds, MIN_REAL_SLEEP_S)))
