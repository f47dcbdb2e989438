"""A trip's replay view as one GeoJSON FeatureCollection (``GET /v1/trips/{id}/track``).

Features, each with ``properties.kind`` and its time(s) in RFC 3339:
- ``track``: one LineString per GPS device (``properties.times`` parallel to the
  coordinates; fixes flagged as GPS jumps are left out of the line);
- ``flagged_fix``: each fix not valid for rules (``properties.flag``);
- ``lock_event``: each e-lock event (null geometry when it carried no position);
- ``milestone`` / ``trip_status``: the trip's events (sealed, departed, arrived, ...);
- ``geofence``: the trip entered (``change: entered``) or left (``exited``) a global geofence
  of kind depot, consignee or custom (``geofence_id``, ``name``, ``geofence_kind``);
- ``alarm``: the trip's alarms at their triggering position.
Coordinates are ``[lon, lat]`` (RFC 7946).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from alerts import iso
from rules import MilestoneKind
from telemetry.models import Fix, LockEvent

Doc = dict[str, Any]

_MILESTONES = frozenset(k.value for k in MilestoneKind)


def _point(lat: float | None, lon: float | None) -> Doc | None:
    if lat is None or lon is None:
        return None
    return {"type": "Point", "coordinates": [lon, lat]}


def _feature(geometry: Doc | None, props: Doc) -> Doc:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _in_window(ts: Any, since_ms: int | None, until_ms: int | None) -> bool:
    if not isinstance(ts, int):
        return since_ms is None and until_ms is None
    return (since_ms is None or ts >= since_ms) and (until_ms is None or ts <= until_ms)


def track_features(fixes: Sequence[Fix]) -> list[Doc]:
    """One ``track`` line per device plus a ``flagged_fix`` point per invalid fix."""
    by_device: dict[str, list[Fix]] = defaultdict(list)
    out: list[Doc] = []
    for fix in fixes:
        flag = (fix.extra or {}).get("_flag")
        if flag:
            out.append(
                _feature(
                    _point(fix.lat, fix.lon),
                    {
                        "kind": "flagged_fix",
                        "device_id": fix.device_id,
                        "ts": iso(fix.ts),
                        "flag": flag,
                    },
                )
            )
        else:
            by_device[fix.device_id].append(fix)
    lines = []
    for device_id, dev_fixes in sorted(by_device.items()):
        coords = [[f.lon, f.lat] for f in dev_fixes]
        geometry = (
            {"type": "LineString", "coordinates": coords}
            if len(coords) > 1
            else {"type": "Point", "coordinates": coords[0]}
        )
        lines.append(
            _feature(
                geometry,
                {
                    "kind": "track",
                    "device_id": device_id,
                    "start": iso(dev_fixes[0].ts),
                    "end": iso(dev_fixes[-1].ts),
                    "count": len(dev_fixes),
                    "times": [iso(f.ts) for f in dev_fixes],
                    "speeds_kmh": [f.speed_kmh for f in dev_fixes],
                },
            )
        )
    return lines + out


def lock_features(events: Sequence[LockEvent]) -> list[Doc]:
    return [
        _feature(
            _point(e.lat, e.lon),
            {
                "kind": "lock_event",
                "device_id": e.device_id,
                "ts": iso(e.ts),
                "event": str(e.event),
                "method": None if e.method is None else str(e.method),
                "battery_pct": e.battery_pct,
            },
        )
        for e in events
    ]


def trip_event_features(
    events: Sequence[Doc], since_ms: int | None, until_ms: int | None
) -> list[Doc]:
    """Milestones, status changes and geofence entries/exits recorded for the trip."""
    out = []
    for event in events:
        if not _in_window(event.get("ts"), since_ms, until_ms):
            continue
        props = {k: v for k, v in event.items() if k not in ("lat", "lon")}
        kind = str(event.get("kind"))
        if kind in _MILESTONES:
            props["kind"], props["milestone"] = "milestone", kind
        elif kind == "milestone":
            props["milestone"] = event.get("milestone") or event.get("name")
        elif kind == "status":
            props["kind"] = "trip_status"
        elif kind == "geofence":
            props.pop("event_id", None)  # the webhook id: receivers' business, not the map's
        for key in ("ts", "at", "recorded_at"):
            if isinstance(props.get(key), int):
                props[key] = iso(props[key])
        out.append(_feature(_point(event.get("lat"), event.get("lon")), props))
    return out


def alarm_features(alarms: Sequence[Doc], since_ms: int | None, until_ms: int | None) -> list[Doc]:
    return [
        _feature(
            _point(a.get("lat"), a.get("lon")),
            {
                "kind": "alarm",
                "alarm_id": a["alarm_id"],
                "type": a["type"],
                "severity": a.get("severity"),
                "status": a.get("status"),
                "device_id": a.get("device_id"),
                "ts": iso(a.get("ts")),
                "raised_at": iso(a.get("raised_at")),
                "details": a.get("details") or {},
            },
        )
        for a in alarms
        if _in_window(a.get("ts"), since_ms, until_ms)
    ]


def trip_track(
    trip: Doc,
    *,
    fixes: Sequence[Fix],
    lock_events: Sequence[LockEvent],
    trip_events: Sequence[Doc],
    alarms: Sequence[Doc],
    since_ms: int | None,
    until_ms: int | None,
    truncated: bool = False,
) -> Doc:
    """The FeatureCollection of a trip between ``since_ms`` and ``until_ms`` (event time)."""
    features = (
        track_features(fixes)
        + lock_features(lock_events)
        + trip_event_features(trip_events, since_ms, until_ms)
        + alarm_features(alarms, since_ms, until_ms)
    )
    return {
        "type": "FeatureCollection",
        "trip_id": trip["trip_id"],
        "shipper": trip.get("shipper"),
        "from": iso(since_ms),
        "to": iso(until_ms),
        "truncated": truncated,
        "features": features,
    }
