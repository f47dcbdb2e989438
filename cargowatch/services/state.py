"""Engine state from the store at start-up: shipper rules, geofences, open trips.

Each stored object is loaded on its own: one that the engine refuses (written by an older
version, or by hand) is logged and skipped — a shipper then runs on the default thresholds —
instead of stopping the whole service from starting.
"""

from __future__ import annotations

import logging

from alerts import AlarmService
from cargowatch.services.engine import EngineGate
from telemetry.store import Store

log = logging.getLogger(__name__)


def load_state(store: Store, gate: EngineGate, alarms: AlarmService) -> None:
    with gate.held() as engine:
        for shipper in store.list_shippers():
            try:
                engine.put_shipper_rules(shipper["shipper"], shipper.get("rules") or {})
            except Exception as exc:
                log.error(
                    "stored rules of shipper %s not loaded, it runs on the defaults: %s",
                    shipper.get("shipper"),
                    exc,
                )
        for fence in store.list_geofences():
            try:
                engine.put_geofence(fence)
            except Exception:
                log.exception("stored geofence %s could not be loaded", fence.get("geofence_id"))
        for status in ("planned", "active"):
            for trip in store.list_trips(status=status, limit=1_000_000):
                try:
                    events = engine.upsert_trip(trip, store.trip_events(trip["trip_id"]))
                    alarms.handle(events)
                except Exception:
                    log.exception("stored trip %s could not be loaded", trip.get("trip_id"))
