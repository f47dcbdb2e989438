"""MQTT ingest: a persistent QoS 1 session on the broker, micro-batches into a bounded queue.

Flow: broker -> ``MqttIngest.run`` (this module) -> ``asyncio.Queue[RawBatch]`` -> the pipeline,
which validates, stores, evaluates and then calls ``RawBatch.ack()``.

Why manual acknowledgement: a QoS 1 message is acknowledged to the broker only after the batch
holding it is committed to the store, so neither a crash nor a shutdown can lose a message that
the broker believes delivered. Redeliveries after a reconnect are harmless because the store
de-duplicates on (device, ts, seq). With MQTT 5 the client's Receive Maximum bounds how many
unacknowledged messages the broker sends us: that is the back-pressure to the broker when the
pipeline falls behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.clock import Clock, SystemClock
from telemetry.errors import InvalidAddress

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600  # a persistent session outlives a week-end of downtime


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
        if self._ack is not None:
            self._ack(self.messages)
            self._ack = None


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://[user:pass@]host[:port]`` (also ``tcp://``)."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
            raise InvalidAddress("MQTT URL must look like mqtt://host:port", url=url)
        return cls(parsed.hostname, parsed.port or 1883, parsed.username, parsed.password)


class MqttIngest:
    """Receives device messages and hands them on in micro-batches.

    A batch closes at ``batch_max`` messages or ``batch_ms`` after its first message. The output
    queue is bounded: when the pipeline is slow, ``put`` waits, we stop taking messages from the
    client, acknowledgements stop, and the broker stops sending (Receive Maximum).
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
        receive_maximum: int = 20_000,
        shared_group: str | None = None,
        backoff_max_s: float = 30.0,
        protocol: str = "5",
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.out = out
        self.clock = clock or SystemClock()
        self.client_id = client_id
        self.prefix = prefix
        self.batch_max = batch_max
        self.batch_ms = batch_ms
        self.receive_maximum = receive_maximum
        self.shared_group = shared_group
        self.backoff_max_s = backoff_max_s
        if protocol not in ("5", "3.1.1"):
            raise InvalidAddress("MQTT protocol must be 5 or 3.1.1", protocol=protocol)
        self.protocol = protocol
        self.connected = False
        self.connects = 0
        self.received = 0
        self._client: aiomqtt.Client | None = None

    def topics(self) -> list[str]:
        base = [f"{self.prefix}/+/position", f"{self.prefix}/+/lock"]
        if self.shared_group:
            # Several engine processes share one subscription: the broker spreads messages.
            return [f"$share/{self.shared_group}/{t}" for t in base]
        return base

    def _make_client(self) -> aiomqtt.Client:
        common = {
            "username": self.address.username,
            "password": self.address.password,
            "identifier": self.client_id,
            "keepalive": 30,
            "timeout": 10,
        }
        if self.protocol == "3.1.1":
            # MQTT 3.1.1 brokers (the demo's amqtt) get a persistent session through
            # clean_session=False; acknowledgement is automatic and a shutdown drains what
            # was received before it stops.
            return aiomqtt.Client(
                self.address.host,
                self.address.port,
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=False,
                **common,
            )
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.receive_maximum
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            **common,
        )
        # aiomqtt has no public switch for manual acknowledgement; paho's is the documented way.
        client._client.manual_ack_set(True)
        return client

    def _acker(self, client: aiomqtt.Client) -> Callable[[list[RawMessage]], None]:
        def ack(messages: list[RawMessage]) -> None:
            if self.protocol != "5":
                return  # acknowledged on receipt by the client library
            if self._client is not client or not self.connected:
                return  # the session will redeliver them; the store de-duplicates
            paho_client = client._client
            for m in messages:
                if m.qos > 0:
                    paho_client.ack(m.mid, m.qos)

        return ack

    async def run(self) -> None:
        """Connect, subscribe and batch forever; reconnect with capped exponential backoff."""
        backoff = 0.5
        while True:
            client = self._make_client()
            try:
                async with client:
                    self._client = client
                    self.connected = True
                    self.connects += 1
                    backoff = 0.5
                    for topic in self.topics():
                        await client.subscribe(topic, qos=1)
                    log.info("ingest connected to %s:%s", self.address.host, self.address.port)
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection lost (%s); reconnecting in %.1f s", exc, backoff)
            finally:
                self.connected = False
                self._client = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _consume(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        ack = self._acker(client)
        # The receive in progress. Never cancelled while it may hold a message: aiomqtt takes
        # the message off its queue in a task of its own, so cancelling `anext` (as a batch
        # timeout would) can drop one that was just handed over, and with manual acks the
        # broker never sends it again in this session. A batch that times out leaves the
        # receive running for the next batch instead.
        pending: asyncio.Task[aiomqtt.Message] | None = None

        async def receive(timeout: float | None) -> aiomqtt.Message | None:
            nonlocal pending
            if pending is None:
                pending = asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait((pending,), timeout=timeout)
            if not done:
                return None
            task, pending = pending, None
            return task.result()  # MqttError on a lost connection

        try:
            while True:
                first = await receive(None)
                assert first is not None
                batch = [self._raw(first)]
                deadline = time.monotonic() + self.batch_ms / 1000
                while len(batch) < self.batch_max:
                    if len(messages) > 0 or (pending is not None and pending.done()):
                        # already here: take it, the batch grows under load (up to batch_max)
                        msg = await receive(None)
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        msg = await receive(remaining)
                        if msg is None:
                            break
                    assert msg is not None
                    batch.append(self._raw(msg))
                self.received += len(batch)
                await self.out.put(RawBatch(batch, _ack=ack))
        finally:
            if pending is not None:
                # shutting down or disconnected: a message it may hold was not acknowledged,
                # so the broker redelivers it to the persistent session
                pending.cancel()

    def _raw(self, msg: aiomqtt.Message) -> RawMessage:
        payload = msg.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        return RawMessage(msg.topic.value, bytes(payload), self.clock.now_ms(), msg.mid, msg.qos)


__all__ = ["BrokerAddress", "MqttIngest", "RawBatch", "RawMessage"]
