"""Changes made through the API reach the workers that hold the trips (core NATS).

``serve --bus`` publishes, after each API change has committed, one JSON object on
``cargowatch.control``: ``{"trip": id, "devices": [...]}`` (created, changed or ended),
``{"shipper": id}`` (thresholds) or ``{"geofence": id}``. A worker then drops the trip's
devices from its device → trip cache and, if it holds the trip's partition, reloads the trip
(or the shipper's rules, or the geofence) from the store. The store is the truth: a lost
control message is made good by the next partition restore, and for a trip by its next
message (an unknown trip named by a message is loaded then), for a device's trip by the cache
TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from nats.aio.client import Client

log = logging.getLogger(__name__)

CONTROL_SUBJECT = "cargowatch.control"


class ControlPublisher:
    """Publishes control messages from any thread (the API runs in a thread pool)."""

    def __init__(self) -> None:
        self.nc: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, nc: Client) -> None:
        self.nc = nc
        self._loop = asyncio.get_running_loop()

    def detach(self) -> None:
        self.nc = None

    def __call__(self, doc: dict[str, Any]) -> None:
        nc, loop = self.nc, self._loop
        if nc is None or loop is None or loop.is_closed():
            return  # no bus yet (start-up): workers restore from the store anyway
        data = orjson.dumps(doc)

        async def send() -> None:
            try:
                await nc.publish(CONTROL_SUBJECT, data)
            except Exception as exc:
                log.warning("control message %s not sent: %r", doc, exc)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(send())
        else:
            loop.call_soon_threadsafe(lambda: loop.create_task(send()))


Notify = Callable[[dict[str, Any]], None]
