"""Canonical roads, trips and tracks for the rules tests (synthetic, exact by construction).

Two roads: ``straight`` (20 km due east along the 31st parallel near Shanghai) and
``l_shaped`` (10 km east, then 10 km north). Points along a road, optionally offset to its
left (+) or right (-) by an exact geodesic distance, come from ``Road.point``; ``drive`` and
``stay`` turn them into fixes at a fixed interval, with optional GPS noise (a seeded
normal offset in a random direction, 8 m by default when asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pyproj import Geod

from telemetry.models import Fix, LockEvent, LockEventType

GEOD = Geod(ellps="WGS84")
T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z, ManualClock's default start
MIN = 60_000
SEC = 1_000
GPS, LOCK = "gps-1", "lock-1"


@dataclass(frozen=True, eq=False)
class Road:
    """A polyline with exact geodesic chainage."""

    name: str
    coords: np.ndarray  # (N, 2) lon/lat
    cum: np.ndarray = field(init=False)
    az: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c = self.coords
        az, _, dist = GEOD.inv(c[:-1, 0], c[:-1, 1], c[1:, 0], c[1:, 1])
        object.__setattr__(self, "cum", np.concatenate([[0.0], np.cumsum(dist)]))
        object.__setattr__(self, "az", np.asarray(az))

    @property
    def length_m(self) -> float:
        return float(self.cum[-1])

    def point(self, along_m: float, offset_m: float = 0.0) -> tuple[float, float]:
        """(lon, lat) at ``along_m`` from the start, ``offset_m`` to the left of travel."""
        along = float(np.clip(along_m, 0.0, self.length_m))
        i = int(np.clip(np.searchsorted(self.cum, along, side="right") - 1, 0, len(self.cum) - 2))
        lon, lat, _ = GEOD.fwd(
            self.coords[i, 0], self.coords[i, 1], self.az[i], along - self.cum[i]
        )
        if offset_m:
            lon, lat, _ = GEOD.fwd(lon, lat, self.az[i] - 90.0, offset_m)
        return float(lon), float(lat)

    def geojson(self) -> dict[str, Any]:
        return {"type": "LineString", "coordinates": self.coords.tolist()}


def _chain(
    start: tuple[float, float], legs: Sequence[tuple[float, float]], step_m: float = 100.0
) -> np.ndarray:
    """Vertices every ``step_m`` along legs of (azimuth, length) from ``start``."""
    pts = [start]
    lon, lat = start
    for az, length in legs:
        n = round(length / step_m)
        for _ in range(n):
            lon, lat, _ = GEOD.fwd(lon, lat, az, step_m)
            pts.append((lon, lat))
    return np.asarray(pts)


def _parallel(start: tuple[float, float], length_m: float, step_m: float = 100.0) -> np.ndarray:
    """A road due east along a parallel (so 'left' is exactly north)."""
    lon0, lat0 = start
    end_lon, _, _ = GEOD.fwd(lon0, lat0, 90.0, length_m)
    n = round(length_m / step_m)
    lons = np.linspace(lon0, end_lon, n + 1)
    return np.column_stack([lons, np.full(n + 1, lat0)])


STRAIGHT = Road("straight", _parallel((121.0, 31.0), 20_000.0))
L_SHAPED = Road("l_shaped", _chain((121.5, 31.2), [(90.0, 10_000.0), (0.0, 10_000.0)]))
ROADS = {"straight": STRAIGHT, "l_shaped": L_SHAPED}


def circle(lon: float, lat: float, radius_m: float = 200.0) -> dict[str, Any]:
    return {"geometry": {"type": "Point", "coordinates": [lon, lat]}, "radius_m": radius_m}


def square(lon: float, lat: float, half_m: float) -> dict[str, Any]:
    """A square polygon fence of side 2*half_m centred on (lon, lat)."""
    corners = []
    for az in (45.0, 135.0, 225.0, 315.0):
        x, y, _ = GEOD.fwd(lon, lat, az, half_m * 2**0.5)
        corners.append([x, y])
    corners.append(corners[0])
    return {"geometry": {"type": "Polygon", "coordinates": [corners]}}


def trip_doc(
    road: Road,
    *,
    trip_id: str = "T1",
    shipper: str = "pg",
    devices: Sequence[str] = (GPS, LOCK),
    stops_at: Sequence[float] | None = None,
    stop_radius_m: float = 200.0,
    origin_radius_m: float = 300.0,
    planned_start: int = T0,
    etas: Sequence[int | None] | None = None,
    unlock_allowed: Sequence[bool] | None = None,
    max_dwell_min: Sequence[float | None] | None = None,
    rules: dict[str, float] | None = None,
    corridor_m: float | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """A trip document: origin at the road's start, stops at chainages (default: the end)."""
    stops_at = [road.length_m] if stops_at is None else list(stops_at)
    stops = []
    for i, along in enumerate(stops_at):
        stop: dict[str, Any] = {"stop_id": f"S{i + 1}", "name": f"Consignee {i + 1}"}
        stop.update(circle(*road.point(along), stop_radius_m))
        if etas is not None and etas[i] is not None:
            stop["eta"] = etas[i]
        if unlock_allowed is not None:
            stop["unlock_allowed"] = unlock_allowed[i]
        if max_dwell_min is not None and max_dwell_min[i] is not None:
            stop["max_dwell_min"] = max_dwell_min[i]
        stops.append(stop)
    doc: dict[str, Any] = {
        "trip_id": trip_id,
        "shipper": shipper,
        "vehicle": "沪A12345",
        "devices": list(devices),
        "origin": {"name": "DC", **circle(*road.point(0.0), origin_radius_m)},
        "route": road.geojson(),
        "stops": stops,
        "planned_start": planned_start,
    }
    if rules is not None:
        doc["rules"] = rules
    if corridor_m is not None:
        doc["corridor_m"] = corridor_m
    if status is not None:
        doc["status"] = status
    return doc


def _noisy(
    lon: np.ndarray, lat: np.ndarray, noise_m: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if not noise_m:
        return lon, lat
    az = rng.uniform(0.0, 360.0, lon.shape[0])
    dist = np.abs(rng.normal(0.0, noise_m, lon.shape[0]))
    lon2, lat2, _ = GEOD.fwd(lon, lat, az, dist)
    return np.asarray(lon2), np.asarray(lat2)


def drive(
    road: Road,
    t_start: int,
    from_m: float,
    to_m: float,
    *,
    speed_kmh: float = 60.0,
    interval_s: float = 30.0,
    device: str = GPS,
    offset_m: float | Callable[[float], float] = 0.0,
    noise_m: float = 0.0,
    seed: int = 0,
    report_speed: bool = True,
    battery_pct: float | None = None,
    seq0: int | None = None,
    include_end: bool = True,
) -> list[Fix]:
    """Fixes every ``interval_s`` driving from ``from_m`` to ``to_m`` at ``speed_kmh``."""
    step = speed_kmh / 3.6 * interval_s
    direction = 1.0 if to_m >= from_m else -1.0
    n = int(abs(to_m - from_m) // step)
    alongs = [from_m + direction * step * k for k in range(n + 1)]
    if include_end and abs(alongs[-1] - to_m) > 1e-6:
        alongs.append(to_m)
    times = [t_start + round(k * interval_s * 1000) for k in range(len(alongs))]
    pts = [road.point(a, offset_m(a) if callable(offset_m) else offset_m) for a in alongs]
    lon, lat = _noisy(
        np.array([p[0] for p in pts]),
        np.array([p[1] for p in pts]),
        noise_m,
        np.random.default_rng(seed),
    )
    speed = speed_kmh if report_speed else None
    return _fixes(device, times, lon, lat, speed, battery_pct, seq0)


def _fixes(
    device: str,
    times: Sequence[int],
    lons: np.ndarray,
    lats: np.ndarray,
    speed_kmh: float | None,
    battery_pct: float | None,
    seq0: int | None = None,
) -> list[Fix]:
    """One fix per time, received half a second later; ``seq`` counts up from ``seq0``."""
    return [
        Fix(
            device_id=device,
            ts=t,
            lat=float(y),
            lon=float(x),
            speed_kmh=speed_kmh,
            battery_pct=battery_pct,
            seq=None if seq0 is None else seq0 + k,
            received_at=t + 500,
        )
        for k, (t, x, y) in enumerate(zip(times, lons, lats, strict=True))
    ]


def path(
    road: Road,
    t_start: int,
    points: Sequence[tuple[float, float]],
    *,
    interval_s: float = 30.0,
    device: str = GPS,
    speed_kmh: float | None = 60.0,
    times: Sequence[int] | None = None,
) -> list[Fix]:
    """One fix per (along_m, offset_m) point, every ``interval_s`` (or at ``times``)."""
    out = []
    for k, (along, offset) in enumerate(points):
        lon, lat = road.point(along, offset)
        ts = times[k] if times is not None else t_start + round(k * interval_s * 1000)
        out.append(
            Fix(
                device_id=device, ts=ts, lat=lat, lon=lon, speed_kmh=speed_kmh, received_at=ts + 500
            )
        )
    return out


def stay(
    lon: float,
    lat: float,
    t_start: int,
    duration_s: float,
    *,
    interval_s: float = 60.0,
    device: str = GPS,
    noise_m: float = 0.0,
    seed: int = 1,
    speed_kmh: float | None = 0.0,
    battery_pct: float | None = None,
) -> list[Fix]:
    """Stationary fixes from ``t_start`` for ``duration_s`` inclusive."""
    n = int(duration_s // interval_s) + 1
    times = [t_start + round(k * interval_s * 1000) for k in range(n)]
    lons, lats = _noisy(np.full(n, lon), np.full(n, lat), noise_m, np.random.default_rng(seed))
    return _fixes(device, times, lons, lats, speed_kmh, battery_pct)


def lock_event(
    event: str,
    ts: int,
    *,
    device: str = LOCK,
    at: tuple[float, float] | None = None,
    battery_pct: float | None = None,
    seq: int | None = None,
) -> LockEvent:
    """A lock event, positioned at ``at`` (lon, lat) when given."""
    return LockEvent(
        device_id=device,
        ts=ts,
        event=LockEventType(event),
        lon=None if at is None else at[0],
        lat=None if at is None else at[1],
        battery_pct=battery_pct,
        seq=seq,
        received_at=ts + 500,
    )


def arriving(fixes: Sequence[Fix], delay_ms: int) -> list[Fix]:
    """The same fixes received ``delay_ms`` after their ts (a backlog)."""
    return [replace(f, received_at=f.ts + delay_ms) for f in fixes]


@dataclass
class Scenario:
    """A trip document with its messages."""

    doc: dict[str, Any]
    fixes: list[Fix]
    locks: list[LockEvent]


def normal_trip(road: Road, *, noise_m: float = 8.0, trip_id: str = "T1") -> Scenario:
    """Seal at the origin, drive the whole road at 60 km/h (fixes every 30 s, GPS noise),
    stay 20 min at the final stop, unlock there: completed, no alarm."""
    travel_ms = int(road.length_m / (60 / 3.6) * 1000)
    eta = T0 + 10 * MIN + travel_ms
    doc = trip_doc(road, trip_id=trip_id, etas=[eta])
    origin = road.point(0.0)
    end = road.point(road.length_m)
    fixes = stay(*origin, T0 - 5 * MIN, 10 * 60, interval_s=60, noise_m=noise_m, seed=3)
    t_go = T0 + 6 * MIN
    fixes += drive(road, t_go, 0.0, road.length_m, noise_m=noise_m, seed=4)
    t_end = fixes[-1].ts
    fixes += stay(*end, t_end + MIN, 20 * 60, interval_s=60, noise_m=noise_m, seed=5)
    locks = [
        lock_event("locked", T0 + 1 * MIN, at=origin),
        lock_event("unlocked", t_end + 15 * MIN, at=end),
    ]
    return Scenario(doc, fixes, locks)


class Live:
    """Feeds messages to an engine the way the live pipeline does, and collects events.

    Messages are delivered in arrival order (``received_at``) in batches of ``batch``;
    ``tick`` runs at each batch's arrival time first (the lead's loop ticks every second).
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.events: list[Any] = []
        self.flagged: list[Any] = []
        self.clock: int | None = None

    def feed(
        self,
        fixes: Sequence[Fix] = (),
        locks: Sequence[LockEvent] = (),
        *,
        batch: int = 1,
        tick: bool = True,
        now: int | None = None,
    ) -> Live:
        msgs: list[Any] = sorted(
            [*fixes, *locks], key=lambda m: (m.received_at, m.ts, isinstance(m, LockEvent))
        )
        for i in range(0, len(msgs), batch):
            part = msgs[i : i + batch]
            at = now if now is not None else max(m.received_at for m in part)
            if tick:  # the loop ticked up to the moment the batch's first message came in
                self.run_timers(now if now is not None else min(m.received_at for m in part))
            res = self.engine.process(
                [m for m in part if isinstance(m, Fix)],
                [m for m in part if isinstance(m, LockEvent)],
                at,
            )
            self.events += res.events
            self.flagged += res.flagged
        return self

    def tick(self, now: int) -> Live:
        self.clock = now if self.clock is None else max(self.clock, now)
        self.events += self.engine.tick(now)
        return self

    def run_timers(self, until: int) -> Live:
        """Tick at every timer deadline up to ``until``, then at ``until`` (a 1 s loop
        would tick within a second of each deadline)."""
        for _ in range(10_000):
            due = self.engine.next_timer_ms()
            if due is None or due > until:
                break
            self.tick(max(due, self.clock if self.clock is not None else until))
        return self.tick(until)

    def tick_every(self, start: int, end: int, step_ms: int = 1_000) -> Live:
        for now in range(start, end + 1, step_ms):
            self.tick(now)
        return self

    def of(self, cls_name: str) -> list[Any]:
        return [e for e in self.events if type(e).__name__ == cls_name]

    def alarms(self, kind: Any = None) -> list[Any]:
        return [e for e in self.of("AlarmSignal") if kind is None or e.type == kind]

    def ended(self, kind: Any = None) -> list[Any]:
        return [e for e in self.of("EpisodeEnded") if kind is None or e.type == kind]

    def milestones(self) -> list[tuple[str, str | None]]:
        return [(str(e.kind), e.stop_id) for e in self.of("Milestone")]

    def statuses(self) -> list[str]:
        return [str(e.status) for e in self.of("TripStatusChanged")]


# -- incidents: a normal trip with exactly one thing going wrong --------------------------------
def _messages_after(sc: Scenario, t: int) -> tuple[list[Fix], list[Fix]]:
    return [f for f in sc.fixes if f.ts < t], [f for f in sc.fixes if f.ts >= t]


def _shift(fixes: Sequence[Fix], ms: int) -> list[Fix]:
    return [replace(f, ts=f.ts + ms, received_at=f.received_at + ms) for f in fixes]


def _shift_locks(locks: Sequence[LockEvent], after: int, ms: int) -> list[LockEvent]:
    return [
        replace(e, ts=e.ts + ms, received_at=e.received_at + ms) if e.ts >= after else e
        for e in locks
    ]


def _at_time(road: Road, t: int) -> float:
    """Chainage reached at ``t`` by the normal trip (60 km/h from T0 + 6 min)."""
    return (t - (T0 + 6 * MIN)) / 1000 * (60 / 3.6)


def incident_route_deviation(road: Road) -> Scenario:
    sc = normal_trip(road)
    t1, t2 = T0 + 11 * MIN, T0 + 15 * MIN
    sc.fixes = [
        replace(
            f, **dict(zip(("lon", "lat"), road.point(_at_time(road, f.ts), 1000.0), strict=True))
        )
        if t1 <= f.ts < t2
        else f
        for f in sc.fixes
    ]
    return sc


def incident_long_stop(road: Road) -> Scenario:
    sc = normal_trip(road)
    t = T0 + 14 * MIN
    before, after = _messages_after(sc, t)
    where = road.point(_at_time(road, t))
    pause = stay(*where, t, 40 * 60, noise_m=8.0, seed=9)
    shift = 41 * MIN
    sc.fixes = before + pause + _shift(after, shift)
    sc.locks = _shift_locks(sc.locks, t, shift)
    sc.doc["stops"][-1]["eta"] += shift
    return sc


def incident_speeding(road: Road) -> Scenario:
    sc = normal_trip(road)
    t1, t2 = T0 + 12 * MIN, T0 + 15 * MIN
    sc.fixes = [replace(f, speed_kmh=104.0) if t1 <= f.ts <= t2 else f for f in sc.fixes]
    return sc


def incident_dwell_overtime(road: Road) -> Scenario:
    sc = normal_trip(road)
    end = road.point(road.length_m)
    unlock = sc.locks[-1]
    extra = stay(*end, sc.fixes[-1].ts + MIN, 130 * 60, noise_m=8.0, seed=11)
    sc.fixes += extra
    sc.locks[-1] = replace(unlock, ts=extra[-1].ts, received_at=extra[-1].received_at)
    return sc


def incident_unauthorized_unlock(road: Road) -> Scenario:
    sc = normal_trip(road)
    t = T0 + 16 * MIN
    sc.locks.insert(1, lock_event("unlocked", t, at=road.point(_at_time(road, t))))
    sc.locks.insert(2, lock_event("locked", t + MIN, at=road.point(_at_time(road, t + MIN))))
    return sc


def incident_unlock_out_of_sequence(road: Road) -> Scenario:
    sc = normal_trip(road)
    s1 = {"stop_id": "S0", **circle(*road.point(road.length_m / 2, -3000.0), 200.0)}
    sc.doc["stops"].insert(0, s1)
    return sc


def incident_lock_tamper(road: Road) -> Scenario:
    sc = normal_trip(road)
    sc.locks.insert(1, lock_event("rope_cut", T0 + 16 * MIN))
    return sc


def incident_signal_lost(road: Road) -> Scenario:
    sc = normal_trip(road)
    t1, t2 = T0 + 12 * MIN, T0 + 24 * MIN
    sc.fixes = [f for f in sc.fixes if not t1 <= f.ts < t2]
    return sc


def incident_late_arrival(road: Road) -> Scenario:
    sc = normal_trip(road)
    sc.doc["stops"][-1]["eta"] = T0 - 10 * MIN
    return sc


def incident_low_battery(road: Road) -> Scenario:
    sc = normal_trip(road)
    t = T0 + 14 * MIN
    sc.fixes = [
        replace(f, battery_pct=14.0) if f.ts >= t else replace(f, battery_pct=60.0)
        for f in sc.fixes
    ]
    return sc


INCIDENTS: dict[str, Callable[[Road], Scenario]] = {
    "ROUTE_DEVIATION": incident_route_deviation,
    "LONG_STOP": incident_long_stop,
    "SPEEDING": incident_speeding,
    "DWELL_OVERTIME": incident_dwell_overtime,
    "UNAUTHORIZED_UNLOCK": incident_unauthorized_unlock,
    "UNLOCK_OUT_OF_SEQUENCE": incident_unlock_out_of_sequence,
    "LOCK_TAMPER": incident_lock_tamper,
    "SIGNAL_LOST": incident_signal_lost,
    "LATE_ARRIVAL": incident_late_arrival,
    "LOW_BATTERY": incident_low_battery,
}
