"""A leaner re-key publisher than the client's ``publish_async``.

``nats-py``'s ``publish_async`` draws two random bytes from the OS for every message's reply
token (``secrets.token_hex``): measured here at ~160 µs a call (``os.urandom`` on this VM),
the largest single cost of stage 1. This publisher subscribes once to its own reply prefix,
numbers each publish, and counts the stream's acknowledgements per batch. Same contract as
``telemetry.bus.rekey.Rekeyer.publish``: every item confirmed before it returns, else it
raises (and the device batch is left unacknowledged, to be re-keyed again — duplicates are
dropped by ``Nats-Msg-Id``).

**Bundles.** The records of one call (a round of device batches, ``busmode.rounds``) are
grouped by trip partition and sent as bundles (``codec.encode_bundle``, at most
``MAX_BUNDLE_BYTES`` each), in order: one message per trip partition per round, not one per
record. A bundle's ``Nats-Msg-Id`` names its first and last record and its size, so records
re-keyed again in the same composition are duplicates the stream drops; a redelivered batch
usually joins a round of another composition and makes other bundles, whose records the
store recognises (stage 2 evaluates only newly stored records).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck

from cargowatch.busmode.codec import BUNDLE, encode_bundle
from telemetry.bus.partitions import trip_partition, trip_subject
from telemetry.bus.rekey import MSG_ID, TRIP_HEADER, Rekeyed, Rekeyer, msg_id, payload_of
from telemetry.bus.streams import TRIP_STREAM, stream_name

EXPECTED_STREAM = "Nats-Expected-Stream"
MAX_BUNDLE_BYTES = 512 * 1024  # well below the server's max_payload (1 MB by default)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish on the trip stream: a single record or a bundle."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    records: int


def bundles(items: Sequence[Rekeyed], trip_partitions: int) -> list[Outgoing]:
    """``items`` as bundles per trip partition, in order, each at most ``MAX_BUNDLE_BYTES``."""
    groups: dict[int, list[Rekeyed]] = {}
    for item in items:
        key = item.trip_id or item.device_id
        groups.setdefault(trip_partition(key, trip_partitions), []).append(item)
    out: list[Outgoing] = []
    for m, group in groups.items():
        _split(m, group, out)
    return out


def _split(m: int, chunk: Sequence[Rekeyed], out: list[Outgoing]) -> None:
    """One bundle of ``chunk``, or (too large: rare, records are small) its halves, in
    order. Encoding first and splitting after costs one ``dumps`` per bundle instead of a
    size estimate per record; the split depends only on the records, so a redelivered batch
    makes the same bundles."""
    payload = encode_bundle(
        [(i.device_id, i.trip_id, i.payload if i.row is None else i.row) for i in chunk]
    )
    if len(payload) > MAX_BUNDLE_BYTES and len(chunk) > 1:
        half = len(chunk) // 2
        _split(m, chunk[:half], out)
        _split(m, chunk[half:], out)
        return
    ident = f"{BUNDLE}|{msg_id(chunk[0])}|{msg_id(chunk[-1])}|{len(chunk)}"
    headers = {MSG_ID: ident, EXPECTED_STREAM: stream_name(TRIP_STREAM, m)}
    out.append(Outgoing(trip_subject(m, chunk[0].device_id, BUNDLE), payload, headers, len(chunk)))


class _Batch:
    def __init__(self, n: int) -> None:
        self.left = n
        self.duplicates = 0  # records
        self.records: dict[int, int] = {}  # publish number -> records in it
        self.error: str | None = None
        self.done = asyncio.Event()
        if n == 0:
            self.done.set()


class PipelinedRekeyer(Rekeyer):
    def __init__(
        self,
        js: JetStreamContext,
        trip_partitions: int,
        *,
        timeout_s: float = 10.0,
        bundle: bool = True,
    ) -> None:
        super().__init__(js, trip_partitions, timeout_s=timeout_s)
        self.bundle = bundle
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
            batch.duplicates += batch.records.get(n, 1)
        batch.left -= 1
        if batch.left <= 0:
            batch.done.set()

    def outgoing(self, items: Sequence[Rekeyed]) -> list[Outgoing]:
        if self.bundle:
            return bundles(items, self.trip_partitions)
        out = []
        for item in items:
            stream = stream_name(TRIP_STREAM, self.partition(item))
            headers = {MSG_ID: msg_id(item), EXPECTED_STREAM: stream}
            if item.trip_id is not None:
                headers[TRIP_HEADER] = item.trip_id
            out.append(Outgoing(self.subject(item), payload_of(item), headers, 1))
        return out

    async def publish(self, items: Sequence[Rekeyed]) -> list[PubAck]:
        await self._ensure()
        nc = self.js._nc
        messages = self.outgoing(items)
        batch = _Batch(len(messages))
        numbers = []
        for out in messages:
            n = next(self._ids)
            numbers.append(n)
            self._waiting[n] = batch
            batch.records[n] = out.records
            await nc.publish(
                out.subject, out.payload, reply=f"{self._prefix}.{n}", headers=out.headers
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                await batch.done.wait()
        finally:
            for n in numbers:
                self._waiting.pop(n, None)
        if batch.left > 0:
            raise TimeoutError(f"{batch.left} of {len(messages)} re-key publishes unconfirmed")
        if batch.error is not None:
            raise RuntimeError(f"re-key refused by the stream: {batch.error}")
        self.duplicates += batch.duplicates
        self.published += len(items) - batch.duplicates
        return []
