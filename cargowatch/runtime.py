"""The composition root: wires the store, engine, alarm service, webhook sender, MQTT ingest
and the services from one ``Settings``, and runs the loops as one task group.

    broker -> MqttIngest -> queue[RawBatch] -> Pipeline (validate, store, rules, alarms)
                                             -> LiveHub (SSE) / outbox -> WebhookSender
    tick loop (1 s) -> Engine.tick (signal loss, late arrival)   escalation loop -> AlarmService

``Runtime(settings, store=...)`` only builds objects. ``Runtime.open(settings)`` is the one
step with I/O: it opens the store, loads the engine's state and stores the admin key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import alerts
from alerts import AlarmService, LiveHub, WebhookSender
from alerts.mail_smtp import Mailer
from alerts.targets import TargetGuard
from cargowatch.metrics import Metrics
from cargowatch.pipeline import Pipeline
from cargowatch.services import (
    DeviceService,
    EngineGate,
    GeofenceService,
    KeyService,
    ReplayService,
    ShipperService,
    TripService,
)
from cargowatch.services.carriers import CarrierService
from cargowatch.services.devices import device_broker
from cargowatch.services.exceptions import ExceptionService
from cargowatch.settings import Settings
from core.clock import Clock, ScaledClock
from core.errors import Unavailable
from rules import Engine
from telemetry.ingest import MqttIngest, RawBatch
from telemetry.store import Store, open_store

log = logging.getLogger(__name__)

DRAIN_S = 4.0


class Runtime:
    """Everything a running cargowatch consists of. ``running()`` owns the tasks."""

    def __init__(self, settings: Settings, *, store: Store, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or settings.make_clock()
        # The wall-clock rules run every tick_s of this clock's time.
        self.clock_speed = self.clock.speed if isinstance(self.clock, ScaledClock) else 1.0
        self.tiles = settings.tiles
        self.store = store
        self.metrics = Metrics()
        self.hub = LiveHub()
        self.alarms = AlarmService(self.store, self.clock, self.hub, metrics=self.metrics)
        # Where shippers' events may go (the SSRF guard), at subscription and every delivery.
        self.targets = TargetGuard(allow_private=settings.allow_private_targets)
        # E-mail notifications (docs/notifications.md): sent by the webhook loop.
        mailer = (
            Mailer(
                self.store,
                settings.smtp,
                sender=settings.smtp_from,
                public_url=settings.public_url or f"http://{settings.http}/",
                targets=self.targets,
            )
            if settings.smtp
            else None
        )
        self.webhooks = WebhookSender(
            self.store, self.clock, metrics=self.metrics, targets=self.targets, mailer=mailer
        )
        self.gate = self._make_gate()
        self.pipeline = Pipeline(
            self.store, self.gate, self.clock, metrics=self.metrics, prefix=settings.topic_prefix
        )
        self.queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=settings.queue_batches)
        self.ingest: MqttIngest | None = None
        if settings.mqtt_url and not settings.bus_url:  # bus mode: cargowatch.busmode
            self.ingest = MqttIngest(
                settings.mqtt_url,
                self.queue,
                clock=self.clock,
                client_id=settings.client_id,
                prefix=settings.topic_prefix,
                batch_max=settings.batch_max,
                batch_ms=settings.batch_ms,
                shared_group=settings.shared_group,
                protocol=settings.mqtt_protocol,
                ca_file=settings.mqtt_ca,
            )
        self.devices = DeviceService(
            self.store,
            self.clock,
            prefix=settings.topic_prefix,
            known=self.pipeline.add_device,
            broker=device_broker(settings),
        )
        self.trips = TripService(self.store, self.clock, self.gate, self.devices)
        self.shippers = ShipperService(self.store, self.gate)
        self.geofences = GeofenceService(self.store, self.clock, self.gate)
        self.keys = KeyService(self.store, self.clock)
        self.carriers = CarrierService(self.store, self.clock)
        self.exceptions = ExceptionService(self.store, self.alarms)
        self.replays = ReplayService(self.store)
        self.started = False
        self._busy = False
        self._failing_since: int | None = None
        self._last_failure = ""
        wire_metrics(self)

    def _make_gate(self) -> EngineGate:
        """The engine gate (bus mode: one that holds no trips, ``busmode.apigate``)."""
        return EngineGate(self.store, self.alarms, self.clock)

    @property
    def engine(self) -> Engine:
        """The live engine (rebuilt from the store after a failed commit)."""
        return self.gate.engine

    @classmethod
    def open(
        cls, settings: Settings, *, clock: Clock | None = None, store: Store | None = None
    ) -> Runtime:
        """Open the store (unless given), build the runtime and load its state: shipper
        rules, geofences and open trips into the engine; the admin key into the store."""
        opened = store is None
        store = store or open_store(settings.db_url)
        try:
            runtime = cls(settings, store=store, clock=clock)
            runtime.load()
        except BaseException:
            if opened:
                store.close()
            raise
        return runtime

    def load(self) -> None:
        """The I/O of a start: engine state from the store, the admin key into it."""
        self.gate.load()
        if self.settings.admin_key:
            # named "admin" in histories; the setting's name would say nothing to a shipper
            self.keys.ensure(self.settings.admin_key, "admin", None, "admin")

    # -- the API's calls (api.deps.RuntimeLike), each one service --------------------------
    def register_device(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.devices.register(doc)

    def device_credentials(self, device_id: str) -> dict[str, Any]:
        return self.devices.credentials(device_id)

    def revoke_device(self, device_id: str) -> None:
        self.devices.revoke(device_id)

    def create_trip(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.trips.create(doc)

    def end_trip(self, trip_id: str, status: str, by: str) -> dict[str, Any]:
        return self.trips.end(trip_id, status, by)

    def trip_state(self, trip_id: str) -> dict[str, Any] | None:
        return self.trips.state(trip_id)

    def put_shipper(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.shippers.put(doc)

    def put_geofence(self, feature: dict[str, Any]) -> dict[str, Any]:
        return self.geofences.put(feature)

    def create_api_key(
        self, role: str, shipper: str | None, name: str | None = None
    ) -> dict[str, Any]:
        return self.keys.create(role, shipper, name)

    def lookup_api_key(self, secret: str) -> dict[str, Any] | None:
        return self.keys.lookup(secret)

    def list_api_keys(self) -> list[dict[str, Any]]:
        return self.keys.list()

    def revoke_api_key(self, key_id: str) -> None:
        self.keys.revoke(key_id)

    def assignable_names(self) -> set[str]:
        return self.keys.names(("admin", "desk"))

    def put_carrier(
        self, carrier_id: str, name: str, contacts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return self.carriers.put(carrier_id, name, contacts)

    def report_exception(self, trip_id: str, **fields: Any) -> dict[str, Any]:
        return self.exceptions.report(trip_id, **fields)

    def replay(
        self,
        trip_ids: Sequence[str] | None,
        device_ids: Sequence[str] | None,
        since_ms: int | None,
        until_ms: int | None,
        overrides: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        return self.replays.run(trip_ids, device_ids, since_ms, until_ms, overrides)

    # -- observability ----------------------------------------------------------------------
    def metrics_text(self) -> bytes:
        """``GET /metrics``: the Prometheus text format (``prometheus_client``)."""
        return self.metrics.render()

    def health(self) -> dict[str, Any]:
        """``ok`` only while the pipeline keeps up; else ``degraded`` with the reasons."""
        store_ok = False
        with contextlib.suppress(Exception):
            store_ok = bool(self.store.ping())
        mqtt_ok = None if self.ingest is None else self.ingest.connected
        reasons: list[str] = []
        if not self.started:
            reasons.append("not running")
        if not store_ok:
            reasons.append("store down")
        if self.ingest is not None:
            problem = self.ingest.state.problem
            if problem:
                reasons.append(problem)
        if self._failing_since is not None:
            reasons.append("batches failing: " + self._last_failure)
        if self.queue.full():
            reasons.append(f"backlog: {self.queue.qsize()} batches waiting for the pipeline")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "store": store_ok,
            "mqtt": mqtt_ok,
            "running": self.started,
            "queue_batches": self.queue.qsize(),
            "now": alerts.iso(self.clock.now_ms()),
            "active_trips": len(self.engine.active_trips()),
        }

    # -- tasks ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Run ingest, pipeline, tick, escalation and webhook loops until the block exits;
        on exit stop receiving first, process what was received, then stop the rest."""
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(self._consume(), name="pipeline")
            others = [
                tg.create_task(self._tick_loop(), name="tick"),
                tg.create_task(self.alarms.run(), name="escalation"),
                tg.create_task(self.webhooks.run(), name="webhooks"),
            ]
            ingest_task = tg.create_task(self.ingest.run(), name="ingest") if self.ingest else None
            self.started = True
            try:
                yield self
            finally:
                self.started = False
                if ingest_task is not None:
                    ingest_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ingest_task
                # Drain: everything received gets stored before we stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await self.queue.join()
                consumer.cancel()
                for t in others:
                    t.cancel()

    async def _consume(self) -> None:
        while True:
            batch = await self.queue.get()
            self._busy = True
            try:
                await self._process_until_stored(batch)
            finally:
                self._busy = False
                self.queue.task_done()

    def backlog(self) -> bool:
        """Received messages wait to be evaluated (queued, in the pipeline now, or held in
        the broker while ingest's reading is paused)."""
        paused = self.ingest is not None and self.ingest.state.backlog
        return self._busy or not self.queue.empty() or paused

    async def _process_until_stored(self, batch: RawBatch) -> None:
        backoff = 0.2
        while True:
            try:
                await asyncio.to_thread(self.pipeline.process, batch.messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Nothing of the batch was kept (one transaction): leave it unacknowledged
                # and retry; the bounded hand-off pauses reading from the broker meanwhile.
                self._last_failure = f"{type(exc).__name__}: {exc}"
                if self._failing_since is None:
                    self._failing_since = self.clock.now_ms()
                if isinstance(exc, Unavailable):
                    log.warning(
                        "batch of %d messages not stored, nothing of it kept (%s); "
                        "retrying in %.1f s",
                        len(batch.messages),
                        exc,
                        backoff,
                    )
                else:
                    log.exception(
                        "batch of %d messages failed, nothing of it kept; retrying in %.1f s",
                        len(batch.messages),
                        backoff,
                    )
                self.metrics.store_errors.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._failing_since = None
            batch.ack()
            return

    async def _tick_loop(self) -> None:
        # tick_s of the (possibly accelerated) clock; the floor keeps an idle engine cheap
        period = max(0.01, self.settings.tick_s / self.clock_speed)
        while True:
            try:
                now = self.clock.now_ms()
                await asyncio.to_thread(self.pipeline.tick, now, self.backlog())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed")
                self.metrics.tick_errors.inc()
            await asyncio.sleep(period)

    def close(self) -> None:
        """Checkpoint the engine (the next start re-runs nothing) and close the store."""
        try:
            self.gate.flush()
        except Exception as exc:
            log.warning("engine checkpoint at stop failed (%s); the next start re-runs", exc)
        self.store.close()


def wire_metrics(runtime: Runtime) -> None:
    """The state gauges, read at scrape time: a constant number of store queries per scrape."""
    ingest = runtime.ingest
    runtime.metrics.bind_gauges(
        open_alarms=lambda: runtime.store.alarm_counts(),
        active_trips=lambda: len(runtime.engine.active_trips()),
        queue_batches=runtime.queue.qsize,
        mqtt_connected=lambda: bool(ingest and ingest.connected),
    )
