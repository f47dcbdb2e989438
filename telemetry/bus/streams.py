"""The JetStream streams of the partitioned engine, and the partition layout.

- ``DEVICES`` over ``part.*.devices.*.*``: every device message as the server's mapping
  partitioned it (P partitions by device); and over ``devices.>``: what the mapping did not match
  (a topic of the wrong shape), read with partition 0 and stored as dead letters. File storage,
  limits retention, discard old.
- ``TRIPS`` over ``trip.*.>``: validated messages re-keyed by trip (P2 partitions), so that one
  worker reads all of a trip's devices. Its duplicate window makes the re-key idempotent
  (``Nats-Msg-Id``, see ``rekey``).

**Retention (defaults, configurable through ``StreamLimits``).** The streams are a buffer in
front of the store, not an archive (TimescaleDB is the archive): they must hold what arrives
while every worker or the database is down, and a replay for a partition that moves. The limits
are age and bytes, whichever is reached first, and the oldest messages go first:

- ``DEVICES``: 7 days, 50 GiB. A stored message costs about its payload plus ~100 bytes (subject,
  headers, index), so ~300 B for a position fix: 50 GiB holds ~180 M messages, i.e. ~25 hours at
  2,000 msg/s, ~1.5 hours at 33,000 msg/s (1 M trucks at one message per 30 s) — raise
  ``max_bytes`` for a large fleet: the bytes cap is then the binding limit, and it is the outage
  a deployment survives without losing device data.
- ``TRIPS``: 2 days, 20 GiB. It only needs to cover a trip worker's outage; a lost trip message
  can be re-derived from ``DEVICES`` by resetting the re-key consumers.
- Duplicate window of ``TRIPS``: 2 minutes. A re-key input is redelivered within the consumer's
  AckWait (30 s) after a failure, or after a lease moves (≤ 15 s + AckWait), so 2 minutes covers
  every redelivery while keeping the server's table of message ids small (ids per second × 120).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from telemetry.bus.partitions import DEVICE_PREFIX, PART_PREFIX, TRIP_PREFIX

DEVICE_STREAM = "DEVICES"
TRIP_STREAM = "TRIPS"
LAYOUT_SUBJECT = "cargowatch.layout"
"""Mapped by the server onto ``cargowatch.layout.{P}.{P2}`` (see ``config``)."""

INSUFFICIENT_STORAGE = 10047  # JetStream API error code
# "replicas > 1 not supported in non-clustered mode", "insufficient resources" (too few peers)
REPLICA_ERRORS = frozenset({10074, 10023})
DAY_S = 24 * 3600.0
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_age_s: float
    max_bytes: int
    duplicate_window_s: float = 120.0


DEVICE_LIMITS = StreamLimits(max_age_s=7 * DAY_S, max_bytes=50 * GIB)
TRIP_LIMITS = StreamLimits(max_age_s=2 * DAY_S, max_bytes=20 * GIB)


@dataclass(frozen=True, slots=True)
class BusLayout:
    """How many device partitions (the server's mapping) and trip partitions there are."""

    partitions: int
    trip_partitions: int


async def discover_layout(nc: Client, timeout_s: float = 2.0) -> BusLayout:
    """Ask the server for the partition counts it was configured with.

    Publishes on ``cargowatch.layout``; the server's mapping delivers it on
    ``cargowatch.layout.{P}.{P2}`` to our own subscription. No stream captures these subjects.
    """
    sub = await nc.subscribe(f"{LAYOUT_SUBJECT}.*.*", max_msgs=1)
    try:
        await nc.publish(LAYOUT_SUBJECT, b"")
        await nc.flush()
        msg = await sub.next_msg(timeout=timeout_s)
    except nats.errors.TimeoutError as exc:
        raise LookupError(
            "the NATS server has no cargowatch layout mapping: configure it with "
            "`cargowatch broker-config nats`"
        ) from exc
    finally:
        await sub.unsubscribe()
    p, p2 = msg.subject.split(".")[-2:]
    return BusLayout(int(p), int(p2))


def stream_configs(
    devices: StreamLimits = DEVICE_LIMITS, trips: StreamLimits = TRIP_LIMITS, replicas: int = 1
) -> list[StreamConfig]:
    """The two streams' configurations (``replicas`` 3 on a three-node cluster)."""

    def config(name: str, subjects: list[str], limits: StreamLimits, what: str) -> StreamConfig:
        return StreamConfig(
            name=name,
            description=what,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            max_age=limits.max_age_s,
            max_bytes=limits.max_bytes,
            duplicate_window=limits.duplicate_window_s,
            num_replicas=replicas,
        )

    return [
        config(
            DEVICE_STREAM,
            # plus device topics of the wrong shape, which the mapping leaves as they are
            [f"{PART_PREFIX}.*.{DEVICE_PREFIX}.*.*", f"{DEVICE_PREFIX}.>"],
            devices,
            "cargowatch: device messages, partitioned by device",
        ),
        config(
            TRIP_STREAM,
            [f"{TRIP_PREFIX}.*.>"],
            trips,
            "cargowatch: validated messages re-keyed by trip",
        ),
    ]


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config``. Safe to race: every engine
    process calls it at start and they all converge on the same configuration.

    An existing stream with another number of replicas is scaled to ``config``'s (the server
    copies it to the new peers, or drops copies, while it stays available): raising
    ``CARGOWATCH_BUS_REPLICAS`` from 1 to 3 on a cluster is a restart of the workers. More
    replicas than the cluster can place (or > 1 on a single server) is an ``APIError`` saying
    so."""
    assert config.name is not None
    try:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                await asyncio.sleep(0)  # created meanwhile by another process: update below
        await js.update_stream(config)
    except nats.js.errors.APIError as exc:
        if isinstance(exc, nats.js.errors.ServerError) and exc.err_code == INSUFFICIENT_STORAGE:
            raise nats.js.errors.ServerError(
                code=exc.code,
                err_code=exc.err_code,
                description=f"stream {config.name}: max_bytes {config.max_bytes} does not fit in "
                "the server's JetStream file store (its max_file_store, by default 75 % of the "
                "free disk); lower the stream's limit or give the server more storage",
            ) from exc
        replicas = config.num_replicas or 1
        if replicas > 1 and (
            exc.err_code in REPLICA_ERRORS or "replica" in (exc.description or "").lower()
        ):
            raise type(exc)(
                code=exc.code,
                err_code=exc.err_code,
                description=f"stream {config.name}: {replicas} replicas need a NATS cluster of "
                f"at least {replicas} JetStream nodes (CARGOWATCH_BUS_REPLICAS; 1 on a single "
                f"server); the server said: {exc.description}",
            ) from exc
        raise


async def ensure_streams(
    js: JetStreamContext,
    devices: StreamLimits = DEVICE_LIMITS,
    trips: StreamLimits = TRIP_LIMITS,
    replicas: int = 1,
) -> None:
    for config in stream_configs(devices, trips, replicas):
        await ensure_stream(js, config)
