"""Reading one partition: a durable pull consumer, fetched in batches, acknowledged after the
handler (the store commit) returns.

One ``PartitionConsumer`` per partition a worker owns (``leases``): durable ``p{n}`` on the
stream, filtered to ``part.{n}.>`` (device stream) or ``trip.{n}.>`` (trip stream). Its
position lives in the server, so whichever worker owns the partition next resumes where the
last acknowledgement left it.

Choices:

- **AckAll, one acknowledgement per batch.** Messages are handled strictly in order, one batch
  at a time, so acknowledging the batch's last message (and waiting for the server to confirm
  it) covers the whole batch: one round trip per batch instead of one publish per message.
- **Failure: nak the batch, retry in order.** When the handler raises, every message of the
  batch is nak'ed without delay and the loop pauses ``retry_delay_s``; the server hands
  redeliveries out before newer messages, so the batch comes back first and in order (a delayed
  nak would let newer messages overtake it, and their AckAll would acknowledge it unseen).
- **AckWait 30 s**: longer than any batch takes to handle (a 1,000-message batch commits in tens of
  milliseconds); a batch left unacknowledged by a dead worker is redelivered 30 s later at the
  latest — after the 15 s takeover.
- **MaxAckPending = 2 × batch**: one batch in hand plus one in flight; it bounds what a stale
  fetch (a worker that just lost the partition) can hold back.
- **Stopping** (lease lost or released): no new fetch; an idle fetch ends within
  ``fetch_timeout_s``; a batch being handled is given ``grace_s``, then cancelled and nak'ed;
  fetched messages not yet handled are nak'ed too, so the next owner gets them at once (were
  the nak lost, AckWait redelivers them). ``fetch_timeout_s + grace_s`` must stay below the
  lease margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from telemetry.bus.partitions import DEVICE_PREFIX, PART_PREFIX, parse_subject

log = logging.getLogger(__name__)

ACK_WAIT_S = 30.0
DEFAULT_BATCH = 1000


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One message as the handler sees it. ``device_id``/``kind`` are None when the subject is
    not a device subject (a topic of the wrong shape: a dead letter for the handler)."""

    subject: str
    device_id: str | None
    kind: str | None
    data: bytes
    stream_seq: int
    timestamp_ns: int  # when the server stored it
    delivered: int  # 1 on first delivery
    headers: dict[str, str] | None = None

    @property
    def topic(self) -> str:
        """The MQTT topic the device published on (what ``telemetry.parse`` expects)."""
        if self.device_id is not None and self.kind is not None:
            return f"{DEVICE_PREFIX}/{self.device_id}/{self.kind}"
        return "/".join(t.replace("//", ".") for t in self.subject.split("."))


def to_bus_message(msg: Msg) -> BusMessage:
    """A delivered JetStream message → ``BusMessage`` (metadata parsed from the reply subject:
    ``$JS.ACK.[domain.account.]stream.consumer.delivered.sseq.cseq.ts.pending[.token]``)."""
    tokens = msg.reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    parts = parse_subject(msg.subject)
    return BusMessage(
        subject=msg.subject,
        device_id=parts.device_id if parts else None,
        kind=parts.kind if parts else None,
        data=msg.data,
        stream_seq=int(tokens[base + 3]),
        timestamp_ns=int(tokens[base + 5]),
        delivered=int(tokens[base + 2]),
        headers=dict(msg.headers) if msg.headers else None,
    )


BatchHandler = Callable[[Sequence[BusMessage]], Awaitable[None]]


def consumer_config(
    durable: str, filters: Sequence[str], batch: int = DEFAULT_BATCH
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.ALL,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=2 * batch,
        max_deliver=-1,  # never give a message up: a poison message is the handler's to park
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=list(filters) if len(filters) > 1 else None,
    )


def partition_filters(prefix: str, partition: int) -> list[str]:
    """Subjects of a partition. Device partition 0 also reads device-topic subjects the
    server's mapping did not match (a topic of the wrong shape), so they become dead letters
    instead of vanishing."""
    filters = [f"{prefix}.{partition}.>"]
    if prefix == PART_PREFIX and partition == 0:
        filters.append(f"{DEVICE_PREFIX}.>")
    return filters


class PartitionConsumer:
    """Fetches partition ``partition`` of ``stream`` in batches and hands them to ``handler``."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        prefix: str,
        partition: int,
        handler: BatchHandler,
        *,
        batch: int = DEFAULT_BATCH,
        fetch_timeout_s: float = 0.5,
        retry_delay_s: float = 1.0,
        grace_s: float = 0.5,
    ) -> None:
        self.js = js
        self.stream = stream
        self.prefix = prefix
        self.partition = partition
        self.handler = handler
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_delay_s = retry_delay_s
        self.grace_s = grace_s
        self.durable = f"p{partition}"
        self.handled = 0  # messages acknowledged
        self.failures = 0
        self._stopping = False
        self._handling = False
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        filters = partition_filters(self.prefix, self.partition)
        self._sub = await self.js.pull_subscribe(
            filters[0],
            durable=self.durable,
            stream=self.stream,
            config=consumer_config(self.durable, filters, self.batch),
        )
        self._task = asyncio.create_task(self._loop(), name=f"{self.stream}.{self.durable}")

    async def _loop(self) -> None:
        assert self._sub is not None
        while not self._stopping:
            try:
                msgs = await self._sub.fetch(self.batch, timeout=self.fetch_timeout_s)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:
                log.warning("fetch %s.%s: %r", self.stream, self.durable, exc)
                await asyncio.sleep(self.retry_delay_s)
                continue
            if self._stopping:
                await _nak_all(msgs)  # not ours any more: straight to the next owner
                return
            await self._handle(msgs)

    async def _handle(self, msgs: list[Msg]) -> None:
        batch = [to_bus_message(m) for m in msgs]
        self._handling = True
        try:
            await self.handler(batch)
        except asyncio.CancelledError:
            # Stopping: hand the batch straight back, so the next owner need not wait for
            # AckWait. Should the handler's commit still land (a thread cannot be cancelled),
            # the store's idempotence absorbs the repeat.
            await _nak_all(msgs)
            raise
        except Exception:
            self.failures += 1
            log.exception("handler failed on %s.%s: redelivering", self.stream, self.durable)
            await _nak_all(msgs)
            await asyncio.sleep(self.retry_delay_s)
            return
        finally:
            self._handling = False
        try:
            await msgs[-1].ack_sync(timeout=5.0)
        except nats.errors.Error as exc:
            # Committed but not acknowledged: redelivered after AckWait, and the store's
            # idempotence absorbs the repeat.
            log.warning("ack %s.%s failed: %r", self.stream, self.durable, exc)
            return
        self.handled += len(msgs)

    async def stop(self) -> None:
        """Stop fetching; give a batch in hand ``grace_s``, else cancel it (unacknowledged)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            wait = self.grace_s + (0 if self._handling else self.fetch_timeout_s)
            done, _ = await asyncio.wait({task}, timeout=wait)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                log.error("consumer %s.%s died: %r", self.stream, self.durable, task.exception())
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


async def _nak_all(msgs: Sequence[Msg]) -> None:
    with contextlib.suppress(nats.errors.Error):
        for m in msgs:
            await m.nak()
