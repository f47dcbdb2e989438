"""``POST /v1/replay``: the rules rerun on stored history; nothing live is touched."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import alerts
import rules
from core.errors import InvalidInput, NotFound
from rules import validate_rules
from rules.events import AlarmSignal
from telemetry.models import Fix, LockEvent
from telemetry.store import Store

_T = TypeVar("_T", Fix, LockEvent)


class ReplayService:
    def __init__(self, store: Store) -> None:
        self._store = store

    def run(
        self,
        trip_ids: Sequence[str] | None,
        device_ids: Sequence[str] | None,
        since_ms: int | None,
        until_ms: int | None,
        overrides: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """The alarms the rules would raise on the stored history, with ``overrides``."""
        trips = []
        for trip_id in trip_ids or []:
            trip = self._store.get_trip(trip_id)
            if trip is None:
                raise NotFound("no such trip", trip_id=trip_id)
            trips.append(trip)
        devices = set(device_ids or [])
        for t in trips:
            devices.update(t.get("devices", []))
        if not devices:
            raise InvalidInput("replay needs trip_ids or device_ids")
        if device_ids and not trip_ids:
            trips = [
                t
                for t in self._store.list_trips(limit=1_000_000)
                if devices & set(t.get("devices", []))
            ]
        checked = validate_rules(overrides or {}, "overrides")
        if trip_ids:
            # A trip's replay sees only its own telemetry, not a shared device's other trips.
            fixes = _merged(self._store.trip_fixes(t, since_ms, until_ms) for t in trips)
            events = _merged(self._store.trip_lock_events(t, since_ms, until_ms) for t in trips)
            extra = sorted(set(device_ids or []) - {d for t in trips for d in t["devices"]})
            if extra:
                fixes = _merged([fixes, self._store.fixes(extra, since_ms, until_ms)])
                events = _merged([events, self._store.lock_events(extra, since_ms, until_ms)])
        else:
            fixes = self._store.fixes(sorted(devices), since_ms, until_ms)
            events = self._store.lock_events(sorted(devices), since_ms, until_ms)
        shipper_rules = {s["shipper"]: s.get("rules") or {} for s in self._store.list_shippers()}
        replay_trips = [
            {k: v for k, v in t.items() if k != "status"} | {"status": "planned"} for t in trips
        ]
        out = rules.replay(
            replay_trips,
            fixes,
            events,
            overrides=checked,
            shipper_rules=shipper_rules,
            geofences=self._store.list_geofences(),
        )
        return [render_signal(e) for e in out if isinstance(e, AlarmSignal)]


def _merged(parts: Iterable[Sequence[_T]]) -> list[_T]:
    """Telemetry of several reads, each once, in ``(ts, device_id)`` order."""
    seen: dict[tuple[str, int, int | None], _T] = {}
    for part in parts:
        for item in part:
            seen.setdefault((item.device_id, item.ts, item.seq), item)
    return sorted(seen.values(), key=lambda x: (x.ts, x.device_id))


def render_signal(s: AlarmSignal) -> dict[str, Any]:
    """A would-be alarm as the API shows it."""
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
