"""The live feed across processes: every process's live events reach every ``/v1/live``.

Each process (``serve --bus`` and ``worker``) puts a ``LiveRelay`` in front of its ``LiveHub``:
what the process publishes (alarms raised by its workers, desk transitions and escalations of
its API) goes out on the core NATS subject ``cargowatch.live`` as one JSON array per batch;
a ``serve`` subscribes to that subject and delivers every batch to its local subscriptions —
its own events included, so each subscriber sees each event exactly once.

Position events are only made while someone watches (``AlarmService`` checks
``hub.subscriber_count``): every serve announces its number of live subscribers on
``cargowatch.live.interest`` every ``INTEREST_S``; each relay sums the announcements younger
than three periods into ``hub.remote_subscribers``.

Core NATS is at most once: a live event can be lost on a reconnect, as an SSE client can lose
one on a reconnect; alarms themselves are in the store (``/v1/alarms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from alerts import LiveHub

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # the server's default, before its INFO says otherwise
PAYLOAD_MARGIN = 4096  # the subject and headers go with the payload

LIVE_SUBJECT = "cargowatch.live"
INTEREST_SUBJECT = "cargowatch.live.interest"
INTEREST_S = 2.0


class LiveRelay:
    def __init__(self, hub: LiveHub, nc: Client, *, receive: bool) -> None:
        self.hub = hub
        self.nc = nc
        self.receive = receive
        self.id = uuid.uuid4().hex[:12]
        self.sent = 0
        self.received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: list[Subscription] = []
        self._interest: dict[str, tuple[int, float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._subs.append(await self.nc.subscribe(INTEREST_SUBJECT, cb=self._on_interest))
        if self.receive:
            self._subs.append(await self.nc.subscribe(LIVE_SUBJECT, cb=self._on_live))
            self._task = asyncio.create_task(self._announce(), name="live.interest")
        self.hub.forward = self._forward

    async def stop(self) -> None:
        self.hub.forward = None
        self.hub.remote_subscribers = 0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    def _forward(self, events: list[dict[str, Any]]) -> None:
        """Called by ``LiveHub.publish_many`` from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # a big round's positions exceed the server's max_payload as one message
        limit = max(1024, (self.nc.max_payload or DEFAULT_MAX_PAYLOAD) - PAYLOAD_MARGIN)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for data in _encoded(events, limit):
            if running is loop:
                loop.create_task(self._send(data))
            else:
                loop.call_soon_threadsafe(self._schedule, data)

    def _schedule(self, data: bytes) -> None:
        assert self._loop is not None
        self._loop.create_task(self._send(data))

    async def _send(self, data: bytes) -> None:
        try:
            await self.nc.publish(LIVE_SUBJECT, data)
            self.sent += 1
        except Exception as exc:  # a closed connection at shutdown: the event is lost
            log.warning("live event not relayed: %r", exc)

    async def _on_live(self, msg: Msg) -> None:
        try:
            events = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if isinstance(events, list):
            self.received += 1
            self.hub.deliver(events)

    async def _on_interest(self, msg: Msg) -> None:
        try:
            doc = orjson.loads(msg.data)
            sender, count = str(doc["id"]), int(doc["subscribers"])
        except Exception:
            return
        now = time.monotonic()
        if sender != self.id:
            self._interest[sender] = (count, now + 3 * INTEREST_S)
        self._interest = {k: v for k, v in self._interest.items() if v[1] > now}
        self.hub.remote_subscribers = sum(c for c, _ in self._interest.values())

    async def _announce(self) -> None:
        while True:
            body = {"id": self.id, "subscribers": self.hub.local_subscriber_count}
            with contextlib.suppress(Exception):
                await self.nc.publish(INTEREST_SUBJECT, orjson.dumps(body))
            await asyncio.sleep(INTEREST_S)


def _encoded(events: list[dict[str, Any]], limit: int) -> list[bytes]:
    """``events`` as JSON arrays of at most ``limit`` bytes each, in order (halved until each
    fits; a single event larger than that is dropped, with a warning)."""
    data = orjson.dumps(events, default=str, option=orjson.OPT_NON_STR_KEYS)
    if len(data) <= limit:
        return [data]
    if len(events) == 1:
        log.warning("a live event of %d bytes is too large to relay", len(data))
        return []
    half = len(events) // 2
    return _encoded(events[:half], limit) + _encoded(events[half:], limit)
