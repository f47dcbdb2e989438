"""MQTT ingest: a persistent QoS 1 session on the broker, micro-batches into a bounded queue.

Flow: broker -> ``MqttConnection`` (telemetry.mqtt) -> hand-off -> ``MqttIngest`` batches ->
``asyncio.Queue[RawBatch]`` -> the pipeline, which validates, stores, evaluates and then calls
``RawBatch.ack()``.

Manual acknowledgement: a QoS 1 message is acknowledged to the broker only after the batch
holding it is committed to the store, so neither a crash nor a shutdown can lose a message the
broker believes delivered. Redeliveries after a reconnect are harmless because the store
de-duplicates on (device, ts, seq). Acknowledgements only go out on the connection that
received the message: after a reconnect the broker redelivers it under a packet id that may be
reused, and a stale PUBACK could acknowledge another, unstored message.

**Memory bound.** Messages received and not yet acknowledged ("held": waiting in the hand-off,
in a queued batch, or in the pipeline) are at most ``max_held`` (default ``queue_batches ×
batch_max``, i.e. ``out.maxsize × batch_max``) and at most ``max_held_bytes`` of payload (default
64 MiB), plus the connection's read buffer (bytes read, not yet decoded: at most one read of
256 KiB plus the one packet being read, ≤ ``max_packet_bytes``, 1 MiB, which the broker is told
in CONNECT and enforces), plus the kernel's socket buffers. When either budget is
spent, reading pauses: the socket leaves the selector, TCP flow control stops the broker and the
backlog stays there (Mosquitto queues up to its ``max_queued_messages`` per session). Receive
Maximum is sent but not relied upon: Mosquitto 2.0.11 stops honouring it once a client
acknowledges. Reading resumes as soon as acknowledgements make room.

**Restart behind a backlog.** CONNACK is the first packet read; SUBSCRIBE is sent without waiting
for SUBACK (a resumed session already has its subscriptions), so a broker pushing a full
in-flight window cannot time out the connection. ``state`` tells health checks whether we are
connected, were ever connected, are paused (hand-off full) or behind (``backlog``).

**Shutdown** (task cancelled): reading stops first, what was received is handed over as
batches, acknowledgements of batches the pipeline stores meanwhile are still sent (waiting up to
``shutdown_ack_s`` without progress), then DISCONNECT. Nothing is acknowledged unstored.

MQTT 3.1.1 (the demo's embedded amqtt broker) acknowledges on receipt: amqtt hands a subscriber
one QoS 1 message per PUBACK, so deferred acknowledgement would stall it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from core.clock import Clock, SystemClock
from telemetry.errors import BrokerUnavailable, InvalidAddress
from telemetry.mqtt import SESSION_EXPIRY_S, BrokerRefused, MqttConnection, tls_setup

log = logging.getLogger(__name__)

BACKLOG_WINDOW_S = 10.0
"""Reading paused within this many seconds counts as a backlog (the broker holds more)."""
STABLE_S = 10.0
"""A connection that lived this long resets the reconnect backoff."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One MQTT message as received (not yet validated)."""

    topic: str
    payload: bytes
    received_at: int
    mid: int = 0
    qos: int = 0


@dataclass(slots=True)
class RawBatch:
    """Messages received together; ``ack()`` acknowledges them to the broker once stored."""

    messages: list[RawMessage]
    opened_at: float = field(default_factory=time.monotonic)
    _ack: Callable[[list[RawMessage]], None] | None = None

    def ack(self) -> None:
        """Acknowledge every message of the batch (once; safe from any thread)."""
        if self._ack is not None:
            ack, self._ack = self._ack, None
            ack(self.messages)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed ``--mqtt`` URL: ``mqtt://`` or ``mqtts://`` (TLS, port 8883 by default),
    ``[user:pass@]host[:port]``, and what ``broker-config mosquitto`` adds as query
    parameters: ``client_id`` (the engine's own, not guessable) and ``dynsec=1`` (device
    credentials are managed through the broker's dynamic-security plugin)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    client_id: str | None = None
    dynsec: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parsed.hostname:
            raise InvalidAddress("MQTT URL must look like mqtt://host:port", url=url)
        tls = parsed.scheme in ("mqtts", "ssl")
        query = parse_qs(parsed.query, keep_blank_values=True)
        unknown = set(query) - {"client_id", "dynsec"}
        if unknown:
            raise InvalidAddress(f"unknown MQTT URL parameter(s): {sorted(unknown)}", url=url)
        client_id = (query.get("client_id") or [""])[0] or None
        return cls(
            parsed.hostname,
            parsed.port or (8883 if tls else 1883),
            unquote(parsed.username) if parsed.username else None,
            unquote(parsed.password) if parsed.password else None,
            tls=tls,
            client_id=client_id,
            dynsec=(query.get("dynsec") or ["0"])[0] in ("1", "true", "yes"),
        )


@dataclass(slots=True)
class IngestState:
    """What a health check needs to know about the ingest (read-only for others)."""

    capacity: int
    capacity_bytes: int
    connected: bool = False
    ever_connected: bool = False
    connects: int = 0
    paused: bool = False
    """Reading is paused because the hand-off is full (the pipeline is behind)."""
    last_error: str | None = None
    """Why the last connection attempt failed or the last connection ended."""
    received: int = 0
    held: int = 0
    """Messages received and not yet acknowledged (hand-off, queued batches, pipeline)."""
    held_bytes: int = 0
    paused_total_s: float = 0.0
    _paused_at: float | None = None
    _last_paused: float = float("-inf")

    @property
    def backlog(self) -> bool:
        """Behind: reading is paused now or was within ``BACKLOG_WINDOW_S``."""
        return self.paused or time.monotonic() - self._last_paused < BACKLOG_WINDOW_S

    @property
    def problem(self) -> str | None:
        """Why the ingest is degraded, or None."""
        if not self.connected:
            why = self.last_error or "connecting"
            return f"not connected to the broker ({why})"
        if self.backlog:
            return f"backlog: {self.held} messages held, reading paused"
        return None

    def has_room(self) -> bool:
        return self.held < self.capacity and self.held_bytes < self.capacity_bytes

    def set_paused(self, paused: bool) -> None:
        now = time.monotonic()
        if paused and not self.paused:
            self._paused_at = now
        elif not paused and self.paused and self._paused_at is not None:
            self.paused_total_s += now - self._paused_at
            self._paused_at = None
        if self.paused or paused:
            self._last_paused = now
        self.paused = paused


class MqttIngest:
    """Receives device messages and hands them on in micro-batches.

    A batch closes at ``batch_max`` messages or ``batch_ms`` after its first message. Reading
    pauses while ``max_held`` messages (or ``max_held_bytes``) are unacknowledged.
    """

    def __init__(
        self,
        url: str,
        out: asyncio.Queue[RawBatch],
        *,
        clock: Clock | None = None,
        client_id: str = "cargowatch-engine",
        prefix: str = "devices",
        batch_max: int = 5000,
        batch_ms: int = 50,
        receive_maximum: int = 65_535,
        shared_group: str | None = None,
        backoff_max_s: float = 30.0,
        protocol: str = "5",
        keepalive_s: int = 30,
        max_held: int | None = None,
        max_held_bytes: int = 64 * 1024 * 1024,
        max_packet_bytes: int = 1024 * 1024,
        connect_timeout_s: float = 10.0,
        shutdown_ack_s: float = 3.0,
        ca_file: str | None = None,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self._tls = tls_setup(ca_file) if self.address.tls else None
        self.out = out
        self.clock = clock or SystemClock()
        # broker-config's URL names the engine's own (unguessable) client id
        self.client_id = self.address.client_id or client_id
        self.prefix = prefix
        self.batch_max = batch_max
        self.batch_ms = batch_ms
        self.receive_maximum = receive_maximum
        self.shared_group = shared_group
        self.backoff_max_s = backoff_max_s
        if protocol not in ("5", "3.1.1"):
            raise InvalidAddress("MQTT protocol must be 5 or 3.1.1", protocol=protocol)
        self.protocol = protocol
        self.keepalive_s = keepalive_s
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.shutdown_ack_s = shutdown_ack_s
        capacity = max_held or max(1, out.maxsize or 8) * batch_max
        self.state = IngestState(capacity=capacity, capacity_bytes=max_held_bytes)
        self._pending: collections.deque[tuple[MqttConnection, RawMessage]] = collections.deque()
        self._arrived = asyncio.Event()
        self._released = asyncio.Event()
        self._conn: MqttConnection | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    # Older names, read by the runtime and tests.
    @property
    def connected(self) -> bool:
        return self.state.connected

    @property
    def connects(self) -> int:
        return self.state.connects

    @property
    def received(self) -> int:
        return self.state.received

    def topics(self) -> list[str]:
        base = [f"{self.prefix}/+/position", f"{self.prefix}/+/lock"]
        if self.shared_group:
            # Several engine processes share one subscription: the broker spreads messages.
            return [f"$share/{self.shared_group}/{t}" for t in base]
        return base

    # -- the connection loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe and batch until cancelled; reconnect with capped backoff."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._closing = False
        batcher = asyncio.create_task(self._batch_loop(), name="ingest-batches")
        try:
            await self._connection_loop(batcher)
        finally:
            await self._shutdown(batcher)

    async def _connection_loop(self, batcher: asyncio.Task[None]) -> None:
        backoff = 0.5
        where = f"{self.address.host}:{self.address.port}"
        while True:
            conn = self._new_connection()
            try:
                session_present = await conn.open()
            except BrokerRefused as exc:
                self.state.last_error = str(exc.message)
                log.error("broker at %s refused us (%s); retrying in %.1f s", where, exc, backoff)
            except BrokerUnavailable as exc:
                self.state.last_error = str(exc.message)
                log.warning(
                    "cannot reach broker at %s (%s); retrying in %.1f s",
                    where,
                    exc.message,
                    backoff,
                )
            else:
                self._conn = conn
                st = self.state
                st.connected, st.ever_connected, st.last_error = True, True, None
                st.connects += 1
                conn.subscribe(self.topics())
                self._resume()
                log.info("ingest connected to %s (session present: %s)", where, session_present)
                since = time.monotonic()
                done, _ = await asyncio.wait(
                    (conn.closed, batcher), return_when=asyncio.FIRST_COMPLETED
                )
                if batcher in done:
                    batcher.result()  # a bug in batching: let it surface
                    return
                st.connected = False
                st.last_error = conn.closed.result()
                self._conn = None
                if time.monotonic() - since >= STABLE_S:
                    backoff = 0.5
                log.warning(
                    "MQTT connection to %s lost (%s); reconnecting in %.1f s",
                    where,
                    st.last_error,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _new_connection(self) -> MqttConnection:
        return MqttConnection(
            self.address.host,
            self.address.port,
            self.client_id,
            on_message=self._on_message,
            room=self._room,
            username=self.address.username,
            password=self.address.password,
            protocol=self.protocol,
            keepalive_s=self.keepalive_s,
            receive_maximum=min(self.receive_maximum, self.state.capacity),
            max_packet_bytes=self.max_packet_bytes,
            connect_timeout_s=self.connect_timeout_s,
            tls=self._tls,
        )

    async def _shutdown(self, batcher: asyncio.Task[None]) -> None:
        conn = self._conn
        try:
            if conn is not None:
                conn.pause_reading()  # stop taking messages first
            self._closing = True
            self._arrived.set()
            # Hand over what was received (the queue may be full: wait while the pipeline
            # makes progress), then let it store and acknowledge what it holds.
            while not batcher.done() and await self._progress(batcher):
                pass
            if batcher.done() and not batcher.cancelled():
                batcher.result()
            while conn is not None and conn.is_open and self.state.held > 0:
                if not await self._progress(None):
                    break
        finally:
            batcher.cancel()
            if conn is not None:
                await conn.disconnect()
            self._conn = None
            self.state.connected = False
            self.state.set_paused(False)

    async def _progress(self, task: asyncio.Task[None] | None) -> bool:
        """Wait for ``task`` or an acknowledgement; False after ``shutdown_ack_s`` of neither."""
        self._released.clear()
        released = asyncio.ensure_future(self._released.wait())
        waits: set[asyncio.Future[Any]] = {released}
        if task is not None:
            waits.add(task)
        try:
            done, _ = await asyncio.wait(
                waits, timeout=self.shutdown_ack_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            released.cancel()
        return bool(done)

    # -- the hand-off --------------------------------------------------------------------------
    def _room(self) -> bool:
        if self._closing:
            return False
        if self.state.has_room():
            return True
        self.state.set_paused(True)
        return False

    def _resume(self) -> None:
        conn = self._conn
        if conn is not None and not self._closing and self.state.has_room():
            self.state.set_paused(False)
            conn.resume_reading()

    def _on_message(
        self, conn: MqttConnection, topic: str, payload: bytes, mid: int, qos: int
    ) -> None:
        st = self.state
        st.received += 1
        st.held += 1
        st.held_bytes += len(payload)
        self._pending.append((conn, RawMessage(topic, payload, self.clock.now_ms(), mid, qos)))
        self._arrived.set()

    def _acknowledge(self, conn: MqttConnection, messages: list[RawMessage]) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(self._acknowledge, conn, messages)
            return
        if conn is self._conn and conn.is_open and conn.manual_ack:
            conn.ack_many([m.mid for m in messages if m.qos == 1])
            for m in messages:
                if m.qos > 1:  # never for our QoS 1 subscriptions; paho's own way if it comes
                    conn.ack(m.mid, m.qos)
        st = self.state
        st.held -= len(messages)
        st.held_bytes -= sum(len(m.payload) for m in messages)
        self._released.set()
        if st.paused:
            self._resume()

    async def _batch_loop(self) -> None:
        pending = self._pending
        while True:
            while not pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            conn = pending[0][0]
            batch: list[RawMessage] = []
            deadline = time.monotonic() + self.batch_ms / 1000
            while len(batch) < self.batch_max:
                if pending:
                    if pending[0][0] is not conn:
                        break  # one connection per batch: acks go where the messages came from
                    batch.append(pending.popleft()[1])
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    break
                self._arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    break
            await self.out.put(RawBatch(batch, _ack=functools.partial(self._acknowledge, conn)))


__all__ = [
    "SESSION_EXPIRY_S",
    "BrokerAddress",
    "IngestState",
    "MqttIngest",
    "RawBatch",
    "RawMessage",
]
