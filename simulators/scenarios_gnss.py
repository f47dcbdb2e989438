"""Scenarios of real-world GNSS and of contract v2 (fence hysteresis, global geofences,
withdrawn late arrivals): each edits a normal trip (see :mod:`simulators.draft`) and states
the alarms the contract says it must raise.

- ``drift_at_consignee``: parked 15 m inside S1's fence edge for 25–35 min; the drift leans
  out across the edge (≤ 45 m beyond it, within ``fence_exit_margin_m``) for 7 min around
  the unseal, and one multipath fix lands 75+ m beyond it. No alarm, no ``left`` before
  the truck really leaves.
- ``pass_by_consignee``: drives past another company's consignee site (a ``consignee``
  geofence whose edge is 35–55 m from the road) without stopping. No alarm.
- ``risk_zone_entry``: pulls off into a truck park 410–450 m off the route (inside the
  corridor) that is a ``risk_zone``. RISK_ZONE_ENTRY, once.
- ``late_arrival_withdrawn``: arrives at S1 23–27 min after its ETA (inside the 30 min
  tolerance) in a coverage gap lasting past the deadline; the backlog shows the arrival
  was in time. LATE_ARRIVAL, withdrawn by the engine (``details.withdrawn``).
- ``multipath_city``: three multipath bursts on an urban street, one of 3–4 fixes
  540–650 m to the side (beyond the corridor for < 120 s). No ROUTE_DEVIATION.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import shapely

from simulators.draft import Draft
from simulators.elock import LockAction
from simulators.errors import ScenarioError
from simulators.gnss import Burst, DriftWindow, Pull
from simulators.roads import STOP_RADIUS_M, LocalFrame, Path, detour_lonlat, make_path
from simulators.truck import STANDING_MS, Drive

_Edit = Callable[[Draft], None]
#: contract v2 §3: outside only after 2 fixes this far beyond the edge
FENCE_EXIT_MARGIN_M = 50.0


def _ms(t: float, rng: np.random.Generator) -> int:
    """An event time with milliseconds (never on a whole second)."""
    return int(t) // 1000 * 1000 + int(rng.integers(1, 1000))


def _polygon(fr: LocalFrame, xs: np.ndarray, ys: np.ndarray) -> dict:
    lon, lat = fr.to_lonlat(xs, ys)
    ring = np.column_stack([lon, lat]).round(6).tolist()
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _clear(d: Draft, xs: np.ndarray, ys: np.ndarray, margin_m: float) -> bool:
    """Every corner (local metres) more than ``margin_m`` outside every trip fence."""
    lon, lat = d.road.frame.to_lonlat(xs, ys)
    return all(
        d.clear_of_fences(float(o), float(t), margin_m) for o, t in zip(lon, lat, strict=True)
    )


def _feature(geometry: dict, kind: str, name: str, geofence_id: str) -> dict:
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {"kind": kind, "name": name, "geofence_id": geofence_id},
    }


# -- parked at the consignee, drifting across its fence edge ---------------------------------


def _drift_at_consignee(d: Draft) -> None:
    road, fr = d.road, d.road.frame
    c = d.consignees[0]
    cx, cy = fr.to_xy(np.array([c.lon]), np.array([c.lat]))
    x, y = road.xy
    # the dock is 15 m inside the fence edge, on the approach: the first point of the road
    # (sampled every metre) that close to the centre
    s_c = float(road.s[c.vertex])
    grid = np.arange(max(s_c - 400.0, 0.0), s_c, 1.0)
    gx, gy = np.interp(grid, road.s, x), np.interp(grid, road.s, y)
    dist = np.hypot(gx - cx[0], gy - cy[0])
    target = STOP_RADIUS_M - 15.0
    hit = np.flatnonzero(dist <= target)
    if hit.size == 0:
        raise ScenarioError("no dock near the fence edge", shape_id=road.shape_id)
    s_dock = float(grid[hit[0]])
    a = int(np.searchsorted(road.s, s_dock)) - 1  # insert after road vertex a
    if a < 1 or a + 1 >= c.vertex or road.s[a + 1] - s_dock < 3.0 or s_dock - road.s[a] < 3.0:
        raise ScenarioError("dock too close to a road vertex", shape_id=road.shape_id)
    plon, plat = fr.to_lonlat(np.array([gx[hit[0]]]), np.array([gy[hit[0]]]))
    lon = np.insert(road.lon, a + 1, plon[0])
    lat = np.insert(road.lat, a + 1, plat[0])
    cruise = np.insert(road.cruise_kmh, a + 1, road.cruise_kmh[a])
    path = make_path(lon, lat, cruise, fr)
    d.path = path
    d.road_to_path = lambda v, a=a, p=path: int(p.source_index[v if v <= a else v + 1])
    d.park_vertex[0] = int(path.source_index[a + 1])
    d.dwell_s[0] = float(d.rng.uniform(25, 35)) * 60.0
    r0 = float(dist[hit[0]])
    ux, uy = (gx[hit[0]] - cx[0]) / r0, (gy[hit[0]] - cy[0]) / r0  # outward

    def place(d: Draft, drv: Drive) -> None:
        arrive, leave = d.marks["arrived:S1"], d.marks["left:S1"]
        unseal = _ms(arrive + d.rng.uniform(12, 16) * 60_000, d.rng)
        d.custody = [
            LockAction(unseal, "unlocked", "rfid")
            if x.event == "unlocked" and arrive <= x.ts_ms <= leave
            else x
            for x in d.custody
        ]
        lean = STOP_RADIUS_M + 25.0 - r0  # to 25 m beyond the edge
        pull = Pull(unseal - 240_000, unseal + 180_000, lean * ux, lean * uy)
        cap = STOP_RADIUS_M + FENCE_EXIT_MARGIN_M - 5.0 - r0
        sigma = float(d.rng.uniform(10, 15))
        d.drift_windows.append(DriftWindow(arrive, leave, sigma, 600.0, cap, (pull,)))
        spike = float(d.rng.uniform(150, 180))
        at = int(arrive + d.rng.uniform(5, 8) * 60_000)
        d.bursts.append(Burst(at, 1, spike * ux, spike * uy))
        d.marks.update(incident=unseal, spike=at, lean_start=pull.t0_ms, lean_end=pull.t1_ms)

    d.after.append(place)


# -- passing close by a consignee ------------------------------------------------------------


def _pass_by_consignee(d: Draft) -> None:
    p = d.the_path()
    fr = d.road.frame
    for s in d.free_s(0.3, 0.7, 600.0):
        lon, lat, bearing = p.locate(np.array([s]))
        px, py = fr.to_xy(lon, lat)
        b = math.radians(float(bearing[0]))
        ux, uy = math.sin(b), math.cos(b)
        side = float(d.rng.choice([-1.0, 1.0]))
        nx, ny = -uy * side, ux * side
        gap = float(d.rng.uniform(35, 55))
        corners = [(-75.0, gap), (75.0, gap), (75.0, gap + 120.0), (-75.0, gap + 120.0)]
        xs = np.array([px[0] + al * ux + ac * nx for al, ac in corners])
        ys = np.array([py[0] + al * uy + ac * ny for al, ac in corners])
        site = shapely.Polygon(np.column_stack([xs, ys]))
        if float(shapely.distance(site, d.road.line)) < 30.0:
            continue
        if not _clear(d, xs, ys, 300.0):
            continue
        d.geofences.append(
            _feature(
                _polygon(fr, xs, ys),
                "consignee",
                f"Another consignee beside route {d.road.route} ({d.trip_id})",
                f"CN-{d.trip_id}",
            )
        )
        d.quiet.append((s - 300.0, s + 300.0))

        def mark(d: Draft, drv: Drive, s: float = s) -> None:
            d.marks["incident"] = int(drv.time_at(s))

        d.after.append(mark)
        return
    raise ScenarioError("no room beside the road for a consignee", shape_id=d.road.shape_id)


# -- a risk zone off the route ---------------------------------------------------------------


def _risk_zone_entry(d: Draft) -> None:
    road, fr, rng = d.road, d.road.frame, d.rng
    busy = d.busy_ranges(600.0)
    for _ in range(30):
        sa = float(rng.uniform(0.25, 0.6) * road.length_m)
        sb = sa + float(rng.uniform(900, 1400))
        if sb > road.length_m - 2_000 or any(not (y < sa or x > sb) for x, y in busy):
            continue
        a, b = road.vertex_at(sa), road.vertex_at(sb)
        if b - a < 2:
            continue
        offset = float(rng.uniform(410, 450))
        dlon, dlat = detour_lonlat(road, a, b, offset, int(rng.choice([-1, 1])))
        lon = np.concatenate([road.lon[: a + 1], dlon, road.lon[b:]])
        lat = np.concatenate([road.lat[: a + 1], dlat, road.lat[b:]])
        cruise = np.concatenate([road.cruise_kmh[: a + 1], [30.0, 30.0], road.cruise_kmh[b:]])
        path = make_path(lon, lat, cruise, fr)
        pa, pb = int(path.source_index[a]), int(path.source_index[a + 3])
        x, y = fr.to_xy(path.lon[pa : pb + 1], path.lat[pa : pb + 1])
        line = shapely.LineString(np.column_stack([x, y]))
        pts = shapely.line_interpolate_point(line, np.arange(0.0, line.length, 10.0))
        if float(np.max(shapely.distance(pts, road.line))) > 475.0:
            continue
        # the truck park: the middle half of the far leg, 140 m deep
        (x1, x2), (y1, y2) = fr.to_xy(dlon, dlat)
        leg = math.hypot(x2 - x1, y2 - y1)
        ux, uy = (x2 - x1) / leg, (y2 - y1) / leg
        nx, ny = -uy, ux
        corners = [(0.25, -70.0), (0.75, -70.0), (0.75, 70.0), (0.25, 70.0)]
        xs = np.array([x1 + f * leg * ux + c * nx for f, c in corners])
        ys = np.array([y1 + f * leg * uy + c * ny for f, c in corners])
        zone = shapely.Polygon(np.column_stack([xs, ys]))
        # beyond multipath's reach (300 m) of the route, clear of the trip's fences
        if float(shapely.distance(zone, road.line)) < 340.0:
            continue
        if not _clear(d, xs, ys, 300.0):
            continue
        d.path = path

        def to_path(v: int, a: int = a, b: int = b, path: Path = path) -> int:
            if v <= a:
                return int(path.source_index[v])
            return int(path.source_index[v - b + a + 3]) if v >= b else int(path.source_index[a])

        d.road_to_path = to_path
        d.quiet.append((float(path.s[pa]), float(path.s[pb])))
        d.geofences.append(
            _feature(
                _polygon(fr, xs, ys),
                "risk_zone",
                f"Truck park off route {road.route}: cargo theft reported ({d.trip_id})",
                f"RZ-{d.trip_id}",
            )
        )
        # along-path extent of the zone on the far leg
        s1 = float(path.s[int(path.source_index[a + 1])])
        s_in, s_out = s1 + 0.25 * leg, s1 + 0.75 * leg

        def check(d: Draft, drv: Drive, s_in: float = s_in, s_out: float = s_out) -> None:
            t_in, t_out = drv.time_at(np.array([s_in, s_out]))
            if t_out - t_in < 40_000:
                raise ScenarioError("too little time in the risk zone", trip_id=d.trip_id)
            d.marks.update(incident=int(t_in), incident_end=int(t_out))

        d.after.append(check)
        d.alarm("RISK_ZONE_ENTRY", d.gps.device_id, geofence_id=f"RZ-{d.trip_id}")
        return
    raise ScenarioError("no room for a risk zone", shape_id=road.shape_id)


# -- a late arrival that the backlog withdraws -----------------------------------------------


def _late_arrival_withdrawn(d: Draft) -> None:
    def place(d: Draft, drv: Drive) -> None:
        arrive = d.marks["arrived:S1"]
        # the deadline (ETA + 30 min) falls 3–4.5 min after the real arrival
        eta = (arrive + int(d.rng.uniform(3.0, 4.5) * 60_000) - 30 * 60_000) // 1000 * 1000
        deadline = eta + 30 * 60_000
        b0 = arrive - int(d.rng.uniform(90, 120) * 1000)
        b1 = deadline + int(d.rng.uniform(40, 70) * 1000)
        d.etas["S1"] = eta
        d.blackouts.append((b0, b1))
        d.marks.update(incident=deadline, blackout_start=b0, blackout_end=b1)

    d.after.append(place)
    d.alarm("LATE_ARRIVAL", stop_id="S1", withdrawn=True)


# -- multipath in a city ---------------------------------------------------------------------


def _multipath_city(d: Draft) -> None:
    p = d.the_path()
    urban = p.limit_kmh < 50.0
    for s0 in d.free_s(0.2, 0.7, 600.0):
        span = (p.s >= s0 - 200.0) & (p.s <= s0 + 1_600.0)
        if not urban[span].all() or s0 + 1_600.0 > p.length_m - 1_000.0:
            continue
        if any(not (b < s0 - 800.0 or a > s0 + 2_200.0) for a, b in d.busy_ranges(0.0)):
            continue
        d.quiet.append((s0 - 200.0, s0 + 1_600.0))

        def place(d: Draft, drv: Drive, s0: float = s0) -> None:
            at = drv.time_at(np.array([s0, s0 + 700.0, s0 + 1_400.0]))
            for t in at:
                _, v = drv.at(np.arange(t, t + 75_000, 1_000.0))
                if (v <= STANDING_MS).any():
                    raise ScenarioError("standing during a burst", trip_id=d.trip_id)
            disp = _off_corridor(d, drv, float(at[1]))
            for k, t in enumerate(at):
                if k == 1:
                    n = int(d.rng.integers(3, 5))
                    dx, dy = disp
                else:
                    n = int(d.rng.integers(1, 5))
                    ang, r = d.rng.uniform(0, 2 * math.pi), d.rng.uniform(50, 300)
                    dx, dy = r * math.sin(ang), r * math.cos(ang)
                d.bursts.append(Burst(int(t), n, float(dx), float(dy)))
            d.marks.update(incident=int(at[0]), incident_end=int(at[-1]) + 75_000)

        d.after.append(place)
        return
    raise ScenarioError("no urban stretch for multipath", shape_id=d.road.shape_id)


def _off_corridor(d: Draft, drv: Drive, t: float) -> tuple[float, float]:
    """A displacement to one side of the road that puts every fix of a 4-fix burst from
    ``t`` (each ±20 %) 520–800 m from the route line: a city's streets wind, so the
    perpendicular alone may land near another stretch of the same route."""
    fr = d.road.frame
    times = np.arange(t, t + 65_000, 5_000.0)
    sp, _ = drv.at(times)
    lon, lat, bearing = drv.path.locate(sp)
    x, y = fr.to_xy(lon, lat)
    b = math.radians(float(bearing[0]))
    nx, ny = -math.cos(b), math.sin(b)
    for far in d.rng.permutation(np.arange(560.0, 700.0, 20.0)):
        for side in d.rng.permutation([-1.0, 1.0]):
            dx, dy = nx * far * side, ny * far * side
            ok = True
            for k in (0.8, 1.0, 1.2):
                dist = shapely.distance(shapely.points(x + k * dx, y + k * dy), d.road.line)
                if not ((dist > 520.0) & (dist < 800.0)).all():
                    ok = False
                    break
            if ok:
                return float(dx), float(dy)
    raise ScenarioError("no side of this street is clear of the route", trip_id=d.trip_id)


#: name -> (edit, intermediate consignees needed or None for random, min road length m)
GNSS_SCENARIOS: dict[str, tuple[_Edit, int | None, float]] = {
    "drift_at_consignee": (_drift_at_consignee, 1, 0.0),
    "pass_by_consignee": (_pass_by_consignee, None, 9_000.0),
    "risk_zone_entry": (_risk_zone_entry, None, 9_000.0),
    "late_arrival_withdrawn": (_late_arrival_withdrawn, 1, 0.0),
    "multipath_city": (_multipath_city, None, 9_000.0),
}

#: the scenarios whose expectations need the contract v2 engine (hysteresis, global
#: geofences that act, withdrawn late arrivals)
NEEDS_V2_ENGINE: tuple[str, ...] = (
    "drift_at_consignee",
    "risk_zone_entry",
    "late_arrival_withdrawn",
)
