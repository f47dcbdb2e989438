"""``cargowatch worker --bus nats://… --db URL``: one engine worker of the partitioned engine.

A ``BusWorker`` claims its share of both partition sets with leases (``telemetry.bus.leases``)
and runs, per owned partition, a pull consumer and its handler:

- DEVICES partitions (stage 1, ``busmode.devicestage``): validate, store dead letters, re-key
  every record onto its trip's TRIPS partition; acknowledged after the re-key is confirmed.
- TRIPS partitions (stage 2, ``busmode.tripstage``): one ``TripStage`` for all of them, its
  engine restored from the held partitions' checkpoints; telemetry, rules, alarms and
  checkpoints in one transaction, then the acknowledgement. The wall-clock rules tick it.

Each stage handles its partitions' batches in rounds (``busmode.rounds``): the consumers hand
over on one beat, and a round takes every batch of the beat in one call, so a worker's cost
follows its beats, not the number of partitions it holds.

Workers join and leave at any time: a leaving worker releases its leases (SIGTERM), a dead one
stops renewing them and the others take its partitions over within the lease TTL plus a
renewal round (10 s + 3.3 s by default; the contract's bound is 15 s). Whoever starts first
creates the streams and the lease bucket (idempotent, ``telemetry.bus.streams``).

``serve --bus --workers N`` runs N of these inside the API process; a standalone ``worker``
process has no API and relays its live events over NATS (``busmode.live``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from alerts import LiveHub
from cargowatch.busmode.control import CONTROL_SUBJECT
from cargowatch.busmode.devicestage import DeviceStage
from cargowatch.busmode.lag import PartitionLag, ahead_of_others, device_lags, horizon_of
from cargowatch.busmode.live import LiveRelay
from cargowatch.busmode.rekeyer import PipelinedRekeyer
from cargowatch.busmode.rounds import Item, RoundRunner, Rounds
from cargowatch.busmode.tripstage import TripStage
from cargowatch.metrics import Metrics
from cargowatch.settings import Settings, bus_servers
from core.clock import Clock, ScaledClock
from telemetry.bus.consumer import BatchHandler, BusMessage
from telemetry.bus.headers import cache_headers
from telemetry.bus.leases import default_owner, lease_bucket
from telemetry.bus.partitions import PART_PREFIX, TRIP_PREFIX
from telemetry.bus.reader import HandlerFactory, PartitionedReader
from telemetry.bus.rekey import Rekeyer
from telemetry.bus.streams import (
    DEVICE_LIMITS,
    DEVICE_STREAM,
    GIB,
    TRIP_LIMITS,
    TRIP_STREAM,
    StreamLimits,
    discover_layout,
    ensure_streams,
    stream_name,
)
from telemetry.store import Store, open_store

log = logging.getLogger(__name__)

TRIP_BATCH = 32
"""Messages of a trip partition handled (one store transaction) at a time: bundles of up to
a device batch's records each (``busmode.rekeyer``), so a few thousand records under load."""
MAX_HOLD_S = 15.0
"""Stage 1 holds a batch that runs ahead of another device partition at most this long (well
within the consumer's AckWait, 30 s, after which the server would deliver it again)."""
LAG_FRESH_S = 1.0
"""A lag reading older than this (the tick loop stopped, or NATS is slow) holds nothing."""
DEVICE_LAG_PERIOD_S = 0.2
"""How often a worker reads stage 1's lag for the wall-clock rules (``_device_horizon``)."""


async def connect(url: str, name: str) -> Client:
    """A NATS connection that reconnects for ever (a worker outlives a server restart), its
    header blocks parsed once (``telemetry.bus.headers``)."""
    nc = await nats.connect(
        servers=bus_servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1.0,
        connect_timeout=5,
        # at shutdown, drain() waits for every subscription's callbacks; one stuck (a KV
        # watch cancelled while it started) held a stopping serve for the default 30 s
        drain_timeout=5,
    )
    cache_headers(nc)
    return nc


def stream_limits(settings: Settings) -> tuple[StreamLimits, StreamLimits]:
    devices = StreamLimits(DEVICE_LIMITS.max_age_s, int(settings.bus_devices_gib * GIB))
    trips = StreamLimits(TRIP_LIMITS.max_age_s, int(settings.bus_trips_gib * GIB))
    return devices, trips


class _Reader(PartitionedReader):
    """A ``PartitionedReader`` that also tells its owner when a partition is lost."""

    def __init__(self, *args: Any, on_lost: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost

    async def _lost(self, n: int) -> None:
        await super()._lost(n)
        await self._on_lost(n)


class BusWorker:
    """Both stages of one worker; ``await run()`` until cancelled (then leases are released)."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        clock: Clock,
        hub: LiveHub,
        metrics: Metrics | None = None,
        owner: str | None = None,
        batch: int = 1000,
        trip_batch: int = TRIP_BATCH,
        linger_s: float | None = None,
    ) -> None:
        if not settings.bus_url:
            raise ValueError("a worker needs the bus URL (--bus)")
        self.settings = settings
        self.store = store
        self.clock = clock
        self.hub = hub
        self.metrics = metrics or Metrics()
        self.owner = owner or default_owner()
        self.batch = batch
        self.trip_batch = trip_batch
        self.linger_s = settings.bus_linger_ms / 1000 if linger_s is None else linger_s
        self.devices = DeviceStage(store, clock, self.metrics)
        self.stage: TripStage | None = None  # made when the layout is known
        self.trip_partitions = 0
        self.device_partitions = 0
        self._horizon: int | None = None  # stage 1 re-keyed everything received before it
        self._horizon_read = 0.0
        self._device_lags: dict[int, PartitionLag | None] = {}  # as last read
        self.device_reader: PartitionedReader | None = None
        self.trip_reader: PartitionedReader | None = None
        self.nc: Client | None = None
        self.ready = asyncio.Event()
        speed = clock.speed if isinstance(clock, ScaledClock) else 1.0
        self.tick_period_s = max(0.01, settings.tick_s / speed)

    # -- handlers ---------------------------------------------------------------------------
    def _device_handler_factory(self, rounds: Rounds) -> HandlerFactory:
        async def handler_for(n: int) -> BatchHandler:
            async def handle(batch: Sequence[BusMessage]) -> None:
                await self._hold_while_ahead(n, batch)
                await rounds.submit(n, batch)

            return handle

        return handler_for

    def _device_round(self, rekeyer: Rekeyer) -> RoundRunner:
        """Stage 1's round: the batches of every device partition validated in one pass and
        re-keyed in one publish (a bundle per trip partition, not one per device batch).
        Each partition's records keep their order (a device is in one partition)."""

        async def run(items: list[Item]) -> list[BaseException | None]:
            batch = [m for _, part in items for m in part]
            validated = await asyncio.to_thread(self.devices.validate, batch)
            if validated:
                await rekeyer.publish(validated)
            return [None] * len(items)

        return run

    async def _hold_while_ahead(self, n: int, batch: Sequence[BusMessage]) -> None:
        """Wait while this device partition's batch is ``bus_skew_hold_s`` ahead of another
        partition's oldest waiting message (``lag.ahead_of_others``; read every
        ``DEVICE_LAG_PERIOD_S`` by the tick loop). At most ``MAX_HOLD_S``: a reading that
        stopped coming must not stop stage 1."""
        hold_ms = int(self.settings.bus_skew_hold_s * 1000)
        if not batch or not hold_ms:
            return
        oldest = min(m.timestamp_ns for m in batch) // 1_000_000
        deadline = time.monotonic() + MAX_HOLD_S
        while (
            ahead_of_others(n, oldest, self._device_lags, hold_ms)
            and time.monotonic() < deadline
            # a reading that stopped coming (the tick loop ends first at shutdown) holds
            # nothing back
            and time.monotonic() - self._horizon_read < LAG_FRESH_S
        ):
            await asyncio.sleep(DEVICE_LAG_PERIOD_S)

    def _trip_handler_factory(self, rounds: Rounds) -> HandlerFactory:
        async def handler_for(n: int) -> BatchHandler:
            assert self.stage is not None
            await asyncio.to_thread(self.stage.acquire, n)

            async def handle(batch: Sequence[BusMessage]) -> None:
                await rounds.submit(n, batch)

            return handle

        return handler_for

    def _trip_round(self) -> RoundRunner:
        """Stage 2's round: the batches of every held trip partition in one transaction."""

        async def run(items: list[Item]) -> Sequence[BaseException | None]:
            assert self.stage is not None
            return await asyncio.to_thread(self.stage.process, items)

        return run

    async def _trip_lost(self, n: int) -> None:
        if self.stage is not None:
            await asyncio.to_thread(self.stage.release, n)

    async def _device_lost(self, n: int) -> None:
        return None

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        assert self.settings.bus_url
        nc = self.nc = await connect(self.settings.bus_url, f"cargowatch-worker-{self.owner}")
        relay: LiveRelay | None = None
        try:
            js = nc.jetstream()
            layout = await discover_layout(nc)
            self.trip_partitions = layout.trip_partitions
            self.device_partitions = layout.partitions
            self.stage = TripStage(
                layout.trip_partitions,
                store=self.store,
                clock=self.clock,
                hub=self.hub,
                metrics=self.metrics,
            )
            await ensure_streams(
                js,
                *stream_limits(self.settings),
                replicas=self.settings.bus_replicas,
                layout=layout,
            )
            kv = await lease_bucket(js, replicas=self.settings.bus_replicas)
            ttl = (await kv.status()).ttl or 10.0
            if self.hub.forward is None:  # a standalone worker: its live events go over NATS
                relay = LiveRelay(self.hub, nc, receive=False)
                await relay.start()
            rekeyer = PipelinedRekeyer(js, layout.trip_partitions)
            device_rounds = Rounds(self._device_round(rekeyer), name="devices")
            trip_rounds = Rounds(self._trip_round(), name="trips")
            # every consumer of the worker hands over on one beat: a round takes them together
            options = {"batch": self.batch, "linger_s": self.linger_s, "linger_grid": True}
            self.device_reader = _Reader(
                js,
                kv,
                self.owner,
                stream=DEVICE_STREAM,
                prefix=PART_PREFIX,
                partitions=layout.partitions,
                handler_for=self._device_handler_factory(device_rounds),
                ttl_s=ttl,
                group="dev",
                consumer_options=options,
                on_lost=self._device_lost,
            )
            self.trip_reader = _Reader(
                js,
                kv,
                self.owner,
                stream=TRIP_STREAM,
                prefix=TRIP_PREFIX,
                partitions=layout.trip_partitions,
                handler_for=self._trip_handler_factory(trip_rounds),
                ttl_s=ttl,
                group="trip",
                consumer_options={**options, "batch": self.trip_batch},
                on_lost=self._trip_lost,
            )
            control = await nc.subscribe(CONTROL_SUBJECT, cb=self._on_control)
            self.device_reader.start()
            self.trip_reader.start()
            self.ready.set()
            log.info(
                "worker %s on %d device and %d trip partitions",
                self.owner,
                layout.partitions,
                layout.trip_partitions,
            )
            try:
                await self._tick_loop(js)
            finally:
                with contextlib.suppress(Exception):
                    await control.unsubscribe()
                await self._close_readers()
                await device_rounds.close()
                await trip_rounds.close()
        finally:
            if relay is not None:
                await relay.stop()
            with contextlib.suppress(Exception):
                await nc.drain()

    async def _close_readers(self) -> None:
        # Cancellation may arrive again while we hand over: finish the hand-over anyway.
        for reader in (self.device_reader, self.trip_reader):
            if reader is not None:
                task = asyncio.ensure_future(reader.close())
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    await task
                    raise

    @property
    def owned(self) -> tuple[frozenset[int], frozenset[int]]:
        """(device partitions, trip partitions) this worker consumes now."""
        dev = self.device_reader.owned if self.device_reader else frozenset()
        trip = self.trip_reader.owned if self.trip_reader else frozenset()
        return dev, trip

    async def _tick_loop(self, js: Any) -> None:
        while True:
            now = self.clock.now_ms()
            horizon = await self._device_horizon(js, now)
            stage = self.stage
            # stage 1 unreadable (horizon None): judge nothing until it can be read again
            if stage is not None and stage.owned and horizon is not None:
                backlog = {n for n in sorted(stage.owned) if await self._backlog(js, n)}
                try:
                    await asyncio.to_thread(stage.tick, horizon, backlog)
                except Exception:
                    log.exception("tick of trip partitions %s failed", sorted(stage.owned))
                    self.metrics.tick_errors.inc()
            await asyncio.sleep(self.tick_period_s)

    async def _device_horizon(self, js: Any, now: int) -> int | None:
        """Up to when every device message received has been re-keyed (stage 1 lag counts as
        backlog, ``busmode.lag``): any device partition may hold a message of any trip. Read
        at most every ``DEVICE_LAG_PERIOD_S``; a horizon read earlier stays true (it is a
        past time), so in between the last one is used."""
        t = time.monotonic()
        if self._horizon is None or t - self._horizon_read >= DEVICE_LAG_PERIOD_S:
            try:
                self._device_lags = await device_lags(js, self.device_partitions)
                self._horizon = horizon_of(self._device_lags, self.clock)
                self._horizon_read = t
            except (LookupError, TimeoutError, nats.errors.Error) as exc:
                log.warning("device partitions' lag unreadable (%s): wall-clock rules wait", exc)
        return None if self._horizon is None else min(now, self._horizon)

    async def _backlog(self, js: Any, n: int) -> bool:
        """Messages of trip partition n wait (in the stream, or delivered and not yet
        acknowledged): the wall-clock rules then judge only up to what was evaluated."""
        try:
            async with asyncio.timeout(1.0):
                info = await js.consumer_info(stream_name(TRIP_STREAM, n), f"p{n}")
        except (TimeoutError, NotFoundError, nats.errors.Error):
            return True
        return bool(info.num_pending or info.num_ack_pending)

    async def _on_control(self, msg: Msg) -> None:
        try:
            doc = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        stage = self.stage
        try:
            if "trip" in doc:
                trip_id = str(doc["trip"])
                devices = [str(d) for d in doc.get("devices") or []]
                self.devices.forget(devices)
                if stage is None:
                    return
                if stage.holds(trip_id):
                    await asyncio.to_thread(stage.refresh, trip_id)
                else:
                    # the trip may have ended elsewhere: its span is its devices' other
                    # trips' business too
                    await asyncio.to_thread(stage.note_ended, devices)
            elif "shipper" in doc and stage is not None:
                await asyncio.to_thread(stage.put_shipper, str(doc["shipper"]))
            elif "geofence" in doc and stage is not None:
                await asyncio.to_thread(stage.put_geofence, str(doc["geofence"]))
        except Exception:
            log.exception("control message %s failed", doc)


async def run_worker(settings: Settings) -> int:
    """The ``worker`` command: one BusWorker until SIGTERM/SIGINT, then a clean hand-over."""
    store = open_store(settings.db_url)
    try:
        worker = BusWorker(
            settings, store=store, clock=settings.make_clock(), hub=LiveHub(), batch=1000
        )
        task = asyncio.create_task(worker.run(), name="worker")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return 0
    finally:
        store.close()
