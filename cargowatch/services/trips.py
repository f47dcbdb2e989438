"""Trips: created (``POST /v1/trips``), ended by the desk (complete / cancel), and their live
state in the engine."""

from __future__ import annotations

from typing import Any

import rules
from alerts import validate_sla
from cargowatch.services.devices import DeviceService
from cargowatch.services.engine import EngineGate
from core.clock import Clock
from core.errors import Conflict, InvalidInput, NotFound
from rules import TripStatus
from telemetry.store import Store

ENDINGS = ("completed", "cancelled")


class TripService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        gate: EngineGate,
        devices: DeviceService,
    ) -> None:
        self._store = store
        self._clock = clock
        self._gate = gate
        self._devices = devices

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Check the plan (the engine's parser: 422 with where) and its SLA, register its
        devices, store it as planned and hand it to the engine."""
        rules.parse_trip(doc)
        if doc.get("sla") is not None:
            # checked now: at alarm time an invalid SLA layer is only logged and skipped
            doc = {**doc, "sla": validate_sla(doc["sla"])}
        trip_id = doc["trip_id"]
        if self._store.get_trip(trip_id) is not None:
            raise Conflict("trip already exists", trip_id=trip_id)
        stored = {**doc, "status": TripStatus.PLANNED.value, "created_at": self._clock.now_ms()}
        for device_id in doc.get("devices", []):
            self._devices.ensure(device_id, doc.get("shipper"))
        # The document and the engine's view of it are committed together.
        self._gate.commit(
            lambda engine: engine.upsert_trip(stored, ()),
            lambda events: events,
            before=lambda: self._store.put_trip(stored),
        )
        return self._store.get_trip(trip_id) or stored

    def end(self, trip_id: str, status: str, by: str) -> dict[str, Any]:
        """Complete or cancel a trip on the desk's word."""
        trip = self._store.get_trip(trip_id)
        if trip is None:
            raise NotFound("no such trip", trip_id=trip_id)
        if trip.get("status") in ENDINGS:
            raise Conflict(f"trip is already {trip['status']}", trip_id=trip_id)
        if status not in ENDINGS:
            raise InvalidInput("status must be completed or cancelled", status=status)
        now = self._clock.now_ms()
        self._gate.commit(
            lambda engine: engine.end_trip(trip_id, TripStatus(status), now, f"by {by}"),
            lambda events: events,
        )
        trip = self._store.get_trip(trip_id) or trip
        if trip.get("status") != status:
            trip = {**trip, "status": status, f"{status}_at": now, f"{status}_by": by}
            self._store.put_trip(trip)
            self._store.add_trip_event(
                trip_id, {"kind": "status", "status": status, "ts": now, "by": by}
            )
        return trip

    def state(self, trip_id: str) -> dict[str, Any] | None:
        """The engine's view of a trip (position, rule state), None if it does not watch it."""
        with self._gate.held() as engine:
            try:
                return engine.trip_state(trip_id)
            except (KeyError, rules.RulesError):
                return None
