"""The scenario catalogue: seeded, repeatable trips, each with the alarms it must raise under
the contract's default thresholds (§4).

Each scenario edits a normal trip (see :mod:`simulators.draft`). Incidents are placed away
from the trip's fences and from each other, and those whose outcome depends on timing
(off-route durations, speeding time) check themselves once the drive is solved; a placement
that does not come out as intended is retried elsewhere, so ``expected`` holds by
construction.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import shapely

from simulators.draft import DeviceIds, Draft, finish, new_draft
from simulators.elock import LockAction, battery_crossing_ms
from simulators.errors import ScenarioError
from simulators.gnss import GnssErrors, noise_errors
from simulators.malformed import add_malformed
from simulators.model import SimTrip
from simulators.roads import Path, Road, RoadAtlas, default_atlas, detour_lonlat, make_path
from simulators.scenarios_gnss import GNSS_SCENARIOS, NEEDS_V2_ENGINE
from simulators.script import Jump
from simulators.truck import Drive, Halt, SpeedZone

_Edit = Callable[[Draft], None]


def _ms(t: float, rng: np.random.Generator) -> int:
    """An event time with milliseconds (never on a whole second)."""
    return int(t) // 1000 * 1000 + int(rng.integers(1, 1000))


# -- detours -------------------------------------------------------------------------------


def _splice_detour(d: Draft, offset_m: tuple[float, float], chord_m: tuple[float, float]) -> dict:
    """Replace a stretch of the road by a detour to one side; returns the detour's facts
    (path vertex range, distances). Tries several places; ScenarioError when none is clean:
    the far part (> 520 m) must be one run, so must the part beyond 480 m, and the detour
    must keep clear of every trip fence."""
    road = d.road
    rng = d.rng
    busy = d.busy_ranges(600.0)
    fr = road.frame
    for _ in range(30):
        sa = float(rng.uniform(0.25, 0.6) * road.length_m)
        sb = sa + float(rng.uniform(*chord_m))
        if sb > road.length_m - 2_000 or any(not (b < sa or a > sb) for a, b in busy):
            continue
        a, b = road.vertex_at(sa), road.vertex_at(sb)
        if b - a < 2:
            continue
        offset = float(rng.uniform(*offset_m))
        side = int(rng.choice([-1, 1]))
        dlon, dlat = detour_lonlat(road, a, b, offset, side)
        lon = np.concatenate([road.lon[: a + 1], dlon, road.lon[b:]])
        lat = np.concatenate([road.lat[: a + 1], dlat, road.lat[b:]])
        cruise = np.concatenate([road.cruise_kmh[: a + 1], [42.0, 42.0], road.cruise_kmh[b:]])
        path = make_path(lon, lat, cruise, fr)
        pa = int(path.source_index[a])
        pb = int(path.source_index[a + 3])
        seg_lon, seg_lat = path.lon[pa : pb + 1], path.lat[pa : pb + 1]
        # sample the detour every ~10 m for the distance profile
        x, y = fr.to_xy(seg_lon, seg_lat)
        line = shapely.LineString(np.column_stack([x, y]))
        pts = shapely.line_interpolate_point(line, np.arange(0.0, line.length, 10.0))
        dist = np.asarray(shapely.distance(pts, road.line))
        if not (_one_run(dist > 520.0) and _one_run(dist >= 480.0)):
            continue
        plon, plat = fr.to_lonlat(shapely.get_x(pts), shapely.get_y(pts))
        if not all(
            d.clear_of_fences(float(o), float(t), 300.0) for o, t in zip(plon, plat, strict=True)
        ):
            continue
        d.path = path

        def to_path(v: int, a: int = a, b: int = b, path: Path = path) -> int:
            # road vertices inside the skipped stretch map to where the detour leaves
            if v <= a:
                return int(path.source_index[v])
            return int(path.source_index[v - b + a + 3]) if v >= b else int(path.source_index[a])

        d.road_to_path = to_path
        d.quiet.append((float(path.s[pa]), float(path.s[pb])))
        # along-path extent of the parts beyond 480 m and 520 m
        far_s = path.s[pa] + np.arange(0.0, line.length, 10.0)
        return {
            "pa": pa,
            "pb": pb,
            "out480": (float(far_s[dist >= 480.0][0]), float(far_s[dist >= 480.0][-1])),
            "out520": (float(far_s[dist > 520.0][0]), float(far_s[dist > 520.0][-1])),
            "max_m": float(dist.max()),
        }
    raise ScenarioError("no clean detour on this road", shape_id=road.shape_id)


def _one_run(mask: np.ndarray) -> bool:
    idx = np.flatnonzero(mask)
    return idx.size > 0 and int(idx[-1] - idx[0]) == idx.size - 1


def _route_deviation(d: Draft) -> None:
    det = _splice_detour(d, (1_100.0, 1_500.0), (1_200.0, 2_200.0))

    def check(d: Draft, drv: Drive) -> None:
        t0, t1 = drv.time_at(np.array(det["out520"]))
        if t1 - t0 < 240_000:
            raise ScenarioError("deviation too short", trip_id=d.trip_id)
        d.marks["incident"] = int(t0)
        d.marks["incident_end"] = int(t1)

    d.after.append(check)
    d.alarm("ROUTE_DEVIATION", d.gps.device_id)


def _short_excursion(d: Draft) -> None:
    det = _splice_detour(d, (650.0, 720.0), (150.0, 350.0))

    def check(d: Draft, drv: Drive) -> None:
        t0, t1 = drv.time_at(np.array(det["out480"]))
        if t1 - t0 > 100_000:
            raise ScenarioError("excursion too long", trip_id=d.trip_id)
        d.marks["incident"] = int(t0)
        d.marks["incident_end"] = int(t1)

    d.after.append(check)


# -- halts en route --------------------------------------------------------------------------


def _halt_en_route(d: Draft, dwell_s: float, clearance_m: float, kind: str) -> Halt:
    """A halt between 30 % and 70 % of the path, ``clearance_m`` outside every fence."""
    p = d.the_path()
    for s in d.free_s(0.3, 0.7, 800.0):
        v = int(np.searchsorted(p.s, s))
        if d.clear_of_fences(float(p.lon[v]), float(p.lat[v]), clearance_m):
            h = Halt(v, dwell_s, kind)
            d.halts.append(h)
            return h
    raise ScenarioError("no room for a halt", shape_id=d.road.shape_id)


def _halt_window(drv: Drive, halt: Halt) -> tuple[int, int]:
    """(arrive, leave) of a halt: the drive's only standing period at that vertex."""
    t = drv.vertex_arrive_ms[halt.vertex]
    return int(t), int(t + halt.dwell_s * 1000)


def _long_stop(d: Draft) -> None:
    h = _halt_en_route(d, float(d.rng.uniform(40, 50)) * 60.0, 500.0, "incident")
    d.after.append(lambda d, drv: _mark(d, _halt_window(drv, h)))
    d.alarm("LONG_STOP", d.gps.device_id)


def _mark(d: Draft, w: tuple[int, int]) -> None:
    d.marks["incident"], d.marks["incident_end"] = int(w[0]), int(w[1])


def _mark_arrival(stop_id: str) -> Callable[[Draft, Drive], None]:
    """A hook marking the arrival at a stop as the incident."""

    def hook(d: Draft, drv: Drive) -> None:
        d.marks["incident"] = d.marks[f"arrived:{stop_id}"]

    return hook


def _rest_area_stop(d: Draft) -> None:
    h = _halt_en_route(d, float(d.rng.uniform(40, 55)) * 60.0, 500.0, "rest")
    p = d.the_path()
    fr = d.road.frame
    cx, cy = fr.to_xy(p.lon[h.vertex : h.vertex + 1], p.lat[h.vertex : h.vertex + 1])
    b = math.radians(float(p.bearing[h.vertex]))
    ux, uy = math.sin(b), math.cos(b)  # along the road
    nx, ny = -uy, ux
    corners = [(-175, -100), (175, -100), (175, 100), (-175, 100), (-175, -100)]
    xs = np.array([cx[0] + a * ux + c * nx for a, c in corners])
    ys = np.array([cy[0] + a * uy + c * ny for a, c in corners])
    lon, lat = fr.to_lonlat(xs, ys)
    d.geofences.append(
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [np.column_stack([lon, lat]).round(6).tolist()],
            },
            "properties": {
                "kind": "rest_area",
                "name": f"Rest area on route {d.road.route} ({d.trip_id})",
                "geofence_id": f"RA-{d.trip_id}",
            },
        }
    )
    d.after.append(lambda d, drv: _mark(d, _halt_window(drv, h)))


def _unlock_en_route(d: Draft) -> None:
    h = _halt_en_route(d, float(d.rng.uniform(6, 10)) * 60.0, 700.0, "incident")

    def place(d: Draft, drv: Drive) -> None:
        a, b = _halt_window(drv, h)
        t = _ms(a + d.rng.uniform(100, 160) * 1000, d.rng)
        d.actions.append(LockAction(t, "unlocked", "key"))
        d.actions.append(LockAction(_ms(b - d.rng.uniform(60, 90) * 1000, d.rng), "locked"))
        _mark(d, (t, b))

    d.after.append(place)
    d.alarm("UNAUTHORIZED_UNLOCK", d.lock.device_id)


def _unlock_no_position(d: Draft) -> None:
    h = _halt_en_route(d, 14 * 60.0, 700.0, "incident")

    def place(d: Draft, drv: Drive) -> None:
        a, _ = _halt_window(drv, h)
        o0 = a + 60_000
        o1 = o0 + 540_000
        d.gps_outages.append((o0, o1))
        t = _ms(o0 + 420_000, d.rng)
        d.actions.append(LockAction(t, "unlocked", "key", positioned=False))
        d.actions.append(LockAction(_ms(o0 + 480_000, d.rng), "locked", positioned=False))
        _mark(d, (t, o1))

    d.after.append(place)
    d.alarm("UNAUTHORIZED_UNLOCK", d.lock.device_id, position_unknown=True)


def _wrong_consignee(d: Draft) -> None:
    # the plan lists the farther of two consignees first; the driver serves the nearer one
    # first and unseals there: not the next unvisited stop in plan order
    d.plan_order = [1, 0, *range(2, len(d.consignees))]
    d.after.append(_mark_arrival("S2"))
    d.alarm("UNLOCK_OUT_OF_SEQUENCE", d.lock.device_id, stop_id="S2")


def _lock_event(event: str) -> _Edit:
    def edit(d: Draft) -> None:
        p = d.the_path()
        s = []
        for x in d.free_s(0.35, 0.65, 600.0):
            lon, lat, _ = p.locate(np.array([x]))
            if d.clear_of_fences(float(lon[0]), float(lat[0]), 500.0):
                s.append(x)
        if not s:
            raise ScenarioError("no room for a lock event", shape_id=d.road.shape_id)
        d.quiet.append((s[0] - 300.0, s[0] + 300.0))

        def place(d: Draft, drv: Drive, at: float = s[0]) -> None:
            t = _ms(float(drv.time_at(at)), d.rng)
            d.actions.append(LockAction(t, event))
            d.marks["incident"] = t

        d.after.append(place)
        d.alarm("LOCK_TAMPER", d.lock.device_id, event=event)

    return edit


def _signal_loss_backlog(d: Draft) -> None:
    det = _splice_detour(d, (1_100.0, 1_500.0), (1_200.0, 2_000.0))
    p = d.the_path()

    def place(d: Draft, drv: Drive) -> None:
        t0, t1 = drv.time_at(np.array(det["out520"]))
        if t1 - t0 < 240_000:
            raise ScenarioError("deviation too short", trip_id=d.trip_id)
        ta = float(drv.time_at(p.s[det["pa"]]))
        tb = float(drv.time_at(p.s[det["pb"]]))
        b0 = int(ta - d.rng.uniform(60, 120) * 1000)
        b1 = int(tb + d.rng.uniform(150, 210) * 1000)
        b0 = min(b0, b1 - 780_000)
        d.blackouts.append((b0, b1))
        d.marks.update(blackout_start=b0, blackout_end=b1, incident=int(t0), incident_end=int(t1))

    d.after.append(place)
    d.alarm("SIGNAL_LOST")
    d.alarm("ROUTE_DEVIATION", d.gps.device_id, detected_late=True)


def _gps_jump(d: Draft) -> None:
    p = d.the_path()
    for s in d.free_s(0.35, 0.65, 500.0):
        lon, lat, _ = p.locate(np.array([s]))
        for _ in range(8):
            ang = d.rng.uniform(0, 2 * math.pi)
            r = d.rng.uniform(4_000, 8_000)
            dx, dy = r * math.sin(ang), r * math.cos(ang)
            jl = lon[0] + dx / (111_000.0 * math.cos(math.radians(lat[0])))
            jt = lat[0] + dy / 111_000.0
            if d.road.distance_m(np.array([jl]), np.array([jt]))[0] > 2_000.0:
                d.quiet.append((s - 300.0, s + 300.0))

                def place(
                    d: Draft, drv: Drive, s: float = s, dx: float = dx, dy: float = dy
                ) -> None:
                    t = int(drv.time_at(s))
                    d.jump = Jump(t, dx, dy)
                    d.marks["incident"] = t

                d.after.append(place)
                return
    raise ScenarioError("no room for a GPS jump", shape_id=d.road.shape_id)


def _speeding(d: Draft) -> None:
    p = d.the_path()
    length = 5_000.0
    busy = d.busy_ranges(800.0)
    best, best_v = None, -1.0
    for s0 in np.arange(1_000.0, p.length_m - length - 1_000.0, 250.0):
        s1 = s0 + length
        if any(not (b < s0 or a > s1) for a, b in busy):
            continue
        m = (p.s >= s0) & (p.s <= s1)
        v = float(p.limit_kmh[m].mean())
        if v > best_v:
            best, best_v = float(s0), v
    if best is None:
        raise ScenarioError("no room to speed", shape_id=d.road.shape_id)
    s0, s1 = best, best + length
    d.zones.append(SpeedZone(s0, s1, float(d.rng.uniform(97, 102)), force=True))
    d.quiet.append((s0, s1))

    def check(d: Draft, drv: Drive) -> None:
        t = np.arange(float(drv.time_at(s0)), float(drv.time_at(s1)) + 60_000, 1000.0)
        _, v = drv.at(t)
        fast = t[v * 3.6 > 92.0]
        if fast.size == 0 or fast[-1] - fast[0] < 90_000 or not _one_run(v * 3.6 > 92.0):
            raise ScenarioError("speeding too short", trip_id=d.trip_id)
        d.marks["incident"], d.marks["incident_end"] = int(fast[0]), int(fast[-1])

    d.after.append(check)
    d.alarm("SPEEDING", d.gps.device_id)


def _dwell_overtime(d: Draft) -> None:
    d.dwell_s[0] = float(d.rng.uniform(140, 160)) * 60.0
    d.after.append(_mark_arrival("S1"))
    d.alarm("DWELL_OVERTIME", d.gps.device_id, stop_id="S1")


def _late_arrival(d: Draft) -> None:
    # loading took 100 min longer than planned; the ETA was made from the plan
    d.depart_delay_s = 100 * 60.0
    d.eta_from_nominal = True
    d.alarm("LATE_ARRIVAL", stop_id="S1")


def _low_battery(d: Draft) -> None:
    def place(d: Draft, drv: Drive) -> None:
        hours = (drv.end_ms + 300_000 - d.start_ms) / 3_600_000.0
        lock = replace(d.lock, battery0=19.2, drain_per_h=(19.2 - 13.0) / hours)
        t = battery_crossing_ms(d.start_ms, lock.battery0, lock.drain_per_h)
        if t is None:
            raise ScenarioError("battery does not drain", trip_id=d.trip_id)
        # in the second after the crossing, so the event itself reports 15 %
        d.actions.append(LockAction(_ms(t + 1000, d.rng), "low_battery"))
        d.marks["incident"] = t
        if d.combined:
            d.gps = lock
        d.lock = lock

    d.after.append(place)
    d.alarm("LOW_BATTERY", d.lock.device_id)


def _duplicates_out_of_order(d: Draft) -> None:
    d.redeliver_s = 30.0


def _normal(d: Draft) -> None:
    return None


#: name -> (edit, intermediate consignees needed or None for random, min road length m)
SCENARIOS: dict[str, tuple[_Edit, int | None, float]] = {
    "normal": (_normal, None, 0.0),
    "route_deviation": (_route_deviation, None, 9_000.0),
    "short_excursion": (_short_excursion, None, 9_000.0),
    "long_stop": (_long_stop, None, 9_000.0),
    "rest_area_stop": (_rest_area_stop, None, 9_000.0),
    "unlock_en_route": (_unlock_en_route, None, 9_000.0),
    "unlock_no_position": (_unlock_no_position, None, 9_000.0),
    "wrong_consignee": (_wrong_consignee, 2, 0.0),
    "tamper": (_lock_event("tamper"), None, 9_000.0),
    "rope_cut": (_lock_event("rope_cut"), None, 9_000.0),
    "forced_open": (_lock_event("forced_open"), None, 9_000.0),
    "signal_loss_backlog": (_signal_loss_backlog, None, 9_000.0),
    "gps_jump": (_gps_jump, None, 9_000.0),
    "speeding": (_speeding, None, 12_000.0),
    "dwell_overtime": (_dwell_overtime, 1, 0.0),
    "late_arrival": (_late_arrival, 0, 0.0),
    "low_battery": (_low_battery, None, 0.0),
    "duplicates_out_of_order": (_duplicates_out_of_order, None, 0.0),
    "malformed": (add_malformed, None, 0.0),
}

#: every scenario of the original catalogue that is not a plain normal trip
INCIDENTS: tuple[str, ...] = tuple(n for n in SCENARIOS if n != "normal")

#: real-world GNSS and contract v2 scenarios (simulators.scenarios_gnss), kept apart from
#: ``INCIDENTS`` so that fleets built from that list keep their composition
GNSS_INCIDENTS: tuple[str, ...] = tuple(GNSS_SCENARIOS)
SCENARIOS.update(GNSS_SCENARIOS)


def scenario_names(*, gnss: bool = False) -> list[str]:
    """Names of the scenarios, ``normal`` first; with ``gnss`` the real-world GNSS and
    contract v2 ones (``GNSS_INCIDENTS``) too."""
    return ["normal", *INCIDENTS, *(GNSS_INCIDENTS if gnss else ())]


def name_code(name: str) -> int:
    """A stable integer for a scenario name (seeds)."""
    return zlib.crc32(name.encode())


def build_trip(
    name: str,
    entropy: tuple[int, ...],
    *,
    start_ms: int,
    trip_id: str,
    shipper: str,
    ids: DeviceIds,
    atlas: RoadAtlas | None = None,
    noise: str | GnssErrors = "clean",
) -> SimTrip:
    """Build one scenario trip from explicit entropy (used by fleets and by
    :func:`build_scenario`). Roads are tried in a seeded order until the scenario fits.
    ``noise`` names a GNSS error model (``simulators.gnss.NOISE_KINDS``) or is one."""
    errors = noise_errors(noise)
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    atlas = atlas if atlas is not None else default_atlas()
    edit, intermediates, min_len = SCENARIOS[name]
    rng = np.random.default_rng([*entropy, name_code(name)])
    roads: list[Road] = [atlas.roads[int(i)] for i in rng.permutation(len(atlas))]
    last: ScenarioError | None = None
    for attempt, road in enumerate(roads):
        if road.length_m < min_len:
            continue
        try:
            d = new_draft(
                name,
                (*entropy, name_code(name), attempt),
                atlas,
                start_ms=start_ms,
                trip_id=trip_id,
                shipper=shipper,
                ids=ids,
                road=road,
                intermediates=intermediates,
            )
            d.errors = errors
            edit(d)
            return finish(d)
        except ScenarioError as exc:
            last = exc
    raise ScenarioError("scenario fits no road", scenario=name, last=str(last))


def build_scenario(
    name: str,
    *,
    seed: int = 0,
    start_ms: int,
    trip_id: str | None = None,
    shipper: str = "pg",
    device_prefix: str = "",
    noise: str | GnssErrors = "clean",
) -> SimTrip:
    """One seeded, repeatable trip of scenario ``name`` whose devices power on at
    ``start_ms``, with GNSS errors of kind ``noise`` (see :mod:`simulators.gnss`). Device
    ids are ``{prefix}gps-{name}-{seed}``, ``{prefix}lock-…`` or (a
    combined GPS e-lock) ``{prefix}unit-…``; the trip id defaults to
    ``{SHIPPER}-SIM-{name}-{seed}``."""
    ids = DeviceIds(
        f"{device_prefix}gps-{name}-{seed}",
        f"{device_prefix}lock-{name}-{seed}",
        f"{device_prefix}unit-{name}-{seed}",
    )
    tid = trip_id if trip_id is not None else f"{shipper.upper()}-SIM-{name}-{seed}"
    return build_trip(
        name, (int(seed),), start_ms=start_ms, trip_id=tid, shipper=shipper, ids=ids, noise=noise
    )


__all__ = [
    "GNSS_INCIDENTS",
    "INCIDENTS",
    "NEEDS_V2_ENGINE",
    "SCENARIOS",
    "build_scenario",
    "build_trip",
    "scenario_names",
]
