"""Reading one partition: a durable pull consumer, fetched in batches, acknowledged after the
handler (the store commit) returns.

One ``PartitionConsumer`` per partition a worker owns (``leases``): durable ``p{n}``, unfiltered,
on the partition's own stream (``DEVICES_{n}`` or ``TRIPS_{n}``, see ``streams``). Its position
lives in the server, so whichever worker owns the partition next resumes where the last
acknowledgement left it.

Choices:

- **AckAll, one acknowledgement per batch.** Messages are handled strictly in order, one batch
  at a time, so acknowledging the batch's last message (and waiting for the server to confirm
  it) covers the whole batch: one round trip per batch instead of one publish per message.
- **Failure: give the batch back, retry in order.** When the handler raises, the open pull
  request is let expire, then the batch and everything fetched after it are nak'ed without
  delay, and the loop pauses ``retry_delay_s``; the server hands redeliveries out before newer
  messages, so the batch comes back first and in order (a delayed nak, or one sent while a pull
  request is still open, would let newer messages overtake it — and their AckAll would
  acknowledge it unseen).
- **AckWait 30 s**: longer than any batch takes to handle (a 1,000-message batch commits in tens of
  milliseconds); a batch left unacknowledged by a dead worker is redelivered 30 s later at the
  latest — after the 15 s takeover.
- **MaxAckPending = 2 × batch**: one batch in hand plus one in flight.
- **Stopping** (lease lost or released): no new pull request; a batch being handled is given
  ``grace_s``, then cancelled; the open request expires within ``fetch_timeout_s``; then
  everything held is nak'ed, so the next owner gets it at once (were the nak lost, AckWait
  redelivers it). ``grace_s + fetch_timeout_s`` (1 s by default) must stay below the lease
  margin (2 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header

from telemetry.bus.direct import route, unroute
from telemetry.bus.partitions import DEVICE_PREFIX, parse_subject
from telemetry.bus.streams import stream_name

log = logging.getLogger(__name__)

ACK_WAIT_S = 30.0
STATUS = Header.STATUS
DEFAULT_BATCH = 1000
NAK = b"-NAK"


@dataclass(slots=True)
class BusMessage:
    """One message as the handler sees it. ``device_id``/``kind`` are None when the subject is
    not a device subject (a topic of the wrong shape: a dead letter for the handler).
    Not frozen: one is made per delivered message, and a frozen dataclass's ``__init__``
    (``object.__setattr__`` per field) costs three times as much."""

    subject: str
    device_id: str | None
    kind: str | None
    data: bytes
    stream_seq: int
    timestamp_ns: int  # when the server stored it
    delivered: int  # 1 on first delivery
    headers: dict[str, str] | None = None
    reply: str = ""  # the server's acknowledgement subject

    @property
    def topic(self) -> str:
        """The MQTT topic the device published on (what ``telemetry.parse`` expects)."""
        if self.device_id is not None and self.kind is not None:
            return f"{DEVICE_PREFIX}/{self.device_id}/{self.kind}"
        return "/".join(t.replace("//", ".") for t in self.subject.split("."))


def to_bus_message(msg: Msg) -> BusMessage:
    """A delivered JetStream message → ``BusMessage``."""
    return bus_message(msg.subject, msg.reply, msg.data, msg.headers or None)


def bus_message(
    subject: str, reply: str, data: bytes, headers: dict[str, str] | None
) -> BusMessage:
    """A delivery → ``BusMessage`` (metadata parsed from the reply subject:
    ``$JS.ACK.[domain.account.]stream.consumer.delivered.sseq.cseq.ts.pending[.token]``)."""
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    parts = parse_subject(subject)
    # positional: one is made per delivered message
    return BusMessage(
        subject,
        parts.device_id if parts else None,
        parts.kind if parts else None,
        data,
        int(tokens[base + 3]),
        int(tokens[base + 5]),
        int(tokens[base + 2]),
        headers,
        reply,
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


class PartitionConsumer:
    """Reads partition ``partition`` of ``stream`` in batches and hands them to ``handler``.

    The pull is done here rather than with the client's ``fetch``: ``fetch`` waits for every
    message separately (a timer per message, ~40 µs of CPU each), while here one inbox
    subscription appends each delivered message to a buffer and the loop takes the buffer a
    batch at a time. One pull request (``batch`` messages, expiring after ``fetch_timeout_s``)
    is open at a time; the next one is sent when it has been filled or has expired, so under
    load the server keeps delivering while a batch is being handled. The inbox's deliveries
    come straight from the client's protocol parser (``direct``: no ``Msg``, no queue, no
    callback task per message; a bulk drain by one worker went from 51-58 to 40-43 µs of CPU
    per message, ``bench.bus --worker``); acknowledgements and naks are published to each
    message's reply subject.
    """

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
        linger_s: float = 0.0,
        linger_grid: bool = False,
    ) -> None:
        self.js = js
        self.stream = stream_name(stream, partition)  # ``stream``: the family
        self.prefix = prefix  # part or trip; no filter: the stream holds the partition alone
        self.partition = partition
        self.handler = handler
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_delay_s = retry_delay_s
        self.grace_s = grace_s
        # Wait up to this long after a batch's first message for more: the engine's cost per
        # batch is mostly fixed, so a light partition should not hand over one fix at a time.
        self.linger_s = linger_s
        # On the grid: a batch is handed over at the next multiple of ``linger_s`` (the event
        # loop's clock) after its first message, so every grid consumer of a process hands
        # over on the same beat and a worker can handle them together (``busmode.rounds``).
        self.linger_grid = linger_grid
        self._first_at = 0.0
        self.durable = f"p{partition}"
        self.handled = 0  # messages acknowledged
        self.failures = 0
        self._stopping = False
        self._handling = False
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None
        self._inbox = ""
        self._buf: list[BusMessage] = []
        self._pull_left = 0  # messages the open pull request may still deliver; 0: none open
        # Left delivered and unacknowledged by a previous owner: (last delivered, ack floor).
        self._unacked_to = 0
        self._floor = 0
        self._wake = asyncio.Event()

    async def start(self) -> None:
        # unfiltered: the partition's stream holds the partition alone (``streams``)
        config = consumer_config(self.durable, (), self.batch)
        try:
            info = await self.js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None and info.config is not None:  # keep where it was made to start
            config.deliver_policy = info.config.deliver_policy
            config.opt_start_seq = info.config.opt_start_seq
        await self.js.add_consumer(self.stream, config)
        if info is not None:
            delivered = (info.delivered.stream_seq or 0) if info.delivered else 0
            floor = (info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            if delivered > floor:  # a previous owner left messages unacknowledged
                self._unacked_to, self._floor = delivered, floor
        nc = self.js._nc  # the client's connection: the JetStream context keeps no public one
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_msg)
        # the deliveries straight from the client's parser (``direct``): no Msg, no queue
        route(nc, self._sub._id, self._on_delivery)
        self._task = asyncio.create_task(self._loop(), name=f"{self.stream}.{self.durable}")

    async def _on_msg(self, msg: Msg) -> None:
        """A delivery through the client's queue (a client ``direct`` does not support)."""
        self._take(msg.subject, msg.reply, msg.data, msg.headers or None)

    def _on_delivery(
        self, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> None:
        self._take(subject.decode(), reply.decode(), data, headers)

    def _take(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        status = headers.get(STATUS) if headers else None
        if status is not None:
            if status != "100":  # 404/408: request ended; 409: ended by the server
                self._pull_left = 0
                if status == "409":
                    log.info("pull %s.%s: %s", self.stream, self.durable, headers)
        elif reply:
            try:
                message = bus_message(subject, reply, data, headers)
            except (ValueError, IndexError):
                # not a JetStream delivery (its reply is no acknowledgement subject): this runs
                # in the client's reading, which must not fail on it
                log.warning(
                    "%s.%s: ignored a message with reply %r", self.stream, self.durable, reply
                )
                return
            self._pull_left = max(0, self._pull_left - 1)
            if not self._buf:
                self._first_at = asyncio.get_running_loop().time()
            self._buf.append(message)
        self._wake.set()

    async def _pull(self) -> None:
        assert self._sub is not None
        self._pull_left = self.batch
        request = {"batch": self.batch, "expires": int(self.fetch_timeout_s * 1e9)}
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        await self.js._nc.publish(subject, json.dumps(request).encode(), reply=self._inbox)

    async def _give_back(self) -> None:
        """Let the open pull request end (it expires within ``fetch_timeout_s``), then nak
        everything held, in order. Nak'ed while the request is open, a message would be
        redelivered straight back into it."""
        deadline = asyncio.get_running_loop().time() + self.fetch_timeout_s + 1.0
        while self._pull_left and asyncio.get_running_loop().time() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.fetch_timeout_s):
                    await self._wake.wait()
        self._pull_left = 0
        held, self._buf = self._buf, []
        await _nak_all(self.js._nc, held)

    async def _loop(self) -> None:
        while not self._stopping:
            if not self._pull_left and len(self._buf) < self.batch:
                try:
                    await self._pull()
                except nats.errors.Error as exc:
                    log.warning("pull %s.%s: %r", self.stream, self.durable, exc)
                    await asyncio.sleep(self.retry_delay_s)
                    continue
            if not self._buf:
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.fetch_timeout_s + 1.0):
                        await self._wake.wait()
                except TimeoutError:
                    self._pull_left = 0  # request lost (reconnect?): send another
                continue
            if self.linger_s and len(self._buf) < self.batch:
                wait = self._handover_at() - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)  # more arrive meanwhile (the pull is open)
                    continue
            msgs, self._buf = self._buf[: self.batch], self._buf[self.batch :]
            if self._unacked_to:
                if msgs[0].stream_seq > self._unacked_to:
                    self._buf = msgs + self._buf
                    await self._restart_after_floor()
                    continue
                self._unacked_to = 0  # the previous owner's messages come back first
            if not await self._handle(msgs):
                self._buf = msgs + self._buf
                await self._give_back()  # newer messages must not overtake the failed batch
                await asyncio.sleep(self.retry_delay_s)
        await self._give_back()

    def _handover_at(self) -> float:
        """When the batch begun at ``_first_at`` is handed over (event loop time)."""
        if self.linger_grid:
            return (math.floor(self._first_at / self.linger_s) + 1) * self.linger_s
        return self._first_at + self.linger_s

    async def _restart_after_floor(self) -> None:
        """The previous owner died (``kill -9``) holding delivered, unacknowledged messages:
        the server hands them out again only after AckWait, and our AckAll of the newer
        messages it delivers meanwhile would acknowledge them unseen (lost). Make the durable
        again, starting right after what was acknowledged: everything from there is delivered
        at once and in order (a clean hand-over nak'ed its messages: they come back first and
        nothing is made again)."""
        await self._give_back()
        log.info(
            "%s.%s: a previous owner left messages after %d unacknowledged: resuming there",
            self.stream,
            self.durable,
            self._floor,
        )
        config = consumer_config(self.durable, (), self.batch)
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = self._floor + 1
        try:
            await self.js.delete_consumer(self.stream, self.durable)
            await self.js.add_consumer(self.stream, config)
        except nats.errors.Error as exc:
            log.warning("restarting %s.%s failed: %r", self.stream, self.durable, exc)
            await asyncio.sleep(self.retry_delay_s)
            return
        self._unacked_to = 0

    async def _handle(self, msgs: list[BusMessage]) -> bool:
        self._handling = True
        try:
            await self.handler(msgs)
        except asyncio.CancelledError:
            # Stopping: ``stop`` gives the batch back (nak), so the next owner need not wait for
            # AckWait. Should the handler's commit still land (a thread cannot be cancelled),
            # the store's idempotence absorbs the repeat.
            self._buf = msgs + self._buf
            raise
        except Exception:
            self.failures += 1
            log.exception("handler failed on %s.%s: redelivering", self.stream, self.durable)
            return False
        finally:
            self._handling = False
        try:
            # AckAll: an empty reply to the last message, confirmed by the server
            await self.js._nc.request(msgs[-1].reply, b"", timeout=5.0)
        except nats.errors.Error as exc:
            # Committed but not acknowledged: redelivered after AckWait, and the store's
            # idempotence absorbs the repeat.
            log.warning("ack %s.%s failed: %r", self.stream, self.durable, exc)
            return True
        self.handled += len(msgs)
        return True

    async def stop(self) -> None:
        """Stop fetching; give a batch in hand ``grace_s``, else cancel it (nak'ed)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            wait = self.grace_s + self.fetch_timeout_s + 1.0
            done, _ = await asyncio.wait(
                {task}, timeout=wait if not self._handling else self.grace_s
            )
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self._give_back()
            elif not task.cancelled() and task.exception() is not None:
                log.error("consumer %s.%s died: %r", self.stream, self.durable, task.exception())
        if self._sub is not None:
            unroute(self.js._nc, self._sub._id)
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


async def _nak_all(nc: Client, msgs: Sequence[BusMessage]) -> None:
    with contextlib.suppress(nats.errors.Error):
        for m in msgs:
            await nc.publish(m.reply, NAK)
