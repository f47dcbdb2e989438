"""Exceptions reported by people (damage, shortage, paperwork, time; contract v2 §5): a
check of the trip and stop, then the alarm service records it as an alarm document of kind
``exception`` (same deadlines, escalation, handling and history as alarms)."""

from __future__ import annotations

from typing import Any

from alerts import AlarmService
from core.errors import InvalidInput, NotFound
from telemetry.store import Store


class ExceptionService:
    def __init__(self, store: Store, alarms: AlarmService) -> None:
        self._store = store
        self._alarms = alarms

    def report(
        self,
        trip_id: str,
        *,
        type: str,
        description: str,
        stop_id: str | None,
        severity: str | None,
        by: str,
        key_id: str | None,
    ) -> dict[str, Any]:
        """Record the exception on the trip (``NotFound`` without the trip; 422 for a
        stop the trip does not have); severity ``major`` unless given."""
        trip = self._store.get_trip(trip_id)
        if trip is None:
            raise NotFound("no such trip", trip_id=trip_id)
        if stop_id is not None:
            stops = {s.get("stop_id") for s in trip.get("stops") or [] if isinstance(s, dict)}
            if stop_id not in stops:
                raise InvalidInput("the trip has no such stop", trip_id=trip_id, stop_id=stop_id)
        return self._alarms.report_exception(
            trip,
            type=type,
            description=description,
            stop_id=stop_id,
            severity=severity or "major",
            by=by,
            key_id=key_id,
        )
