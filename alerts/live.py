"""In-process publish/subscribe for the live feed (``GET /v1/live``, Server-Sent Events).

The engine thread and API threads publish; each SSE connection reads its own subscription
on the event loop. A publisher never blocks and never waits for a reader: each subscription
is a bounded buffer, and a reader that falls behind loses its oldest *positions* first (alarms
and their transitions only far beyond the bound) and is told so with one
``{"type": "overflow", "data": {"dropped": n}}`` marker at the gap.

Events are ``{"type": ..., "shipper": str | None, "data": {...}}``; a subscription made
with ``shipper=`` sees only that shipper's events (events with no shipper, e.g. positions of
idle devices, go to unfiltered subscriptions only).

Across processes (bus mode, several ``serve`` and ``worker`` processes): a relay sets
``forward``, and then ``publish`` hands every event to it (it goes out on a NATS subject)
instead of to local subscriptions; the relay feeds what every process published back in with
``deliver``, so a local subscriber sees each event once, whichever process raised it.
``remote_subscribers`` (set by the relay) counts subscribers of other processes, so that a
publisher with none of its own still produces position events for them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

Event = dict[str, Any]

EVENT_TYPES = (
    "position",
    "alarm.raised",
    "alarm.acknowledged",
    "alarm.resolved",
    "alarm.escalated",
    "alarm.episode_ended",
    "trip.milestone",
    "trip.status",
    "geofence.entered",
    "geofence.exited",
    "alarm.assigned",
    "alarm.note",
    "alarm.feedback",
    "exception.created",
    "exception.acknowledged",
    "exception.resolved",
    "exception.escalated",
    "exception.assigned",
    "exception.note",
    "exception.feedback",
)
OVERFLOW = "overflow"
IMPORTANT_FACTOR = 10  # a reader buffers up to this many × maxsize events that are not positions


class Subscription:
    """One reader's bounded view of the feed: ``async for event in sub`` until ``close()``.

    To send heartbeats while idle, wrap ``anext(sub)`` in ``asyncio.wait_for``: cancelling a
    wait loses nothing.
    """

    def __init__(self, hub: LiveHub, shipper: str | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.shipper = shipper
        self._hub = hub
        self._maxsize = maxsize
        self._buf: collections.deque[Event] = collections.deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._wake_scheduled = False
        self._dropped = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._dropped:
                    return self._overflow_marker()
                if self._buf:
                    return self._buf.popleft()
                if self._closed:
                    raise StopAsyncIteration
                # Publishers schedule at most one wake-up per wait, not one per event.
                self._wake_scheduled = False
                self._ready.clear()
            await self._ready.wait()

    def drain(self) -> list[Event]:
        """Everything buffered now, without waiting (an overflow marker first if events were
        dropped). Lets an SSE writer flush a burst in one write after ``anext`` woke it."""
        with self._lock:
            out: list[Event] = []
            if self._dropped:
                out.append(self._overflow_marker())
            out.extend(self._buf)
            self._buf.clear()
            return out

    def close(self) -> None:
        """Stop the subscription; a waiting reader ends its iteration."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._buf.clear()
        self._hub._remove(self)
        self._wake(_running_loop())

    def _overflow_marker(self) -> Event:
        dropped, self._dropped = self._dropped, 0
        return {"type": OVERFLOW, "shipper": self.shipper, "data": {"dropped": dropped}}

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _offer(self, events: list[Event], running: asyncio.AbstractEventLoop | None) -> int:
        """Buffer events (shedding beyond ``maxsize``, see ``_shed``); returns how many
        dropped."""
        with self._lock:
            if self._closed:
                return 0
            self._buf.extend(events)
            dropped = 0
            if len(self._buf) > self._maxsize:
                dropped = self._shed(len(self._buf) - self._maxsize)
                self._dropped += dropped
            if self._wake_scheduled or self._loop is None:
                return dropped
            self._wake_scheduled = True
        self._wake(running)
        return dropped

    def _shed(self, excess: int) -> int:
        """Drop ``excess`` events, the oldest positions first: a truck's next position puts
        the map right, but a lost alarm or transition leaves the desk's queue wrong. Other
        events go (oldest first) only beyond ``IMPORTANT_FACTOR × maxsize``."""
        kept: collections.deque[Event] = collections.deque()
        dropped = 0
        for event in self._buf:
            if dropped < excess and event.get("type") == "position":
                dropped += 1
            else:
                kept.append(event)
        while len(kept) > self._maxsize * IMPORTANT_FACTOR:
            kept.popleft()
            dropped += 1
        self._buf = kept
        return dropped

    def _wake(self, running: asyncio.AbstractEventLoop | None) -> None:
        loop = self._loop
        if loop is None:
            return
        if running is loop:
            self._ready.set()
            return
        try:
            loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            # The reader's loop is closed: nobody is left to wake.
            logger.debug("live subscriber loop closed")


class LiveHub:
    """Fan-out of live events to subscriptions. Thread-safe; ``publish`` never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Copy-on-write tuple: publishers read it without taking the lock.
        self._subs: tuple[Subscription, ...] = ()
        self.counters: collections.Counter[str] = collections.Counter()
        # Bus mode: published events go to the relay, which ``deliver``s them back here.
        self.forward: Callable[[list[Event]], None] | None = None
        self.remote_subscribers = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subs) + self.remote_subscribers

    @property
    def local_subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(self, *, shipper: str | None = None, maxsize: int = 1000) -> Subscription:
        """A new subscription; with ``shipper`` only that shipper's events."""
        sub = Subscription(self, shipper, maxsize)
        with self._lock:
            self._subs = (*self._subs, sub)
        return sub

    def publish(self, event: Event) -> None:
        """Send one event to every matching subscription."""
        self.publish_many((event,))

    def publish_many(self, events: Iterable[Event]) -> None:
        """Send a batch of events (one lock and at most one wake-up per subscription)."""
        forward = self.forward
        if forward is not None:
            batch = list(events)
            if batch:
                forward(batch)
            return
        self.deliver(events)

    def deliver(self, events: Iterable[Event]) -> None:
        """Hand events to the local subscriptions (what ``publish_many`` does without a
        relay; with one, the relay calls this with the events every process published)."""
        subs = self._subs
        if not subs:
            return
        batch = list(events)
        if not batch:
            return
        running = _running_loop()
        by_shipper: dict[str | None, list[Event]] | None = None
        dropped = 0
        for sub in subs:
            if sub.shipper is None:
                mine = batch
            else:
                if by_shipper is None:
                    by_shipper = collections.defaultdict(list)
                    for event in batch:
                        by_shipper[event.get("shipper")].append(event)
                mine = by_shipper.get(sub.shipper, [])
            if mine:
                dropped += sub._offer(mine, running)
        self.counters["live_events_published_total"] += len(batch)
        if dropped:
            self.counters["live_events_dropped_total"] += dropped

    def close(self) -> None:
        """Close every subscription (shutdown)."""
        for sub in self._subs:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
