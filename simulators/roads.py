"""Real road geometry for simulated trucks.

The roads are the 52 non-loop bus route shapes of the Cairns GTFS feed (see
``simulators/data/README``): real streets and highways, 6.9–44.5 km, each with the timed stops
of one scheduled trip, which give consignee names and positions and a schedule speed from
which a truck's cruising speed is derived (urban streets slow, highways fast).

A :class:`Road` is the route of a trip (the shape up to its last timed stop). A :class:`Path`
is what a truck drives: the road densified, or the road with a detour spliced in, with a
per-vertex speed limit from the road's schedule speed and its curvature.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path as FilePath

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Geod

from simulators.errors import ScenarioError

DATA_FILE = FilePath(__file__).with_name("data") / "cairns_roads.json"
GEOD = Geod(ellps="WGS84")

# WGS-84, for the local radii of the tangent-plane frame
_A = 6_378_137.0
_E2 = 6.694379990141e-3

#: radius of the origin fence of simulated trips, metres
ORIGIN_RADIUS_M = 300.0
#: radius of consignee stop fences, metres
STOP_RADIUS_M = 200.0
#: a fence must be crossed cleanly: the road's distance to its centre, sampled every 10 m,
#: falls then rises (no second visit) within this band beyond the radius...
_FENCE_BAND_M = 60.0
#: ...and passes the radius ±15 m within this much road on the way in and on the way out,
#: so GPS noise cannot make a truck seem to leave and re-enter
_CROSSING_MAX_M = 80.0

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class LocalFrame:
    """A tangent-plane frame (metres east / north of a centre) using the ellipsoid's local
    radii at the centre: within ~0.1 % over the ±20 km of one road, enough to build detours
    and fences (the rules' own distances are checked with pyproj in the tests)."""

    lat0: float
    lon0: float
    k_lat: float  # metres per degree of latitude
    k_lon: float  # metres per degree of longitude

    @classmethod
    def around(cls, lat0: float, lon0: float) -> LocalFrame:
        """The frame centred at ``lat0, lon0``."""
        phi = math.radians(lat0)
        w = math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)
        meridional = _A * (1.0 - _E2) / w**3
        normal = _A / w
        return cls(
            lat0, lon0, meridional * math.pi / 180.0, normal * math.cos(phi) * math.pi / 180.0
        )

    def to_xy(self, lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Degrees to metres."""
        return (np.asarray(lon) - self.lon0) * self.k_lon, (
            np.asarray(lat) - self.lat0
        ) * self.k_lat

    def to_lonlat(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Metres to degrees."""
        return np.asarray(x) / self.k_lon + self.lon0, np.asarray(y) / self.k_lat + self.lat0


def geodesic_steps(lon: FloatArray, lat: FloatArray) -> FloatArray:
    """Ellipsoidal length of each segment of a polyline, metres."""
    if len(lon) < 2:
        return np.zeros(0)
    _, _, d = GEOD.inv(lon[:-1], lat[:-1], lon[1:], lat[1:])
    return np.asarray(d, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RoadStop:
    """A timetabled bus stop on a road: a consignee candidate."""

    stop_id: str
    name: str
    lon: float
    lat: float
    vertex: int  # the road vertex the stop was matched to (within 80 m)
    offset_s: int | None  # scheduled seconds after departure, None when untimed


@dataclass(frozen=True, eq=False)
class Road:
    """One real road, from its first to its last timed stop."""

    shape_id: str
    route: str
    name: str
    headsign: str
    lon: FloatArray
    lat: FloatArray
    s: FloatArray  # along-road metres at each vertex
    cruise_kmh: FloatArray  # a truck's cruising speed at each vertex (schedule based)
    stops: tuple[RoadStop, ...]
    frame: LocalFrame

    @property
    def length_m(self) -> float:
        """Length of the road, metres."""
        return float(self.s[-1])

    @cached_property
    def xy(self) -> tuple[FloatArray, FloatArray]:
        """Vertices in the road's local frame."""
        return self.frame.to_xy(self.lon, self.lat)

    @cached_property
    def line(self) -> shapely.LineString:
        """The road in local metres (for distance checks)."""
        x, y = self.xy
        return shapely.LineString(np.column_stack([x, y]))

    @cached_property
    def coordinates(self) -> list[list[float]]:
        """GeoJSON coordinates ``[lon, lat]`` rounded to 1e-6°. Shared by every trip on this
        road: treat as read-only."""
        return np.column_stack([self.lon, self.lat]).round(6).tolist()

    @cached_property
    def path(self) -> Path:
        """The road as a driven path (shared by all trucks that keep to it)."""
        return make_path(self.lon, self.lat, self.cruise_kmh, self.frame)

    @cached_property
    def consignee_candidates(self) -> tuple[RoadStop, ...]:
        """Intermediate stops that can be consignees: ≥ 2 km from both ends along the road,
        and a fence the road enters once."""
        return tuple(
            st
            for st in self.stops[1:-1]
            if 2_000.0 <= self.s[st.vertex] <= self.length_m - 2_000.0
            and self.enters_once(st.lon, st.lat, STOP_RADIUS_M)
        )

    def distance_m(self, lon: FloatArray, lat: FloatArray) -> FloatArray:
        """Distance of points to the road line, metres (local frame)."""
        x, y = self.frame.to_xy(lon, lat)
        return np.asarray(shapely.distance(shapely.points(x, y), self.line), dtype=np.float64)

    @cached_property
    def samples_xy(self) -> tuple[FloatArray, FloatArray]:
        """The road sampled every 10 m, local frame."""
        x, y = self.xy
        grid = np.arange(0.0, self.length_m, 10.0)
        return np.interp(grid, self.s, x), np.interp(grid, self.s, y)

    def enters_once(self, lon: float, lat: float, radius_m: float) -> bool:
        """True when the road crosses the fence around a point cleanly (see
        ``_FENCE_BAND_M``): one visit, distance falling then rising, steep at the radius."""
        px, py = self.frame.to_xy(np.array([lon]), np.array([lat]))
        x, y = self.samples_xy
        return _clean_visit(np.hypot(x - px[0], y - py[0]), radius_m)

    def clear_of(self, lon: float, lat: float, radius_m: float) -> bool:
        """True when no vertex comes within ``radius_m`` of a point."""
        x, y = self.xy
        px, py = self.frame.to_xy(np.array([lon]), np.array([lat]))
        return bool(np.hypot(x - px[0], y - py[0]).min() > radius_m)

    def vertex_at(self, s: float) -> int:
        """The vertex nearest along-road position ``s``."""
        i = int(np.searchsorted(self.s, s))
        if i >= len(self.s):
            return len(self.s) - 1
        if i > 0 and s - self.s[i - 1] < self.s[i] - s:
            return i - 1
        return i


@dataclass(frozen=True, eq=False)
class Path:
    """A drivable polyline (densified to ≤ 100 m segments) with a speed limit per vertex."""

    lon: FloatArray
    lat: FloatArray
    s: FloatArray
    bearing: FloatArray  # degrees from north of the segment leaving each vertex
    limit_kmh: FloatArray  # cruise speed capped by curvature
    source_index: IntArray  # path vertex of each input vertex

    @property
    def length_m(self) -> float:
        """Length of the path, metres."""
        return float(self.s[-1])

    def locate(self, s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Longitude, latitude and bearing at along-path positions ``s``."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.s[-1])
        j = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
        seg = self.s[j + 1] - self.s[j]
        f = (s - self.s[j]) / seg
        lon = self.lon[j] + f * (self.lon[j + 1] - self.lon[j])
        lat = self.lat[j] + f * (self.lat[j + 1] - self.lat[j])
        return lon, lat, self.bearing[j]


def _curve_limit_kmh(s: FloatArray, bearing: FloatArray, window_m: float = 25.0) -> FloatArray:
    """Speed a loaded truck takes through the bend at each vertex: heading change over
    ±``window_m`` gives a radius, lateral acceleration ≤ 1.5 m/s², never below 12 km/h."""
    turn = (np.diff(bearing) + 180.0) % 360.0 - 180.0
    heading = np.concatenate([[0.0], np.cumsum(turn)])  # unwrapped heading per segment
    seg = np.arange(len(s) - 1)
    lo = np.clip(np.searchsorted(s, s - window_m, side="right") - 1, 0, seg[-1])
    hi = np.clip(np.searchsorted(s, s + window_m, side="right") - 1, 0, seg[-1])
    dtheta = np.radians(np.abs(heading[hi] - heading[lo]))
    with np.errstate(divide="ignore"):
        radius = np.where(dtheta > 1e-6, 2.0 * window_m / dtheta, np.inf)
    return np.maximum(np.sqrt(1.5 * radius) * 3.6, 12.0)


def make_path(
    lon: FloatArray,
    lat: FloatArray,
    cruise_kmh: FloatArray,
    frame: LocalFrame,
    max_seg_m: float = 100.0,
) -> Path:
    """Densify a polyline and derive its per-vertex speed limit. Repeated points are dropped
    (GTFS shapes have some), which the kinematics need: every segment has a length."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    cruise_kmh = np.asarray(cruise_kmh, dtype=np.float64)
    steps = geodesic_steps(lon, lat)
    keep = np.concatenate([[True], steps >= 0.5])
    src_to_kept = np.cumsum(keep) - 1
    lon, lat, cruise_kmh, steps = lon[keep], lat[keep], cruise_kmh[keep], steps[keep[1:]]
    pieces = np.maximum(np.ceil(steps / max_seg_m).astype(np.int64), 1)
    starts = np.concatenate([[0], np.cumsum(pieces)])
    n = int(starts[-1]) + 1
    seg_of = np.repeat(np.arange(len(steps)), pieces)
    frac = (np.arange(n - 1) - starts[seg_of]) / pieces[seg_of]
    d_lon = np.concatenate([lon[seg_of] + frac * np.diff(lon)[seg_of], lon[-1:]])
    d_lat = np.concatenate([lat[seg_of] + frac * np.diff(lat)[seg_of], lat[-1:]])
    d_cruise = np.concatenate(
        [cruise_kmh[seg_of] + frac * np.diff(cruise_kmh)[seg_of], cruise_kmh[-1:]]
    )
    fwd, _, d = GEOD.inv(d_lon[:-1], d_lat[:-1], d_lon[1:], d_lat[1:])
    s = np.concatenate([[0.0], np.cumsum(d)])
    bearing = np.concatenate([np.asarray(fwd) % 360.0, [np.asarray(fwd)[-1] % 360.0]])
    limit = np.minimum(d_cruise, _curve_limit_kmh(s, bearing))
    source_index = starts[src_to_kept]
    return Path(d_lon, d_lat, s, bearing, limit, source_index.astype(np.int64))


def _cruise_from_schedule(s: FloatArray, stops: Sequence[RoadStop]) -> FloatArray:
    """A truck's cruising speed along a road from the bus timetable: the schedule speed over
    ±1 km (bus dwell included, hence the uplift), 30–80 km/h."""
    timed = [(float(s[st.vertex]), float(st.offset_s)) for st in stops if st.offset_s is not None]
    if len(timed) < 2:
        return np.full(len(s), 45.0)
    ss = np.array([t[0] for t in timed])
    tt = np.maximum.accumulate(np.array([t[1] for t in timed]))
    lo = np.clip(s - 1000.0, 0.0, s[-1])
    hi = np.clip(s + 1000.0, 0.0, s[-1])
    dt = np.interp(hi, ss, tt) - np.interp(lo, ss, tt)
    sched_kmh = (hi - lo) / np.maximum(dt, 1.0) * 3.6
    return np.clip(12.0 + 1.1 * sched_kmh, 30.0, 80.0)


class RoadAtlas:
    """The roads trucks can drive, loaded from the committed data file."""

    def __init__(self, roads: Sequence[Road]) -> None:
        self.roads: tuple[Road, ...] = tuple(roads)
        self._by_id = {r.shape_id: r for r in self.roads}

    def __len__(self) -> int:
        return len(self.roads)

    def get(self, shape_id: str) -> Road:
        """The road with this GTFS shape id."""
        try:
            return self._by_id[shape_id]
        except KeyError:
            raise ScenarioError("unknown road", shape_id=shape_id) from None

    @classmethod
    def load(cls, path: FilePath = DATA_FILE) -> RoadAtlas:
        """Read the road document (see ``gtfs_extract``) and keep the roads whose origin and
        final stop fences are entered once (no loop back through them)."""
        doc = json.loads(path.read_text(encoding="utf-8"))
        stop_info = doc["stops"]
        roads = []
        for sh in doc["shapes"]:
            road = _road_from_shape(sh, stop_info)
            if road is not None:
                roads.append(road)
        return cls(roads)


def _road_from_shape(sh: dict, stop_info: dict[str, list]) -> Road | None:
    """The longest sub-road of a shape between two of its stops, among the first and last
    few, whose origin and final fences are entered once (many bus routes loop around their
    terminus); None when there is none."""
    lat_all = np.cumsum(np.asarray(sh["lat_e6"], dtype=np.int64)) / 1e6
    lon_all = np.cumsum(np.asarray(sh["lon_e6"], dtype=np.int64)) / 1e6
    all_stops = [
        RoadStop(sid, stop_info[sid][0], stop_info[sid][2], stop_info[sid][1], int(v), off)
        for sid, off, v in sh["stops"]
    ]
    n = len(all_stops)
    pairs = sorted(
        ((i, j) for i in range(min(6, n)) for j in range(max(0, n - 6), n) if j > i + 2),
        key=lambda ij: (ij[0] - ij[1], ij),
    )
    for i, j in pairs:
        va, vb = all_stops[i].vertex, all_stops[j].vertex
        lon, lat = lon_all[va : vb + 1], lat_all[va : vb + 1]
        s = np.concatenate([[0.0], np.cumsum(geodesic_steps(lon, lat))])
        if s[-1] < 5_000.0:
            continue
        off0 = all_stops[i].offset_s
        stops = tuple(
            RoadStop(
                st.stop_id,
                st.name,
                st.lon,
                st.lat,
                st.vertex - va,
                None if st.offset_s is None or off0 is None else st.offset_s - off0,
            )
            for st in all_stops[i : j + 1]
        )
        road = Road(
            shape_id=sh["shape_id"],
            route=sh["route"],
            name=sh["name"],
            headsign=sh["headsign"],
            lon=lon,
            lat=lat,
            s=s,
            cruise_kmh=_cruise_from_schedule(s, stops),
            stops=stops,
            frame=LocalFrame.around(float(lat.mean()), float(lon.mean())),
        )
        first, last = stops[0], stops[-1]
        if road.enters_once(first.lon, first.lat, ORIGIN_RADIUS_M) and road.enters_once(
            last.lon, last.lat, STOP_RADIUS_M
        ):
            return road
    return None


def _clean_visit(d: FloatArray, radius_m: float) -> bool:
    """``d``: distance to a fence centre along the road. One run within the band, falling
    then rising (0.5 m of digitising noise allowed), steep where it crosses the radius."""
    near = np.flatnonzero(d <= radius_m + _FENCE_BAND_M)
    if near.size == 0 or int(near[-1] - near[0]) != near.size - 1 or d[near].min() > radius_m - 30:
        return False
    run = d[near[0] : near[-1] + 1]
    k = int(np.argmin(run))
    if (np.diff(run[: k + 1]) > 0.5).any() or (np.diff(run[k:]) < -0.5).any():
        return False
    at_edge = np.abs(run - radius_m) <= 15.0
    return bool(
        at_edge[:k].sum() * 10.0 <= _CROSSING_MAX_M and at_edge[k:].sum() * 10.0 <= _CROSSING_MAX_M
    )


@lru_cache(maxsize=4)
def default_atlas(path: FilePath = DATA_FILE) -> RoadAtlas:
    """The committed atlas, loaded once per process (immutable data)."""
    return RoadAtlas.load(path)


def detour_lonlat(
    road: Road, a: int, b: int, offset_m: float, side: int
) -> tuple[FloatArray, FloatArray]:
    """Corner points of a detour that leaves the road at vertex ``a``, runs ``offset_m`` to
    one ``side`` (+1 left, -1 right) parallel to the chord a→b, and rejoins at vertex ``b``
    (the end points themselves excluded)."""
    x, y = road.xy
    ax, ay, bx, by = x[a], y[a], x[b], y[b]
    chord = math.hypot(bx - ax, by - ay)
    if chord < 1.0:
        raise ScenarioError("detour chord too short", shape_id=road.shape_id, a=a, b=b)
    dx, dy = (bx - ax) / chord, (by - ay) / chord
    nx, ny = -dy * side, dx * side
    px = np.array([ax + nx * offset_m, bx + nx * offset_m])
    py = np.array([ay + ny * offset_m, by + ny * offset_m])
    return road.frame.to_lonlat(px, py)
