"""The composition root: builds the store, engine, alarm service, webhook sender and MQTT
ingest from one ``Settings``, and runs them as one task group.

    broker -> MqttIngest -> queue[RawBatch] -> Pipeline (validate, store, rules, alarms)
                                             -> LiveHub (SSE) / outbox -> WebhookSender
    tick loop (1 s) -> Engine.tick (signal loss, late arrival)   escalation loop -> AlarmService
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import alerts
import rules
from alerts import AlarmService, LiveHub, WebhookSender
from cargowatch.metrics import Metrics
from cargowatch.pipeline import Pipeline
from cargowatch.settings import Settings
from core.clock import Clock
from core.errors import InvalidInput, NotFoundError, StateConflict
from geofence import FenceSet, GeometryError
from rules import Engine, TripStatus
from rules.events import AlarmSignal
from telemetry.errors import Conflict
from telemetry.ingest import MqttIngest, RawBatch
from telemetry.store import Store, open_store

log = logging.getLogger(__name__)

ROLES = ("admin", "desk", "fleet", "shipper")
FENCE_KINDS = ("depot", "consignee", "rest_area", "risk_zone", "custom")
SEVERITIES = ("critical", "major", "minor")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Runtime:
    """Everything a running cargowatch consists of. ``running()`` owns the tasks."""

    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or settings.make_clock()
        self.store = store or open_store(settings.db_url)
        self.metrics = Metrics()
        self.hub = LiveHub()
        self.alarms = AlarmService(self.store, self.clock, self.hub)
        self.webhooks = WebhookSender(self.store, self.clock)
        self.engine = Engine()
        self.engine_lock = threading.RLock()
        self.pipeline = Pipeline(
            self.store,
            self.engine,
            self.alarms,
            self.clock,
            self.metrics,
            prefix=settings.topic_prefix,
            engine_lock=self.engine_lock,
        )
        self.queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=settings.queue_batches)
        self.ingest: MqttIngest | None = None
        if settings.mqtt_url:
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
            )
        self.started = False
        self._busy = False
        self._describe_metrics()
        self._load_state()
        if settings.admin_key:
            self._ensure_key(settings.admin_key, "admin", None, "CARGOWATCH_ADMIN_KEY")

    # -- start-up state ---------------------------------------------------------------------
    def _load_state(self) -> None:
        """Engine state from the store: shipper rules, geofences, open trips (restart-safe)."""
        with self.engine_lock:
            for shipper in self.store.list_shippers():
                self.engine.put_shipper_rules(shipper["shipper"], shipper.get("rules") or {})
            for fence in self.store.list_geofences():
                try:
                    self.engine.put_geofence(fence)
                except Exception:
                    log.exception(
                        "stored geofence %s could not be loaded", fence.get("geofence_id")
                    )
            for status in ("planned", "active"):
                for trip in self.store.list_trips(status=status, limit=1_000_000):
                    try:
                        events = self.engine.upsert_trip(
                            trip, self.store.trip_events(trip["trip_id"])
                        )
                        self.alarms.handle(events)
                    except Exception:
                        log.exception("stored trip %s could not be loaded", trip.get("trip_id"))

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("cargowatch_messages_in_total", "counter", "MQTT messages taken from the broker")
        m.describe("cargowatch_dead_letters_total", "counter", "Rejected messages by reason")
        m.describe("cargowatch_fixes_stored_total", "counter", "New fixes stored")
        m.describe("cargowatch_lock_events_stored_total", "counter", "New lock events stored")
        m.describe("cargowatch_duplicates_total", "counter", "Duplicate messages skipped")
        m.describe("cargowatch_batch_size", "histogram", "Messages per ingest batch")
        m.describe("cargowatch_store_write_seconds", "histogram", "Store write time per batch")
        m.describe("cargowatch_ingest_lag", "histogram", "Receive-to-processed time per batch (s)")
        m.describe(
            "cargowatch_ingest_lag_seconds", "gauge", "Receive-to-processed time, last batch"
        )
        m.gauge_fn("cargowatch_alarms_raised_total", self._alarm_counters)
        m.gauge_fn("cargowatch_open_alarms", self._open_alarms)
        m.gauge_fn(
            "cargowatch_active_trips", lambda: [((), float(len(self.engine.active_trips())))]
        )
        m.gauge_fn("cargowatch_ingest_queue_batches", lambda: [((), float(self.queue.qsize()))])
        m.gauge_fn(
            "cargowatch_mqtt_connected",
            lambda: [((), float(bool(self.ingest and self.ingest.connected)))],
        )
        m.gauge_fn("cargowatch_webhook_deliveries_total", self._webhook_counters)

    def _alarm_counters(self) -> list[tuple[tuple[tuple[str, str], ...], float]]:
        counters = getattr(self.alarms, "counters", {}) or {}
        out = []
        for key, v in counters.items():
            if isinstance(key, tuple) and len(key) == 2 and key[0] == "raised":
                out.append(((("type", str(key[1])),), float(v)))
            elif isinstance(key, str) and key.startswith("raised:"):
                out.append(((("type", key.split(":", 1)[1]),), float(v)))
        return out

    def _open_alarms(self) -> list[tuple[tuple[tuple[str, str], ...], float]]:
        counts: dict[tuple[str, str], int] = {}
        for a in self.store.list_alarms(status=["open", "acknowledged"], limit=100_000):
            k = (a["type"], a["status"])
            counts[k] = counts.get(k, 0) + 1
        return [((("status", s), ("type", t)), float(n)) for (t, s), n in counts.items()]

    def _webhook_counters(self) -> list[tuple[tuple[tuple[str, str], ...], float]]:
        counters = getattr(self.webhooks, "counters", {}) or {}
        return [((("result", str(k)),), float(v)) for k, v in counters.items()]

    # -- API keys ---------------------------------------------------------------------------
    def _ensure_key(self, secret: str, role: str, shipper: str | None, label: str) -> None:
        if self.store.get_api_key(hash_key(secret)) is None:
            self.store.put_api_key(
                {
                    "key_hash": hash_key(secret),
                    "key_id": "key_" + secrets.token_hex(6),
                    "role": role,
                    "shipper": shipper,
                    "label": label,
                    "created_at": self.clock.now_ms(),
                }
            )

    def create_api_key(self, role: str, shipper: str | None, label: str | None = None) -> dict:
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", role=role)
        if (role == "shipper") != bool(shipper):
            raise InvalidInput("a shipper key needs a shipper; other roles take none", role=role)
        secret = "cw_" + secrets.token_urlsafe(24)
        doc = {
            "key_hash": hash_key(secret),
            "key_id": "key_" + secrets.token_hex(6),
            "role": role,
            "shipper": shipper,
            "label": label,
            "created_at": self.clock.now_ms(),
        }
        self.store.put_api_key(doc)
        return {"key": secret, "key_id": doc["key_id"], "role": role, "shipper": shipper}

    def lookup_api_key(self, secret: str) -> dict | None:
        doc = self.store.get_api_key(hash_key(secret))
        if doc is None or doc.get("revoked"):
            return None
        return {"key_id": doc["key_id"], "role": doc["role"], "shipper": doc.get("shipper")}

    # -- control (called from API threads) --------------------------------------------------
    def register_device(self, doc: dict) -> dict:
        device_id = str(doc.get("device_id") or "")
        from telemetry.parse import parse_topic

        if (
            parse_topic(
                f"{self.settings.topic_prefix}/{device_id}/position", self.settings.topic_prefix
            )
            is None
        ):
            raise InvalidInput(
                "device_id must be 1-64 chars of [A-Za-z0-9_.:-]", device_id=device_id
            )
        kind = doc.get("kind") or "combo"
        if kind not in ("gps", "lock", "combo"):
            raise InvalidInput("kind must be gps, lock or combo", kind=kind)
        existing = self.store.get_device(device_id) or {}
        stored = {
            **existing,
            **{k: v for k, v in doc.items() if v is not None},
            "device_id": device_id,
            "kind": kind,
            "created_at": existing.get("created_at", self.clock.now_ms()),
        }
        self.store.put_device(stored)
        self.pipeline.add_device(device_id)
        return stored

    def create_trip(self, doc: dict) -> dict:
        rules.parse_trip(doc)  # TripPlanError -> 422
        trip_id = doc["trip_id"]
        if self.store.get_trip(trip_id) is not None:
            raise Conflict("trip already exists", trip_id=trip_id)
        stored = {**doc, "status": TripStatus.PLANNED.value, "created_at": self.clock.now_ms()}
        for device_id in doc.get("devices", []):
            if self.store.get_device(device_id) is None:
                self.register_device(
                    {
                        "device_id": device_id,
                        "kind": _guess_kind(device_id),
                        "shipper": doc.get("shipper"),
                    }
                )
            else:
                self.pipeline.add_device(device_id)
        self.store.put_trip(stored)
        with self.engine_lock:
            events = self.engine.upsert_trip(stored, ())
        self.alarms.handle(events)
        return self.store.get_trip(trip_id) or stored

    def end_trip(self, trip_id: str, status: str, by: str) -> dict:
        trip = self.store.get_trip(trip_id)
        if trip is None:
            raise NotFoundError("no such trip", trip_id=trip_id)
        if trip.get("status") in ("completed", "cancelled"):
            raise StateConflict(f"trip is already {trip['status']}", trip_id=trip_id)
        if status not in ("completed", "cancelled"):
            raise InvalidInput("status must be completed or cancelled", status=status)
        now = self.clock.now_ms()
        with self.engine_lock:
            events = self.engine.end_trip(trip_id, TripStatus(status), now, f"by {by}")
        self.alarms.handle(events)
        trip = self.store.get_trip(trip_id) or trip
        if trip.get("status") != status:
            trip = {**trip, "status": status, f"{status}_at": now, f"{status}_by": by}
            self.store.put_trip(trip)
            self.store.add_trip_event(
                trip_id, {"kind": "status", "status": status, "ts": now, "by": by}
            )
        return trip

    def put_shipper(self, doc: dict) -> dict:
        shipper = str(doc.get("shipper") or "")
        if not shipper:
            raise InvalidInput("shipper is required")
        sla = doc.get("sla") or {}
        if not isinstance(sla, dict):
            raise InvalidInput("sla must be an object")
        for sev, spec in sla.items():
            if sev not in SEVERITIES or not isinstance(spec, dict):
                raise InvalidInput(
                    f"sla keys must be {', '.join(SEVERITIES)} with objects", key=sev
                )
            for k, v in spec.items():
                if k not in ("ack_min", "resolve_min") or not _positive(v):
                    raise InvalidInput(
                        "sla entries take positive ack_min / resolve_min", key=f"{sev}.{k}"
                    )
        rule_values = doc.get("rules") or {}
        if not isinstance(rule_values, dict):
            raise InvalidInput("rules must be an object")
        for k, v in rule_values.items():
            if k not in rules.DEFAULT_RULES:
                raise InvalidInput(
                    f"unknown rule {k!r}; valid: {', '.join(sorted(rules.DEFAULT_RULES))}", rule=k
                )
            if not _positive(v):
                raise InvalidInput("rule values must be positive numbers", rule=k)
        stored = {"shipper": shipper, "sla": sla, "rules": rule_values}
        self.store.put_shipper(stored)
        with self.engine_lock:
            self.engine.put_shipper_rules(shipper, rule_values)
        return stored

    def put_geofence(self, feature: dict) -> dict:
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise InvalidInput("a geofence is a GeoJSON Feature")
        props = feature.get("properties") or {}
        kind = props.get("kind")
        if kind not in FENCE_KINDS:
            raise InvalidInput(
                f"properties.kind must be one of {', '.join(FENCE_KINDS)}", kind=kind
            )
        geometry = feature.get("geometry")
        radius = props.get("radius_m", 200.0)
        if not _positive(radius):
            raise InvalidInput("properties.radius_m must be a positive number")
        try:
            FenceSet().add("probe", geometry, radius_m=float(radius), kind=kind)
        except (GeometryError, TypeError, ValueError, KeyError) as exc:
            raise InvalidInput(f"bad geometry: {exc}") from exc
        fence_id = str(
            feature.get("id") or props.get("geofence_id") or "gf_" + secrets.token_hex(6)
        )
        doc = {
            "geofence_id": fence_id,
            "kind": kind,
            "name": props.get("name"),
            "shipper": props.get("shipper"),
            "geometry": geometry,
            "radius_m": float(radius),
            "properties": props,
            "created_at": self.clock.now_ms(),
        }
        self.store.put_geofence(doc)
        with self.engine_lock:
            self.engine.put_geofence(doc)
        return doc

    def trip_state(self, trip_id: str) -> dict | None:
        with self.engine_lock:
            try:
                return self.engine.trip_state(trip_id)
            except (KeyError, rules.RulesError):
                return None

    def replay(
        self,
        trip_ids: Sequence[str] | None,
        device_ids: Sequence[str] | None,
        since_ms: int | None,
        until_ms: int | None,
        overrides: dict | None,
    ) -> list[dict]:
        """Rerun the rules on stored history; returns would-be alarms, touches nothing live."""
        trips = []
        for trip_id in trip_ids or []:
            trip = self.store.get_trip(trip_id)
            if trip is None:
                raise NotFoundError("no such trip", trip_id=trip_id)
            trips.append(trip)
        devices = set(device_ids or [])
        for t in trips:
            devices.update(t.get("devices", []))
        if not devices:
            raise InvalidInput("replay needs trip_ids or device_ids")
        if device_ids and not trip_ids:
            trips = [
                t
                for t in self.store.list_trips(limit=1_000_000)
                if devices & set(t.get("devices", []))
            ]
        for k, v in (overrides or {}).items():
            if k not in rules.DEFAULT_RULES or not _positive(v):
                valid = ", ".join(sorted(rules.DEFAULT_RULES))
                raise InvalidInput(f"unknown or invalid rule {k!r}; valid: {valid}")
        fixes = self.store.fixes(sorted(devices), since_ms, until_ms)
        events = self.store.lock_events(sorted(devices), since_ms, until_ms)
        shipper_rules = {s["shipper"]: s.get("rules") or {} for s in self.store.list_shippers()}
        replay_trips = [
            {k: v for k, v in t.items() if k != "status"} | {"status": "planned"} for t in trips
        ]
        out = rules.replay(
            replay_trips,
            fixes,
            events,
            overrides=overrides or {},
            shipper_rules=shipper_rules,
            geofences=self.store.list_geofences(),
        )
        return [_render_signal(e) for e in out if isinstance(e, AlarmSignal)]

    # -- observability ----------------------------------------------------------------------
    def metrics_text(self) -> str:
        return self.metrics.render()

    def health(self) -> dict[str, Any]:
        store_ok = False
        with contextlib.suppress(Exception):
            store_ok = bool(self.store.ping())
        mqtt_ok = None if self.ingest is None else self.ingest.connected
        ok = store_ok and (mqtt_ok is not False) and self.started
        return {
            "status": "ok" if ok else "degraded",
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
        bind = getattr(self.hub, "bind", None)
        if callable(bind):
            bind(asyncio.get_running_loop())
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
        """Received messages wait to be evaluated (queued or in the pipeline now)."""
        return self._busy or not self.queue.empty()

    async def _process_until_stored(self, batch: RawBatch) -> None:
        backoff = 0.2
        while True:
            try:
                await asyncio.to_thread(self.pipeline.process, batch.messages)
                batch.ack()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Store unavailable: keep the batch unacknowledged and retry; the bounded
                # queue pushes back on the broker meanwhile.
                log.exception(
                    "batch of %d messages not stored; retrying in %.1f s",
                    len(batch.messages),
                    backoff,
                )
                self.metrics.inc("cargowatch_store_errors_total")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _tick_loop(self) -> None:
        # tick_s of the (possibly accelerated) clock; the floor keeps an idle engine cheap
        period = max(0.01, self.settings.tick_s / float(getattr(self.clock, "speed", 1.0)))
        while True:
            try:
                now = self.clock.now_ms()
                await asyncio.to_thread(self.pipeline.tick, now, self.backlog())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed")
                self.metrics.inc("cargowatch_tick_errors_total")
            await asyncio.sleep(period)

    def close(self) -> None:
        self.store.close()


def _guess_kind(device_id: str) -> str:
    low = device_id.lower()
    if "lock" in low:
        return "lock"
    if "gps" in low:
        return "gps"
    return "combo"


def _positive(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _render_signal(s: AlarmSignal) -> dict:
    return {
        "type": s.type.value,
        "severity": s.severity.value,
        "trip_id": s.trip_id,
        "device_id": s.device_id,
        "shipper": s.shipper,
        "ts": alerts.iso(s.ts),
        "lat": s.lat,
        "lon": s.lon,
        "details": s.details,
        "episode": s.episode,
    }
