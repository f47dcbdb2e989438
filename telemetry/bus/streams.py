"""The JetStream streams of the partitioned engine, and the partition layout.

One stream per partition, in two families:

- ``DEVICES_{n}`` over ``part.{n}.devices.*.*``: device partition n's messages as the server's
  mapping partitioned them (P partitions by device); ``DEVICES_0`` also over ``devices.>``: what
  the mapping did not match (a topic of the wrong shape), stored as dead letters. File storage,
  limits retention, discard old.
- ``TRIPS_{n}`` over ``trip.{n}.>``: validated messages re-keyed by trip (P2 partitions), so
  that one worker reads all of a trip's devices. Its duplicate window makes the re-key
  idempotent (``Nats-Msg-Id``, see ``rekey``).

**Why a stream per partition, not one stream filtered by partition.** Partition 0 also reads
the device topics the mapping leaves alone, so in one shared stream its consumer had two
filters (``part.0.>`` and ``devices.>``); a consumer with several filters that is behind the
stream's tail costs the server a search per message. Measured here (``python -m
bench.streams``: 100,000 messages from 21,000 devices over 4 partitions, partition 0 drained
from the start): 1,477 msg/s at 726 µs of server CPU a message with the two filters, against
42,800 msg/s at 3.6 µs with one filter and 44,200 msg/s at 2.4 µs with a stream per partition
and no filter. So once partition 0 fell behind (a restart, a peak), it never caught up and
took the server's CPU from everything else. With a stream per partition no consumer needs a
filter, and the server stores into P streams independently.

**Retention (defaults, configurable through ``StreamLimits``; a family's bytes are shared
equally by its P streams).** The streams are a buffer in front of the store, not an archive
(TimescaleDB is the archive): they must hold what arrives while every worker or the database is
down, and a replay for a partition that moves. The limits are age and bytes, whichever is
reached first, and the oldest messages go first:

- ``DEVICES_*``: 7 days, 50 GiB in all. A stored message costs about its payload plus ~100
  bytes (subject, headers, index), so ~300 B for a position fix: 50 GiB holds ~180 M messages,
  i.e. ~25 hours at 2,000 msg/s, ~1.5 hours at 33,000 msg/s (1 M trucks at one message per
  30 s) — raise the bytes for a large fleet: they are then the binding limit, and the outage a
  deployment survives without losing device data.
- ``TRIPS_*``: 2 days, 20 GiB in all. They only need to cover a trip worker's outage; a lost
  trip message can be re-derived from ``DEVICES_*`` by resetting the re-key consumers.
- Duplicate window of ``TRIPS_*``: 2 minutes. A re-key input is redelivered within the
  consumer's AckWait (30 s) after a failure, or after a lease moves (≤ 15 s + AckWait), so 2
  minutes covers every redelivery while keeping the server's table of message ids small (ids
  per second × 120).

The single-stream layout of earlier versions (``DEVICES``, ``TRIPS``) overlaps these subjects:
``ensure_streams`` removes its streams when nothing in them waits, else refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from telemetry.bus.partitions import DEVICE_PREFIX, PART_PREFIX, TRIP_PREFIX

log = logging.getLogger(__name__)

DEVICE_STREAM = "DEVICES"
TRIP_STREAM = "TRIPS"
"""Family names: partition n's stream is ``stream_name(family, n)``."""
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


def stream_name(family: str, n: int) -> str:
    """The stream of partition ``n`` of a family (``DEVICE_STREAM``, ``TRIP_STREAM``)."""
    return f"{family}_{n}"


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
    layout: BusLayout,
    devices: StreamLimits = DEVICE_LIMITS,
    trips: StreamLimits = TRIP_LIMITS,
    replicas: int = 1,
) -> list[StreamConfig]:
    """Every partition's stream configuration (``replicas`` 3 on a three-node cluster)."""

    def config(
        name: str, subjects: list[str], limits: StreamLimits, share: int, what: str
    ) -> StreamConfig:
        return StreamConfig(
            name=name,
            description=what,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            max_age=limits.max_age_s,
            max_bytes=max(1, limits.max_bytes // share),
            duplicate_window=limits.duplicate_window_s,
            num_replicas=replicas,
        )

    out = [
        config(
            stream_name(DEVICE_STREAM, n),
            # partition 0 also keeps device topics of the wrong shape, which the mapping
            # leaves as they are
            [f"{PART_PREFIX}.{n}.{DEVICE_PREFIX}.*.*"] + ([f"{DEVICE_PREFIX}.>"] if n == 0 else []),
            devices,
            layout.partitions,
            f"cargowatch: device partition {n}",
        )
        for n in range(layout.partitions)
    ]
    out += [
        config(
            stream_name(TRIP_STREAM, n),
            [f"{TRIP_PREFIX}.{n}.>"],
            trips,
            layout.trip_partitions,
            f"cargowatch: trip partition {n} (validated messages re-keyed by trip)",
        )
        for n in range(layout.trip_partitions)
    ]
    return out


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
    layout: BusLayout | None = None,
) -> BusLayout:
    """Every partition's stream (``layout``: read from the server when not given); returns
    the layout."""
    if layout is None:
        layout = await discover_layout(js._nc)  # the context keeps no public connection
    await _retire_single_streams(js)
    for config in stream_configs(layout, devices, trips, replicas):
        await ensure_stream(js, config)
    return layout


async def _retire_single_streams(js: JetStreamContext) -> None:
    """Remove the streams of the single-stream layout when nothing in them waits for a
    consumer; refuse to start when something does (its subjects overlap the new streams')."""
    for name in (DEVICE_STREAM, TRIP_STREAM):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            continue
        waiting = 0
        if info.state.messages:
            consumers = await js.consumers_info(name)
            if not consumers:
                waiting = info.state.messages
            for c in consumers:
                waiting += (c.num_pending or 0) + (c.num_ack_pending or 0)
        if waiting:
            raise RuntimeError(
                f"the NATS server holds stream {name} of an earlier cargowatch (one stream for "
                f"all partitions) with {waiting} messages not yet handled: run that version's "
                "workers until it is drained, then start this one (it removes the old streams)"
            )
        log.warning("removing stream %s of the single-stream layout (drained)", name)
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
