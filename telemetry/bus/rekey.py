"""Re-keying validated messages from device partitions onto trip partitions.

A trip's GPS unit and e-lock report under different ids, so the server's mapping usually puts
them in different device partitions — yet the rules combine them (an unlock located by the
truck's GPS, signal loss over any of the trip's devices). The worker that owns a device
partition validates its messages and publishes each one again on ``trip.{m}.{device}.{kind}``,
``m = trip_partition(trip id)``: the engine workers own trip partitions, so one worker sees all
of a trip's messages, in order per device (one device partition is read in order, and the
re-key of a batch finishes before the next batch starts).

**Idempotent.** Each re-keyed message carries ``Nats-Msg-Id = {device}|{kind}|{ts}|{seq}``; the
trip stream drops a second message with the same id within its duplicate window, so a device
batch redelivered after a crash (published, not yet acknowledged) re-keys to nothing new. The
device batch is acknowledged only after every publish is confirmed (the consumer acknowledges
when the handler returns).

**A device changing trips.** The trip key is looked up per message when it is re-keyed, so a
device moved to another trip continues on the new trip's partition from its next message;
messages already re-keyed stay with the old trip, which is where the rules want them. A device
on no trip is keyed by its own id (its messages still reach one worker, in order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.api import PubAck

from telemetry.bus.consumer import BatchHandler, BusMessage
from telemetry.bus.partitions import trip_partition, trip_subject
from telemetry.bus.streams import TRIP_STREAM, stream_name

MSG_ID = "Nats-Msg-Id"
TRIP_HEADER = "Cw-Trip"


@dataclass(slots=True)
class Rekeyed:
    """One validated record to re-key. What the trip worker will read is ``payload`` (the
    encoded record) or, when ``row`` is given, ``row`` encoded as JSON: a bundle encodes all
    its rows in one call instead of one call per record (``payload_of``)."""

    device_id: str
    kind: str
    ts: int
    seq: int | None
    trip_id: str | None
    payload: bytes = b""
    row: list[Any] | None = None


def payload_of(item: Rekeyed) -> bytes:
    """The encoded record of ``item``."""
    return item.payload if item.row is None else orjson.dumps(item.row)


def msg_id(item: Rekeyed) -> str:
    """The duplicate-detection id: the contract's identity of a device message (device, ts,
    seq) plus its kind (a fix and a lock event may share a timestamp)."""
    seq = "" if item.seq is None else str(item.seq)
    return f"{item.device_id}|{item.kind}|{item.ts}|{seq}"


class Rekeyer:
    """Publishes ``Rekeyed`` items on the trip stream, all confirmed before ``publish`` returns."""

    def __init__(
        self, js: JetStreamContext, trip_partitions: int, *, timeout_s: float = 10.0
    ) -> None:
        self.js = js
        self.trip_partitions = trip_partitions
        self.timeout_s = timeout_s
        self.published = 0
        self.duplicates = 0

    def partition(self, item: Rekeyed) -> int:
        """The trip partition of ``item`` (by trip; a record on no trip by its device)."""
        return trip_partition(item.trip_id or item.device_id, self.trip_partitions)

    def subject(self, item: Rekeyed) -> str:
        return trip_subject(self.partition(item), item.device_id, item.kind)

    async def publish(self, items: Sequence[Rekeyed]) -> list[PubAck]:
        """Publish every item (pipelined), then wait for all the server's confirmations.

        Raises if any publish fails or is not confirmed within ``timeout_s``: the caller then
        leaves its input unacknowledged, and the redelivery re-keys again (duplicates dropped).
        """
        futures = []
        for item in items:
            headers = {MSG_ID: msg_id(item)}
            if item.trip_id is not None:
                headers[TRIP_HEADER] = item.trip_id
            futures.append(
                await self.js.publish_async(
                    self.subject(item),
                    payload_of(item),
                    stream=stream_name(TRIP_STREAM, self.partition(item)),
                    headers=headers,
                )
            )
        async with asyncio.timeout(self.timeout_s):
            acks: list[PubAck] = await asyncio.gather(*futures)
        dup = sum(1 for a in acks if a.duplicate)
        self.duplicates += dup
        self.published += len(acks) - dup
        return acks


Validate = Callable[[Sequence[BusMessage]], Awaitable[Sequence[Rekeyed]]]


def rekey_handler(validate: Validate, rekeyer: Rekeyer) -> BatchHandler:
    """A device-partition batch handler: validate (and store what must be stored: dead letters,
    the raw telemetry), then re-key; the consumer acknowledges the batch when it returns."""

    async def handle(batch: Sequence[BusMessage]) -> None:
        items = await validate(batch)
        if items:
            await rekeyer.publish(items)

    return handle
