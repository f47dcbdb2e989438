"""A leaner re-key publisher than the client's ``publish_async``.

``nats-py``'s ``publish_async`` draws two random bytes from the OS for every message's reply
token (``secrets.token_hex``): measured here at ~160 µs a call (``os.urandom`` on this VM),
the largest single cost of stage 1. This publisher subscribes once to its own reply prefix,
numbers each publish, and counts the stream's acknowledgements per batch. Same contract as
``telemetry.bus.rekey.Rekeyer.publish``: every item confirmed before it returns, else it
raises (and the device batch is left unacknowledged, to be re-keyed again — duplicates are
dropped by ``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck

from telemetry.bus.rekey import MSG_ID, TRIP_HEADER, Rekeyed, Rekeyer, msg_id
from telemetry.bus.streams import TRIP_STREAM

EXPECTED_STREAM = "Nats-Expected-Stream"


class _Batch:
    def __init__(self, n: int) -> None:
        self.left = n
        self.duplicates = 0
        self.error: str | None = None
        self.done = asyncio.Event()
        if n == 0:
            self.done.set()


class PipelinedRekeyer(Rekeyer):
    def __init__(
        self, js: JetStreamContext, trip_partitions: int, *, timeout_s: float = 10.0
    ) -> None:
        super().__init__(js, trip_partitions, timeout_s=timeout_s)
        self._prefix = ""
        self._sub: Subscription | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Batch] = {}

    async def _ensure(self) -> None:
        if self._sub is None:
            nc = self.js._nc  # the JetStream context keeps no public connection
            self._prefix = nc.new_inbox()
            self._sub = await nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        try:
            n = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        batch = self._waiting.pop(n, None)
        if batch is None:
            return  # late answer of a batch that timed out
        try:
            doc = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            doc = {"error": {"description": "unreadable acknowledgement"}}
        if "error" in doc:
            batch.error = str(doc["error"])
        elif doc.get("duplicate"):
            batch.duplicates += 1
        batch.left -= 1
        if batch.left <= 0:
            batch.done.set()

    async def publish(self, items: Sequence[Rekeyed]) -> list[PubAck]:
        await self._ensure()
        nc = self.js._nc
        batch = _Batch(len(items))
        numbers = []
        for item in items:
            n = next(self._ids)
            numbers.append(n)
            self._waiting[n] = batch
            headers = {MSG_ID: msg_id(item), EXPECTED_STREAM: TRIP_STREAM}
            if item.trip_id is not None:
                headers[TRIP_HEADER] = item.trip_id
            await nc.publish(
                self.subject(item), item.payload, reply=f"{self._prefix}.{n}", headers=headers
            )
        try:
            await asyncio.wait_for(batch.done.wait(), self.timeout_s)
        finally:
            for n in numbers:
                self._waiting.pop(n, None)
        if batch.left > 0:
            raise TimeoutError(f"{batch.left} of {len(items)} re-key publishes unconfirmed")
        if batch.error is not None:
            raise RuntimeError(f"re-key refused by the stream: {batch.error}")
        self.duplicates += batch.duplicates
        self.published += len(items) - batch.duplicates
        return []
