"""A slow, plain reference reading of the contract for one simulated trip: parse its
messages (§2) and run the alarm rules at their default thresholds (§4) in event time.

Not the engine: a second opinion written straight from the contract, used by the tests to
check that every scenario's ``expected`` alarms and dead letters are what the contract says,
and handy to compare with the engine's output when an end-to-end test disagrees. Wall-clock
rules are read on publish time (``at_ms``): SIGNAL_LOST is a gap between a trip's messages
as published; LATE_ARRIVAL compares the stop's entry with its ETA.

Contract v2 is read as follows: fence membership has hysteresis (inside from the first
valid fix inside; outside after 2 consecutive valid fixes each more than
``fence_exit_margin_m`` beyond the edge), per device, for the origin, the stops and global
geofences; entering a ``risk_zone`` raises RISK_ZONE_ENTRY once per entry episode;
entering/leaving a ``depot``, ``consignee`` or ``custom`` fence is a geofence event
(``Outcome.geofence_events``); an unlock is located by the truck's GPS (its last valid fix
no older than 300 s) and is inside a stop while that device is inside it; a LATE_ARRIVAL
is raised when no entry was *received* by the deadline and marked ``withdrawn`` when the
entry's event time was in time.

Readings where the contract leaves room, chosen so that the scenarios do not depend on them:
a stop is *visited* once unsealed or left; an unlock's fallback position (no GPS fix within
300 s) is its own, else none; "the GPS fix nearest in time" is read as the last one at or
before the event (the one known when it is judged); a LONG_STOP is excused when its first
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
FENCE_EXIT_MARGIN_M = 50.0
LOCK_GPS_DISAGREE_M = 1_000.0
EVENT_KINDS = {"depot", "consignee", "custom"}


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
    #: ``{"milestone": "departed"|"arrived"|"left", "stop_id", "ts"}`` while active, every
    #: membership change (so flapping would show as repeats)
    milestones: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"event": "entered"|"exited", "geofence_id", "ts"}`` for depot/consignee/custom
    geofence_events: list[dict[str, Any]] = field(default_factory=list)


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
        #: (geofence_id, kind, name, geometry) of the fences that act (v2)
        self.acting = [
            (
                str(g["properties"].get("geofence_id")),
                str(g["properties"]["kind"]),
                str(g["properties"].get("name", "")),
                self._geom(g["geometry"]),
            )
            for g in geofences
            if g.get("properties", {}).get("kind") in EVENT_KINDS | {"risk_zone"}
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


class Membership:
    """Contract v2 §3 for one device and a list of fences: inside from the first valid fix
    inside; outside after 2 consecutive valid fixes each more than ``margin_m`` beyond the
    edge (a fix nearer breaks the run)."""

    def __init__(self, fences: list[BaseGeometry], margin_m: float = FENCE_EXIT_MARGIN_M) -> None:
        self.fences = fences
        self.margin_m = margin_m
        self.inside: set[int] = set()
        self.out: dict[int, int] = {}

    def update(self, pt: shapely.Point) -> tuple[list[int], list[int]]:
        """Feed one valid fix; returns the fences entered and exited."""
        entered, exited = [], []
        for i, fence in enumerate(self.fences):
            beyond = float(shapely.distance(pt, fence))
            if beyond == 0.0:
                self.out[i] = 0
                if i not in self.inside:
                    self.inside.add(i)
                    entered.append(i)
            elif i in self.inside:
                self.out[i] = self.out.get(i, 0) + 1 if beyond > self.margin_m else 0
                if self.out[i] >= 2:
                    self.inside.discard(i)
                    self.out[i] = 0
                    exited.append(i)
        return entered, exited


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
    arrived_at_ms: dict[int, int] = {}  # when the entry was received
    left: dict[int, int] = {}
    stops_in: dict[str, Membership] = {}
    origin_in: dict[str, Membership] = {}
    acting_in: dict[str, Membership] = {}
    departed = False
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
            dev = r.device_id
            mem = stops_in.setdefault(dev, Membership(geo.stops))
            came, went = mem.update(pt)
            for i in went:
                inside.pop(i, None)
                left.setdefault(i, r.ts)
                if active:
                    out.milestones.append(
                        {"milestone": "left", "stop_id": doc["stops"][i]["stop_id"], "ts": r.ts}
                    )
            for i in came:
                inside[i] = r.ts
                if i not in arrived:
                    arrived[i], arrived_at_ms[i] = r.ts, r.at_ms
                if active:
                    out.milestones.append(
                        {"milestone": "arrived", "stop_id": doc["stops"][i]["stop_id"], "ts": r.ts}
                    )
            _, gone = origin_in.setdefault(dev, Membership([geo.origin])).update(pt)
            if gone and active and not departed:
                departed = True
                out.milestones.append({"milestone": "departed", "stop_id": None, "ts": r.ts})
            g_in, g_out = acting_in.setdefault(dev, Membership([g for *_, g in geo.acting])).update(
                pt
            )
            for k in g_in if active else ():
                gid, kind, name, _ = geo.acting[k]
                if kind == "risk_zone":
                    raise_("RISK_ZONE_ENTRY", r, geofence_id=gid, name=name)
                else:
                    out.geofence_events.append({"event": "entered", "geofence_id": gid, "ts": r.ts})
            for k in g_out if active else ():
                gid, kind, _, _ = geo.acting[k]
                if kind != "risk_zone":
                    out.geofence_events.append({"event": "exited", "geofence_id": gid, "ts": r.ts})
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
            allowed = [bool(s.get("unlock_allowed", True)) for s in doc["stops"]]
            if last_fix is not None and r.ts - last_fix.ts <= UNLOCK_FIX_MAX_AGE_MS:
                # v2: located by the truck's GPS; inside a stop while that device is
                gp = _pos(last_fix)
                assert gp is not None
                extra = {}
                if p is not None and _metres(p, gp) > LOCK_GPS_DISAGREE_M:
                    extra["lock_gps_disagree_m"] = round(_metres(p, gp))
                gps_mem = stops_in.get(last_fix.device_id)
                at = sorted(i for i in (gps_mem.inside if gps_mem else ()) if allowed[i])
                if not at:
                    raise_("UNAUTHORIZED_UNLOCK", r, **extra)
                    continue
            elif p is None:
                raise_("UNAUTHORIZED_UNLOCK", r, position_unknown=True)
                continue
            else:
                pt = geo.point(*p)
                at = [i for i, f in enumerate(geo.stops) if allowed[i] and f.contains(pt)]
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
    # late arrival: no entry into the stop received by its ETA + tolerance while the trip was
    # running (a wall-clock rule); withdrawn when late data shows the entry was in time
    for i, stop in enumerate(doc["stops"]):
        deadline = parse_ts(stop["eta"]) + LATE_TOLERANCE_MIN * 60_000
        running = deadline >= active_from and (completed is None or deadline < completed)
        if running and (i not in arrived or arrived_at_ms[i] > deadline):
            extra = {"withdrawn": True} if i in arrived and arrived[i] <= deadline else {}
            raise_("LATE_ARRIVAL", None, stop_id=stop["stop_id"], **extra)
