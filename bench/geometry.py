"""Throughput of the geometry kernel; prints one JSON object.

Workload (as in shared/notes/performance.md): routes of 1,000-3,000 vertices (segments of
~25-330 m, meandering but not crossing themselves), one truck per route moving along it,
batches of 10,000 fixes (one per truck, 8 m GPS noise, 2 % off route by up to 3 km), each batch
hinted with the segments the previous batch matched. Fences: half circles (100-1,000 m), half
polygons of ~22 vertices, spread over the same region. Baseline: the per-fix shapely loop
(pyproj-projected Point, ``line.distance``) on a sample.

    python bench/geometry.py [--routes 10000] [--fences 5000] [--batch 10000] [--batches 8]
    python bench/geometry.py --accuracy     # errors against pyproj.Geod / an AEQD reference
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import shapely
from pyproj import Geod, Proj, Transformer

from geofence import FenceSet, RouteSet, distance_m
from geofence.distance import metres_per_degree

GEOD = Geod(ellps="WGS84")

REGION = (100.0, 122.0, 22.0, 40.0)  # lon, lon, lat, lat


def make_routes(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    lines = []
    for _ in range(count):
        n = int(rng.integers(1_000, 3_001))
        lon0 = rng.uniform(REGION[0], REGION[1])
        lat0 = rng.uniform(REGION[2], REGION[3])
        step = np.clip(np.exp(rng.normal(np.log(96.0), 0.75, n - 1)), 5.0, 2_000.0)
        # A general direction with a slow meander and local wiggle: roads do not loop.
        slow = np.cumsum(rng.normal(0.0, 0.08, n - 1))
        slow = 0.9 * np.sin(slow)
        head = rng.uniform(0, 2 * np.pi) + slow + rng.normal(0.0, 0.15, n - 1)
        kx, ky = metres_per_degree(lat0)
        lon = lon0 + np.concatenate([[0.0], np.cumsum(step * np.sin(head) / kx)])
        lat = lat0 + np.concatenate([[0.0], np.cumsum(step * np.cos(head) / ky)])
        lines.append(np.column_stack([lon, lat]))
    return lines


def make_fences(rng: np.random.Generator, fences: FenceSet, count: int) -> np.ndarray:
    """Add ``count`` fences; returns their centres (for fixes near them)."""
    kinds = ["depot", "consignee", "rest_area", "risk_zone", "custom"]
    centres = np.empty((count, 2))
    for k in range(count):
        lon = rng.uniform(REGION[0], REGION[1])
        lat = rng.uniform(REGION[2], REGION[3])
        kind = kinds[k % len(kinds)]
        if k % 2 == 0:
            geom = {"type": "Point", "coordinates": [lon, lat]}
            fences.add(f"f{k}", geom, radius_m=float(rng.uniform(100, 1_000)), kind=kind)
        else:
            kx, ky = metres_per_degree(lat)
            ang = np.sort(rng.uniform(0, 2 * np.pi, 21))
            rad = rng.uniform(300, 2_000) * rng.uniform(0.6, 1.0, 21)
            ring = np.column_stack([lon + rad * np.cos(ang) / kx, lat + rad * np.sin(ang) / ky])
            ring = np.vstack([ring, ring[:1]])
            fences.add(f"f{k}", {"type": "Polygon", "coordinates": [ring.tolist()]}, kind=kind)
        centres[k] = lon, lat
    return centres


class Trucks:
    """One truck per route, advancing along it between batches."""

    def __init__(self, rng: np.random.Generator, lines: list[np.ndarray]) -> None:
        self.rng = rng
        self.lines = lines
        self.pos = np.array([rng.integers(0, len(line) - 1) for line in lines], dtype=np.int64)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        slots = rng.choice(len(self.lines), size, replace=False)
        # 10-30 s at 40-90 km/h: a few segments on.
        self.pos[slots] += rng.integers(0, 8, size)
        lon = np.empty(size)
        lat = np.empty(size)
        for k, s in enumerate(slots):
            line = self.lines[s]
            i = min(int(self.pos[s]), len(line) - 2)
            self.pos[s] = i
            t = rng.random()
            lon[k], lat[k] = line[i] + t * (line[i + 1] - line[i])
        kx, ky = metres_per_degree(lat)
        noise = rng.normal(0.0, 8.0, (size, 2))
        off = rng.random(size) < 0.02
        noise[off] += rng.uniform(-3_000, 3_000, (int(off.sum()), 2))
        return slots.astype(np.int64), lon + noise[:, 0] / kx, lat + noise[:, 1] / ky


def shapely_baseline(lines: list[np.ndarray], slots, lon, lat, sample: int) -> float:
    """Per-fix loop: project with pyproj, build a Point, measure ``line.distance``."""
    tr = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    projected = {}
    for k in range(sample):  # lines projected and prepared once, outside the clock
        s = int(slots[k])
        x, y = tr.transform(lines[s][:, 0], lines[s][:, 1])
        projected[s] = shapely.LineString(np.column_stack([x, y]))
        shapely.prepare(projected[s])
    t0 = time.perf_counter()
    for k in range(sample):
        px, py = tr.transform(lon[k], lat[k])
        projected[int(slots[k])].distance(shapely.Point(px, py))
    return sample / (time.perf_counter() - t0)


def accuracy(seed: int) -> dict[str, object]:
    """Errors of distance_m against Geod, and of locate against an exact AEQD reference."""
    rng = np.random.default_rng(seed)
    out: dict[str, object] = {}
    n = 1_000_000
    lon, lat = rng.uniform(-180, 180, n), rng.uniform(-80, 80, n)
    dist = 10 ** rng.uniform(0, np.log10(50_000), n)
    lon2, lat2, _ = GEOD.fwd(lon, lat, rng.uniform(0, 360, n), dist)
    rel = np.abs(distance_m(lon, lat, lon2, lat2) - dist) / dist
    for upto in (500, 5_000, 50_000):
        sel = dist <= upto
        out[f"distance_m_rel_err_upto_{upto}m"] = {
            "max": float(rel[sel].max()),
            "p99": float(np.quantile(rel[sel], 0.99)),
        }
    # locate: long north-south routes (1-2,000 km) and winding ones, fixes 0-20 km off.
    errs, refs = [], []
    for k in range(60):
        m = int(rng.integers(50, 400))
        lon0, lat0 = rng.uniform(-179, 179), rng.uniform(-70, 60)
        step = rng.uniform(500, 5_000, m) if k % 2 else rng.uniform(10, 500, m)
        head = (
            rng.choice([0.0, 180.0]) + rng.normal(0, 20, m)
            if k % 2
            else np.cumsum(rng.normal(0, 40, m))
        )
        pts = [(lon0, lat0)]
        for d, h in zip(step, head, strict=True):
            x, y, _ = GEOD.fwd(pts[-1][0], pts[-1][1], h, d)
            pts.append((x, y))
        line = np.array(pts)
        routes = RouteSet()
        slot = routes.add("r", line)
        i = rng.integers(0, m, 20)
        t = rng.random(20)
        fx = line[i, 0] + t * (line[i + 1, 0] - line[i, 0])
        fy = line[i, 1] + t * (line[i + 1, 1] - line[i, 1])
        fx, fy, _ = GEOD.fwd(fx, fy, rng.uniform(0, 360, 20), 10 ** rng.uniform(0, 4.3, 20))
        got = routes.locate(np.full(20, slot), fx, fy).distance_m
        # Reference: the line densified along its lon/lat-straight segments to <= 20 m, in an
        # azimuthal-equidistant projection centred on the fix (exact distances from there).
        seg = distance_m(line[:-1, 0], line[:-1, 1], line[1:, 0], line[1:, 1])
        parts = [np.linspace(0, 1, max(2, int(seg[j] / 20) + 1))[:, None] for j in range(m)]
        dense = np.concatenate([line[j] + f * (line[j + 1] - line[j]) for j, f in enumerate(parts)])
        for g, x0, y0 in zip(got, fx, fy, strict=True):
            px, py = Proj(proj="aeqd", lat_0=y0, lon_0=x0, ellps="WGS84")(dense[:, 0], dense[:, 1])
            ref = shapely.distance(
                shapely.Point(0, 0), shapely.LineString(np.column_stack([px, py]))
            )
            errs.append(abs(g - ref))
            refs.append(ref)
    errs_a, refs_a = np.array(errs), np.array(refs)
    rel = errs_a / np.maximum(refs_a, 1.0)
    out["locate_vs_aeqd"] = {
        "fixes": int(errs_a.size),
        "max_abs_err_m": float(errs_a.max()),
        "p99_abs_err_m": float(np.quantile(errs_a, 0.99)),
        "max_rel_err": float(rel.max()),
        "max_rel_err_beyond_1km": float(rel[refs_a > 1_000].max()),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--fences", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--accuracy", action="store_true", help="measure errors, not speed")
    args = ap.parse_args()
    if args.accuracy:
        print(json.dumps(accuracy(args.seed), indent=1))
        return
    rng = np.random.default_rng(args.seed)
    batch = min(args.batch, args.routes)

    lines = make_routes(rng, args.routes)
    routes = RouteSet()
    t0 = time.perf_counter()
    for k, line in enumerate(lines):
        routes.add(f"trip-{k}", line)
    add_s = time.perf_counter() - t0

    trucks = Trucks(rng, lines)
    hints = np.full(args.routes, -1, np.int64)
    slots, lon, lat = trucks.batch(batch)
    t0 = time.perf_counter()
    m = routes.locate(slots, lon, lat, hints[slots])
    cold = batch / (time.perf_counter() - t0)
    hints[slots] = m.segment
    located, full = routes.located, routes.full_searches
    warm = []
    for _ in range(args.batches):
        slots, lon, lat = trucks.batch(batch)
        t0 = time.perf_counter()
        m = routes.locate(slots, lon, lat, hints[slots])
        warm.append(batch / (time.perf_counter() - t0))
        hints[slots] = m.segment
    baseline = shapely_baseline(lines, slots, lon, lat, min(2_000, batch))

    fences = FenceSet()
    t0 = time.perf_counter()
    centres = make_fences(rng, fences, args.fences)
    fence_add_s = time.perf_counter() - t0
    # Half the fixes spread over the region, half within ~2 km of a fence centre.
    flon = rng.uniform(REGION[0], REGION[1], batch)
    flat = rng.uniform(REGION[2], REGION[3], batch)
    near = rng.random(batch) < 0.5
    pick = centres[rng.integers(0, len(centres), int(near.sum()))]
    flon[near] = pick[:, 0] + rng.normal(0, 0.01, len(pick))
    flat[near] = pick[:, 1] + rng.normal(0, 0.01, len(pick))
    fences.query(flon[:10], flat[:10])  # builds the index
    q = []
    pairs = 0
    for _ in range(args.batches):
        # Fixes near fences too, not only uniformly spread ones.
        t0 = time.perf_counter()
        fi, _ = fences.query(flon, flat)
        q.append(batch / (time.perf_counter() - t0))
        pairs = int(fi.size)
        flon = flon + rng.normal(0, 0.001, batch)  # trucks move ~100 m between batches
        flat = flat + rng.normal(0, 0.001, batch)

    print(json.dumps({
        "routes": args.routes,
        "route_vertices": int(sum(len(line) for line in lines)),
        "route_add_s": round(add_s, 2),
        "batch": batch,
        "locate_cold_no_hints_fixes_per_s": round(cold),
        "locate_hinted_full_search_share": round(
            (routes.full_searches - full) / (routes.located - located), 4
        ),
        "locate_hinted_fixes_per_s_median": round(float(np.median(warm))),
        "locate_hinted_fixes_per_s_best": round(float(np.max(warm))),
        "shapely_per_fix_baseline_fixes_per_s": round(baseline),
        "speedup_vs_baseline": round(float(np.median(warm)) / baseline, 1),
        "fences": args.fences,
        "fence_add_s": round(fence_add_s, 2),
        "fence_query_fixes_per_s_median": round(float(np.median(q))),
        "fence_pairs_in_last_batch": pairs,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
