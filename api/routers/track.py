"""``GET /v1/trips/{id}/track``: a trip on a timeline, as GeoJSON (replay view)."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.auth import AnyKey
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES
from api.geojson import trip_track
from api.params import AnyId, Window
from api.routers.trips import visible_trip
from rules import RulesError, parse_time_ms

router = APIRouter(prefix="/v1/trips", tags=["track"], responses=ERROR_RESPONSES)

MAX_FIXES = 100_000


class TrackCollection(BaseModel):
    """GeoJSON FeatureCollection; each feature's ``properties.kind`` is ``track``,
    ``flagged_fix``, ``lock_event``, ``milestone``, ``trip_status``, ``geofence`` (entered
    or exited a depot, consignee or custom geofence) or ``alarm``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["FeatureCollection"]
    trip_id: str
    shipper: str | None
    features: list[dict[str, Any]]


def _default_window(
    trip: dict[str, Any], events: list[dict[str, Any]]
) -> tuple[int | None, int | None]:
    """From the earlier of planned start and the first trip event (sealing can come first),
    to the trip's end: a device's fixes of its other trips stay out."""
    starts = [e["ts"] for e in events if isinstance(e.get("ts"), int)]
    if trip.get("planned_start") is not None:
        with contextlib.suppress(RulesError):  # stored plans were checked; be lenient anyway
            starts.append(parse_time_ms(trip["planned_start"], "planned_start"))
    since = min(starts) if starts else None
    until = None
    if trip.get("status") in ("completed", "cancelled"):
        ends = [trip.get(f"{trip['status']}_at")] + [
            e.get("ts") for e in events if e.get("kind") == "status"
        ]
        ends_ms = [t for t in ends if isinstance(t, int)]
        until = max(ends_ms) if ends_ms else None
    return since, until


@router.get("/{trip_id}/track", response_model=TrackCollection)
def trip_track_view(trip_id: AnyId, runtime: RuntimeDep, principal: AnyKey, window: Window) -> dict:
    """The trip's track, lock events, milestones, geofence entries/exits and alarms between
    ``from`` and ``to`` (default: planned start or first event to the trip's end)."""
    store = runtime.store
    trip = visible_trip(runtime, principal, trip_id)
    events = store.trip_events(trip_id)
    since, until = window.since_ms, window.until_ms
    if since is None or until is None:
        d_since, d_until = _default_window(trip, events)
        since = d_since if since is None else since
        until = d_until if until is None else until
    # Only the trip's own telemetry: a shared device's data of other trips stays out,
    # whatever window is asked for (telemetry.store.spans).
    fixes = store.trip_fixes(trip, since, until, limit=MAX_FIXES + 1)
    truncated = len(fixes) > MAX_FIXES
    return trip_track(
        trip,
        fixes=fixes[:MAX_FIXES],
        lock_events=store.trip_lock_events(trip, since, until, limit=MAX_FIXES),
        trip_events=events,
        alarms=store.list_alarms(trip_id=trip_id, limit=10_000),
        since_ms=since,
        until_ms=until,
        truncated=truncated,
    )
