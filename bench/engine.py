"""Throughput of the rule engine core at fleet scale; prints one JSON object.

Workload (as in shared/notes/performance.md): N active trips, one truck (device) each,
routes of 1,000-3,000 vertices (segments ~25 / 96 / 330 m at p5 / p50 / p95), an origin and
two stops per trip, 5,000 global geofences (half circles, half ~22-vertex polygons, a fifth
of them rest areas), batches of one fix per truck (8 m GPS noise, 2 % of trucks 600-1,500 m
off route, every fix with speed and battery). Timed after two warm-up batches:

- ``fixes_per_s``: ``Engine.process_columns`` (fixes already in columns, PositionUpdates
  kept columnar) -- the engine core, geometry included;
- ``full_path_fixes_per_s``: ``Engine.process`` on ``Fix`` objects (positions columnar),
  and ``full_path_position_objects_fixes_per_s`` with a PositionUpdate object per device
  in the events (``position_events=True``, the engine's default);
- ``baseline_fixes_per_s``: the naive loop on a sample: per fix, a pyproj-projected shapely
  Point, ``line.distance`` to its route, an STRtree query of the trip and global fences,
  and the rule counters in Python.

- ``late_data``: one batch of 5,000 messages over ~1,400 active trips (three fixes per
  truck plus a lock ``tamper`` on 800 trips) after 20 min of live batches, timed twice
  from the same state: with the tampers 1-60 s *older* than what their devices already
  sent (late data) and with the same tampers in order. ``ratio`` = late / in order.
  ``late_data.late_fixes``: the same with an extra fix 1-60 s late on 800 trips instead
  of the tampers (those trips are rewound from the journal).

    python -m bench.engine [--quick] [--trips 10000] [--fences 5000] [--batches 8]
    python -m bench.engine --late-only [--late-trips 1400]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import shapely
from pyproj import Geod, Transformer

from rules import Engine, FixCols, LockCols
from rules.events import AlarmSignal
from telemetry.models import Fix, LockEvent, LockEventType

REGION = (100.0, 122.0, 22.0, 40.0)
T0 = 1_795_334_400_000
STEP_S = 30
WGS84_A, WGS84_E2 = 6_378_137.0, 0.006694379990141317


def metres_per_degree(lat: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    phi = np.radians(lat)
    w2 = 1.0 - WGS84_E2 * np.sin(phi) ** 2
    kx = np.radians(1.0) * WGS84_A * np.cos(phi) / np.sqrt(w2)
    ky = np.radians(1.0) * WGS84_A * (1.0 - WGS84_E2) / w2**1.5
    return kx, ky


def make_route(rng: np.random.Generator) -> np.ndarray:
    """A meandering road that does not loop back on itself."""
    n = int(rng.integers(1_000, 3_001))
    lon0, lat0 = rng.uniform(REGION[0], REGION[1]), rng.uniform(REGION[2], REGION[3])
    step = np.clip(np.exp(rng.normal(np.log(96.0), 0.75, n - 1)), 5.0, 2_000.0)
    slow = 0.9 * np.sin(np.cumsum(rng.normal(0.0, 0.08, n - 1)))
    head = rng.uniform(0, 2 * np.pi) + slow + rng.normal(0.0, 0.15, n - 1)
    kx, ky = metres_per_degree(lat0)
    lon = lon0 + np.concatenate([[0.0], np.cumsum(step * np.sin(head) / kx)])
    lat = lat0 + np.concatenate([[0.0], np.cumsum(step * np.cos(head) / ky)])
    return np.column_stack([lon, lat])


def circle(lon: float, lat: float, radius: float) -> dict:
    return {
        "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
        "radius_m": radius,
    }


def polygon(rng: np.random.Generator, lon: float, lat: float) -> dict:
    kx, ky = metres_per_degree(lat)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 21))
    rad = rng.uniform(300, 2_000) * rng.uniform(0.6, 1.0, 21)
    ring = np.column_stack([lon + rad * np.cos(ang) / kx, lat + rad * np.sin(ang) / ky])
    ring = np.vstack([ring, ring[:1]])
    return {"geometry": {"type": "Polygon", "coordinates": [ring.tolist()]}}


class Fleet:
    """Routes, trucks moving along them, and the engine loaded with their trips."""

    def __init__(self, rng: np.random.Generator, trips: int, fences: int) -> None:
        t = time.perf_counter()
        self.rng = rng
        self.engine = Engine(position_events=False)
        self.routes: list[np.ndarray] = []
        self.cum: list[np.ndarray] = []
        for k in range(fences):
            lon, lat = rng.uniform(REGION[0], REGION[1]), rng.uniform(REGION[2], REGION[3])
            kind = (
                "rest_area" if k % 5 == 0 else ("depot", "custom", "risk_zone", "consignee")[k % 4]
            )
            shape = (
                circle(lon, lat, float(rng.uniform(100, 1_000)))
                if k % 2
                else polygon(rng, lon, lat)
            )
            self.engine.put_geofence({"geofence_id": f"g{k}", "kind": kind, **shape})
        for i in range(trips):
            line = make_route(rng)
            kx, ky = metres_per_degree(line[:-1, 1])
            seg = np.hypot(np.diff(line[:, 0]) * kx, np.diff(line[:, 1]) * ky)
            self.routes.append(line)
            self.cum.append(np.concatenate([[0.0], np.cumsum(seg)]))
            mid, end = line[len(line) // 2], line[-1]
            self.engine.upsert_trip(
                {
                    "trip_id": f"T{i}",
                    "shipper": f"s{i % 20}",
                    "devices": [f"d{i}"],
                    "origin": circle(line[0, 0], line[0, 1], 300.0),
                    "route": {"type": "LineString", "coordinates": line.tolist()},
                    "stops": [
                        {"stop_id": "S1", **circle(mid[0], mid[1], 200.0)},
                        {"stop_id": "S2", **circle(end[0], end[1], 200.0)},
                    ],
                    "planned_start": T0 - 3_600_000,
                    "status": "active",
                }
            )
        self.n = trips
        self.along = np.array([rng.uniform(0.05, 0.45) * c[-1] for c in self.cum])
        self.off = rng.random(trips) < 0.02
        self.offset = np.where(self.off, rng.uniform(600, 1_500, trips), 0.0)
        self.dev = self.engine.devices.slots([f"d{i}" for i in range(trips)])
        self.ids = [f"d{i}" for i in range(trips)]
        self.k = 0
        self.setup_s = time.perf_counter() - t

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        lon, lat = np.empty(self.n), np.empty(self.n)
        for i, (line, cum) in enumerate(zip(self.routes, self.cum, strict=True)):
            a = min(self.along[i], cum[-1] - 1.0)
            j = int(np.searchsorted(cum, a, side="right") - 1)
            f = (a - cum[j]) / max(cum[j + 1] - cum[j], 1e-9)
            p = line[j] + f * (line[j + 1] - line[j])
            d = line[j + 1] - line[j]
            kx, ky = metres_per_degree(p[1])
            dx, dy = d[0] * kx, d[1] * ky
            norm = max(np.hypot(dx, dy), 1e-9)
            off = self.offset[i]
            lon[i] = p[0] - dy / norm * off / kx
            lat[i] = p[1] + dx / norm * off / ky
        noise = self.rng.normal(0.0, 8.0, (2, self.n))
        kx, ky = metres_per_degree(lat)
        return lon + noise[0] / kx, lat + noise[1] / ky

    def batch(self) -> FixCols:
        """The next batch: one fix per truck, 30 s after the previous one."""
        lon, lat = self.positions()
        ts = np.full(self.n, T0 + self.k * STEP_S * 1000, dtype=np.int64)
        self.k += 1
        self.along += 60 / 3.6 * STEP_S
        return FixCols(
            dev=self.dev.copy(),
            ts=ts,
            lon=lon,
            lat=lat,
            speed=np.full(self.n, 60.0),
            battery=np.full(self.n, 80.0),
            seq=np.full(self.n, float(self.k)),
            recv=ts + 200,
        )

    def as_fixes(self, cols: FixCols) -> list[Fix]:
        return [
            Fix(
                device_id=self.ids[i],
                ts=int(cols.ts[i]),
                lat=float(cols.lat[i]),
                lon=float(cols.lon[i]),
                speed_kmh=60.0,
                battery_pct=80.0,
                seq=int(cols.seq[i]),
                received_at=int(cols.recv[i]),
            )
            for i in range(len(cols))
        ]


def baseline(fleet: Fleet, cols: FixCols, sample: int, n_fences: int) -> float:
    """The naive engine on a sample: per fix, in a Python loop, the same work with scalar
    pyproj / shapely calls (setup untimed): GPS-jump distance from the previous fix
    (``Geod.inv``), a projected shapely Point, ``line.distance`` to its route, ``contains``
    for the trip's origin and stops, an STRtree query + ``contains`` of the global fences,
    the stationary-anchor distance, and the rule counters in a dict."""
    geod = Geod(ellps="WGS84")
    to_m = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    idx = list(range(min(sample, fleet.n)))
    lines: dict[int, shapely.LineString] = {}
    own: dict[int, list[shapely.Polygon]] = {}
    for i in idx:
        line = fleet.routes[i]
        x, y = to_m.transform(line[:, 0], line[:, 1])
        lines[i] = shapely.LineString(np.column_stack([x, y]))
        scale = 1 / np.cos(np.radians(line[0, 1]))
        own[i] = []
        for p, r in ((line[0], 300.0), (line[len(line) // 2], 200.0), (line[-1], 200.0)):
            own[i].append(shapely.Point(*to_m.transform(p[0], p[1])).buffer(r * scale))
        for g in [lines[i], *own[i]]:
            shapely.prepare(g)
    rng = np.random.default_rng(5)
    polys = []
    for _ in range(n_fences):
        lon, lat = rng.uniform(REGION[0], REGION[1]), rng.uniform(REGION[2], REGION[3])
        polys.append(shapely.Point(*to_m.transform(lon, lat)).buffer(1_000.0))
    tree = shapely.STRtree(polys)
    # The naive rule state: one dict of counters per device.
    state: dict[int, dict[str, Any]] = {
        i: {
            "prev": (float(cols.lon[i]) - 0.001, float(cols.lat[i])),
            "off": 0,
            "since": None,
            "anchor": (float(cols.lon[i]), float(cols.lat[i])),
            "fast": None,
        }
        for i in idx
    }
    t = time.perf_counter()
    for i in idx:
        lon, lat, ts = float(cols.lon[i]), float(cols.lat[i]), int(cols.ts[i])
        st = state[i]
        _, _, step = geod.inv(st["prev"][0], st["prev"][1], lon, lat)
        if step / STEP_S * 3.6 > 250:
            continue
        st["prev"] = (lon, lat)
        pt = shapely.Point(*to_m.transform(lon, lat))
        dist = lines[i].distance(pt) * np.cos(np.radians(lat))
        in_own = any(f.contains(pt) for f in own[i])
        rest = any(polys[j].contains(pt) for j in tree.query(pt))
        if dist > 500 and not in_own:
            st["off"] += 1
            st["since"] = st["since"] or ts
        else:
            st["off"], st["since"] = 0, None
        _, _, moved = geod.inv(st["anchor"][0], st["anchor"][1], lon, lat)
        if moved > 150 or rest:
            st["anchor"] = (lon, lat)
        if float(cols.speed[i]) > 90:
            st["fast"] = st["fast"] or ts
    return len(idx) / (time.perf_counter() - t)


def late_data(trips: int, fences: int, seed: int, rounds: int = 3, fixes: bool = False) -> dict:
    """Late lock events (or, with ``fixes``, late fixes: the rewind path) vs the same batch
    in order, from identical engine states."""
    rng = np.random.default_rng(seed)
    fleet = Fleet(rng, trips, fences)
    empty = LockCols.empty()
    for _ in range(40):  # 20 min of live batches: the journal holds ~16 checkpoints
        cols = fleet.batch()
        fleet.engine.process_columns(cols, empty, int(cols.recv.max()))
    late_engine = fleet.engine
    ordered_engine = copy.deepcopy(late_engine)
    n_tamper = min(800, trips)
    out: dict[str, list[float]] = {"late": [], "in_order": []}
    alarms = {"late": 0, "in_order": 0}
    for _ in range(rounds):
        last = T0 + (fleet.k - 1) * STEP_S * 1000  # newest ts already processed
        parts = [fleet.batch() for _ in range(3)]
        cols = FixCols.concat(parts)
        now = int(cols.recv.max())
        who = rng.choice(trips, n_tamper, replace=False)
        shift = rng.integers(1_000, 60_001, n_tamper)
        for name, engine, sign in (("late", late_engine, -1), ("in_order", ordered_engine, 1)):
            if fixes:  # one extra fix per chosen truck, where its first fix of the batch is
                extra = parts[0].take(who)
                extra.ts = (last + sign * shift).astype(np.int64)
                extra.seq = np.full(n_tamper, np.nan)
                extra.recv = np.full(n_tamper, now, dtype=np.int64)
                t = time.perf_counter()
                engine.process_columns(FixCols.concat([cols, extra]), empty, now)
                out[name].append(time.perf_counter() - t)
                continue
            events = [
                LockEvent(
                    device_id=fleet.ids[i],
                    ts=int(last + sign * s),
                    event=LockEventType.TAMPER,
                    received_at=now,
                )
                for i, s in zip(who.tolist(), shift.tolist(), strict=True)
            ]
            locks = LockCols.from_events(events, engine.devices)
            t = time.perf_counter()
            res = engine.process_columns(cols, locks, now)
            out[name].append(time.perf_counter() - t)
            alarms[name] += sum(
                isinstance(e, AlarmSignal) and e.type.value == "LOCK_TAMPER" for e in res.events
            )
    late_s, ordered_s = statistics.median(out["late"]), statistics.median(out["in_order"])
    return {
        "trips": trips,
        "batch_messages": len(cols) + n_tamper,
        "late_fixes" if fixes else "late_lock_events": n_tamper,
        "late_batch_s": round(late_s, 3),
        "in_order_batch_s": round(ordered_s, 3),
        "ratio": round(late_s / ordered_s, 1),
        **({} if fixes else {"tamper_alarms": alarms}),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small fleet, < 60 s")
    parser.add_argument("--trips", type=int, default=None)
    parser.add_argument("--fences", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--late-trips", type=int, default=1_400)
    parser.add_argument("--late-only", action="store_true", help="only the late-data figures")
    args = parser.parse_args()
    late = late_data(args.late_trips, args.fences or 1_000, args.seed)
    late["late_fixes"] = late_data(args.late_trips, args.fences or 1_000, args.seed, fixes=True)
    if args.late_only:
        print(json.dumps({"late_data": late}))
        return
    trips = args.trips or (2_000 if args.quick else 10_000)
    fences = args.fences or (1_000 if args.quick else 5_000)
    batches = args.batches or (4 if args.quick else 8)
    rng = np.random.default_rng(args.seed)
    fleet = Fleet(rng, trips, fences)
    engine = fleet.engine
    empty = LockCols.empty()
    alarms: dict[str, int] = {}
    for _ in range(2):  # warm-up: first matches search whole routes, hints settle
        cols = fleet.batch()
        engine.process_columns(cols, empty, int(cols.recv.max()))
    times = []
    for _ in range(batches):
        cols = fleet.batch()
        t = time.perf_counter()
        res = engine.process_columns(cols, empty, int(cols.recv.max()))
        times.append(time.perf_counter() - t)
        for e in res.events:
            if isinstance(e, AlarmSignal):
                alarms[e.type.value] = alarms.get(e.type.value, 0) + 1
    core = trips * batches / sum(times)

    def full_path(position_objects: bool) -> float:
        engine._position_events = position_objects
        spent = []
        for _ in range(max(2, batches // 2)):
            cols = fleet.batch()
            fixes = fleet.as_fixes(cols)
            t = time.perf_counter()
            engine.process(fixes, [], int(cols.recv.max()))
            spent.append(time.perf_counter() - t)
        return trips * len(spent) / sum(spent)

    full = full_path(False)
    full_objects = full_path(True)
    base = baseline(fleet, fleet.batch(), 500 if args.quick else 2_000, fences)
    expected_off = int(fleet.off.sum())
    print(
        json.dumps(
            {
                "fixes_per_s": round(core),
                "full_path_fixes_per_s": round(full),
                "full_path_position_objects_fixes_per_s": round(full_objects),
                "baseline_fixes_per_s": round(base),
                "ratio": round(core / base, 1),
                "full_path_ratio": round(full / base, 1),
                "batch_ms_p50": round(statistics.median(times) * 1000, 1),
                "batch_ms_max": round(max(times) * 1000, 1),
                "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "bench_route_copies_mb": round(
                    sum(r.nbytes + c.nbytes for r, c in zip(fleet.routes, fleet.cum, strict=True))
                    / 2**20
                ),
                "batch_size": trips,
                "batches": batches,
                "n_trips": trips,
                "n_fences": fences,
                "route_vertices_mean": round(float(np.mean([len(r) for r in fleet.routes]))),
                "setup_s": round(fleet.setup_s, 1),
                "alarms": alarms,
                "trucks_off_route": expected_off,
                "late_data": late,
            }
        )
    )


if __name__ == "__main__":
    main()
