"""A slow, plain reference reading of the contract for one simulated trip: parse its
messages (§2) and run the alarm rules at their default thresholds (§4) in event time.

Not the engine: a second opinion written straight from the contract, used by the tests to
check that every scenario's ``expected`` alarms and dead letters are what the contract says,
and handy to compare with the engine's output when an end-to-end test disagrees. Wall-clock
rules are read on publish time (``at_ms``): SIGNAL_LOST is a gap between a trip's messages
as published; LATE_ARRIVAL compares the stop's entry with its ETA.

Readings where the contract leaves room, chosen so that the scenarios do not depend on them:
a stop is *visited* once unsealed or left; an unlock's fallback position is the last valid
fix of any of the trip's devices no older than 300 s; a LONG_STOP is excused when its first
fix is inside the origin, a trip stop or a rest area.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from simulators.model import SimMessage, SimTrip
from simulators.roads import LocalFrame

MAX_PAYLOAD = 256 * 1024
FUTURE_MS = 5 * 60_000
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
LOCK_EVENTS = {
    "locked",
    "unlocked",
    "tamper",
    "rope_cut",
    "forced_open",
    "low_battery",
    "heartbeat",
}
METHODS = {"rfid", "password", "remote", "bluetooth", "key"}
TAMPER = {"tamper", "rope_cut", "forced_open"}

CORRIDOR_M = 500.0
OFF_ROUTE_MIN_S = 120
STOP_RADIUS_M = 150.0
STOP_MAX_MIN = 30
SIGNAL_LOST_S = 600
SPEED_LIMIT_KMH = 90.0
LATE_TOLERANCE_MIN = 30
LOW_BATTERY_PCT = 15
MAX_IMPLIED_KMH = 250.0
UNLOCK_FIX_MAX_AGE_MS = 300_000


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class Record:
    """One accepted fix or lock event."""

    device_id: str
    kind: str  # "position" | "lock"
    ts: int
    at_ms: int
    body: dict[str, Any]

    @property
    def late(self) -> bool:
        """Arrived well after its event time (a backlog)."""
        return self.at_ms - self.ts > 60_000


@dataclass
class Outcome:
    """What the reference found."""

    records: list[Record] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    active_from: int | None = None
    completed_at: int | None = None


def parse_ts(value: Any) -> int:
    """Contract ``ts`` to epoch ms."""
    if isinstance(value, bool):
        raise _Bad("schema")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad("schema") from None
        if dt.tzinfo is None:
            raise _Bad("schema")
        return round(dt.timestamp() * 1000)
    raise _Bad("schema")


def _num(body: dict, key: str, required: bool) -> float | None:
    v = body.get(key)
    if v is None:
        if required:
            raise _Bad("schema")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Bad("schema")
    return float(v)


def _element(topic_id: str, kind: str, el: Any, received_ms: int) -> dict:
    if not isinstance(el, dict):
        raise _Bad("schema")
    if "device_id" in el and el["device_id"] != topic_id:
        raise _Bad("topic_mismatch")
    if "ts" not in el:
        raise _Bad("schema")
    ts = parse_ts(el["ts"])
    lat = _num(el, "lat", kind == "position")
    lon = _num(el, "lon", kind == "position")
    if (lat is None) != (lon is None):
        raise _Bad("schema")
    if lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise _Bad("out_of_range")
    bat = _num(el, "battery_pct", False)
    if bat is not None and not 0 <= bat <= 100:
        raise _Bad("out_of_range")
    spd = _num(el, "speed_kmh", False)
    if spd is not None and spd < 0:
        raise _Bad("out_of_range")
    if kind == "lock":
        if el.get("event") not in LOCK_EVENTS:
            raise _Bad("schema")
        if el.get("method") is not None and el["method"] not in METHODS:
            raise _Bad("schema")
    if ts > received_ms + FUTURE_MS:
        raise _Bad("future_ts")
    return {**el, "_ts": ts}


def parse_message(
    msg: SimMessage, registered: set[str], received_ms: int | None = None
) -> tuple[list[Record], list[dict[str, Any]]]:
    """Records and dead letters of one message (received at its ``at_ms`` by default)."""
    recv = msg.at_ms if received_ms is None else received_ms

    def dead(reason: str) -> dict[str, Any]:
        return {"device_id": msg.device_id, "topic_suffix": msg.topic_suffix, "reason": reason}

    if len(msg.payload) > MAX_PAYLOAD:
        return [], [dead("too_large")]
    if not DEVICE_ID.match(msg.device_id) or msg.topic_suffix not in ("position", "lock"):
        return [], [dead("bad_topic")]
    if msg.device_id not in registered:
        return [], [dead("unknown_device")]
    try:
        doc = orjson.loads(msg.payload)
    except orjson.JSONDecodeError:
        return [], [dead("bad_json")]
    elements = doc if isinstance(doc, list) else [doc]
    if not isinstance(doc, list | dict):
        return [], [dead("schema")]
    records, dls = [], []
    for el in elements:
        try:
            body = _element(msg.device_id, msg.topic_suffix, el, recv)
        except _Bad as bad:
            dls.append(dead(bad.reason))
            continue
        records.append(Record(msg.device_id, msg.topic_suffix, body.pop("_ts"), msg.at_ms, body))
    return records, dls


class _Geo:
    """The trip's route and fences in a local metric frame."""

    def __init__(self, trip: dict, geofences: list[dict]) -> None:
        coords = np.asarray(trip["route"]["coordinates"], dtype=np.float64)
        self.frame = LocalFrame.around(float(coords[:, 1].mean()), float(coords[:, 0].mean()))
        x, y = self.frame.to_xy(coords[:, 0], coords[:, 1])
        self.route = shapely.LineString(np.column_stack([x, y]))
        self.origin = self._fence(trip["origin"])
        self.stops = [self._fence(s) for s in trip["stops"]]
        self.rest = [
            self._geom(g["geometry"])
            for g in geofences
            if g.get("properties", {}).get("kind") == "rest_area"
        ]

    def _geom(self, geom: dict) -> BaseGeometry:
        g = shape(geom)
        return shapely.transform(g, lambda c: np.column_stack(self.frame.to_xy(c[:, 0], c[:, 1])))

    def _fence(self, obj: dict) -> BaseGeometry:
        g = self._geom(obj["geometry"])
        if g.geom_type == "Point":
            return g.buffer(float(obj.get("radius_m", 200)), quad_segs=32)
        return g

    def point(self, lon: float, lat: float) -> shapely.Point:
        x, y = self.frame.to_xy(np.array([lon]), np.array([lat]))
        return shapely.Point(float(x[0]), float(y[0]))


def _pos(r: Record) -> tuple[float, float] | None:
    lat, lon = r.body.get("lat"), r.body.get("lon")
    if lat is None or lon is None:
        return None
    return float(lon), float(lat)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    k = 111_195.0
    dx = (a[0] - b[0]) * k * math.cos(math.radians((a[1] + b[1]) / 2))
    return math.hypot(dx, (a[1] - b[1]) * k)


def evaluate(trip: SimTrip) -> Outcome:
    """Parse every message of ``trip`` and run the reference rules."""
    out = Outcome()
    registered = set(trip.trip["devices"])
    seen: set[tuple[str, str, int, Any]] = set()
    for msg in trip.iter_messages():
        recs, dls = parse_message(msg, registered)
        out.dead_letters += dls
        for r in recs:
            key = (r.device_id, r.kind, r.ts, r.body.get("seq"))
            if key not in seen:
                seen.add(key)
                out.records.append(r)
    _run_rules(trip, out)
    return out


def _run_rules(trip: SimTrip, out: Outcome) -> None:
    doc = trip.trip
    geo = _Geo(doc, trip.geofences)
    recs = sorted(out.records, key=lambda r: (r.ts, r.device_id, r.kind))
    planned = parse_ts(doc["planned_start"])
    alarms = out.alarms

    def raise_(type_: str, r: Record | None, **details: Any) -> None:
        alarms.append(
            {
                "type": type_,
                "device_id": r.device_id if r is not None else None,
                "ts": r.ts if r is not None else None,
                "details": details,
            }
        )

    last_valid: dict[str, Record] = {}
    valid: dict[int, bool] = {}
    for r in recs:
        if r.kind != "position":
            continue
        p = _pos(r)
        ok = p is not None and p != (0.0, 0.0)
        prev = last_valid.get(r.device_id)
        if ok and prev is not None and r.ts > prev.ts:
            pp = _pos(prev)
            assert p is not None and pp is not None
            kmh = _metres(p, pp) / ((r.ts - prev.ts) / 1000.0) * 3.6
            ok = kmh <= MAX_IMPLIED_KMH
        valid[id(r)] = ok
        if ok:
            last_valid[r.device_id] = r

    # activation: planned start, or the first seal inside the origin fence
    latest_fix: Record | None = None
    active_from = planned
    for r in recs:
        if r.kind == "position" and valid[id(r)]:
            latest_fix = r
        if r.kind == "lock" and r.body["event"] == "locked" and r.ts < active_from:
            p = _pos(r) or (_pos(latest_fix) if latest_fix else None)
            if p is not None and geo.origin.contains(geo.point(*p)):
                active_from = r.ts
                break
    out.active_from = active_from

    n_stops = len(doc["stops"])
    arrived: dict[int, int] = {}
    left: dict[int, int] = {}
    unsealed: set[int] = set()
    inside: dict[int, int] = {}  # stop -> entry ts of the current visit
    dwell_alarmed: set[int] = set()
    route_off: list[Record] = []
    route_in = 0
    route_open = False
    stop_anchor: Record | None = None
    stop_alarmed = False
    fast_since: int | None = None
    speed_open = False
    low_alarmed: set[str] = set()
    last_fix: Record | None = None
    completed: int | None = None

    for r in recs:
        active = r.ts >= active_from and (completed is None or r.ts <= completed)
        if r.kind == "position" and valid[id(r)]:
            last_fix = r
            p = _pos(r)
            assert p is not None
            pt = geo.point(*p)
            for i, fence in enumerate(geo.stops):
                if fence.contains(pt):
                    if i not in inside:
                        inside[i] = r.ts
                        arrived.setdefault(i, r.ts)
                elif i in inside:
                    del inside[i]
                    left.setdefault(i, r.ts)
            if active:
                for i, since in inside.items():
                    limit = float(doc["stops"][i].get("max_dwell_min", 120)) * 60_000
                    if i not in dwell_alarmed and r.ts - since > limit:
                        dwell_alarmed.add(i)
                        raise_("DWELL_OVERTIME", r, stop_id=doc["stops"][i]["stop_id"])
                # route corridor
                if float(shapely.distance(pt, geo.route)) > CORRIDOR_M:
                    route_off.append(r)
                    route_in = 0
                    if (
                        not route_open
                        and len(route_off) >= 3
                        and r.ts - route_off[0].ts >= OFF_ROUTE_MIN_S * 1000
                    ):
                        route_open = True
                        details = {"detected_late": True} if r.late else {}
                        raise_("ROUTE_DEVIATION", r, **details)
                else:
                    route_in += 1
                    if route_in >= 2:
                        route_off, route_open = [], False
                    elif not route_open:
                        route_off = []
                # long stop
                spd = r.body.get("speed_kmh")
                still = spd is None or spd <= 5.0
                ap = _pos(stop_anchor) if stop_anchor is not None else None
                if still and ap is not None and _metres(p, ap) <= STOP_RADIUS_M:
                    assert stop_anchor is not None
                    if not stop_alarmed and r.ts - stop_anchor.ts >= STOP_MAX_MIN * 60_000:
                        apt = geo.point(*ap)
                        zones = [geo.origin, *geo.stops, *geo.rest]
                        if not any(z.contains(apt) for z in zones):
                            stop_alarmed = True
                            raise_("LONG_STOP", r)
                else:
                    stop_anchor, stop_alarmed = (r if still else None), False
                # speeding
                if spd is not None and spd > SPEED_LIMIT_KMH:
                    fast_since = r.ts if fast_since is None else fast_since
                    if not speed_open and r.ts - fast_since >= 60_000:
                        speed_open = True
                        raise_("SPEEDING", r)
                else:
                    fast_since, speed_open = None, False
        bat = r.body.get("battery_pct")
        low = (bat is not None and bat <= LOW_BATTERY_PCT) or r.body.get("event") == "low_battery"
        if active and low and r.device_id not in low_alarmed:
            low_alarmed.add(r.device_id)
            raise_("LOW_BATTERY", r)
        if r.kind != "lock":
            continue
        ev = r.body["event"]
        if active and ev in TAMPER:
            raise_("LOCK_TAMPER", r, event=ev)
        if ev == "unlocked" and active:
            p = _pos(r)
            if p is None and last_fix is not None and r.ts - last_fix.ts <= UNLOCK_FIX_MAX_AGE_MS:
                p = _pos(last_fix)
            if p is None:
                raise_("UNAUTHORIZED_UNLOCK", r, position_unknown=True)
                continue
            pt = geo.point(*p)
            at = [
                i
                for i, f in enumerate(geo.stops)
                if doc["stops"][i].get("unlock_allowed", True) and f.contains(pt)
            ]
            if not at:
                raise_("UNAUTHORIZED_UNLOCK", r)
                continue
            i = at[0]
            visited = unsealed | set(left)
            nxt = next((k for k in range(n_stops) if k not in visited), None)
            if nxt != i:
                raise_("UNLOCK_OUT_OF_SEQUENCE", r, stop_id=doc["stops"][i]["stop_id"])
            unsealed.add(i)
            if i == n_stops - 1 and i in arrived:
                completed = r.ts
    out.completed_at = completed

    # signal loss on publish time between the trip's accepted messages
    ats = sorted({r.at_ms for r in out.records})
    for a, b in itertools.pairwise(ats):
        if (
            b - a >= SIGNAL_LOST_S * 1000
            and a >= active_from
            and (completed is None or a < completed)
        ):
            raise_("SIGNAL_LOST", None, silent_s=(b - a) / 1000)
    # late arrival: a stop not entered by its ETA + tolerance while the trip was running
    for i, stop in enumerate(doc["stops"]):
        deadline = parse_ts(stop["eta"]) + LATE_TOLERANCE_MIN * 60_000
        running = deadline >= active_from and (completed is None or deadline < completed)
        if running and (i not in arrived or arrived[i] > deadline):
            raise_("LATE_ARRIVAL", None, stop_id=stop["stop_id"])
