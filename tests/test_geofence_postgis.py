"""The independent oracle: RouteSet and FenceSet against PostGIS geography in a real database.

Route distance: ``ST_Distance(geography, geography)`` (spheroid). Circles: ``ST_DWithin`` on
geography. Polygons: ``ST_Covers`` on geography. PostGIS draws geography edges as great-circle
arcs while GeoJSON (and geofence) draws them straight in lon/lat; with segments of at most
~1 km the two differ by millimetres, and cases within 1 % / 5 m of a fence boundary are left
out as ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pyproj import Geod

from geofence import FenceSet, RouteSet
from geofence.distance import metres_per_degree

pytestmark = pytest.mark.services

GEOD = Geod(ellps="WGS84")
RNG_SEED = 20261122


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        yield conn


def wkt_line(line: np.ndarray) -> str:
    return "LINESTRING(" + ",".join(f"{x!r} {y!r}" for x, y in line.tolist()) + ")"


def wkt_polygon(ring: np.ndarray) -> str:
    return "POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in ring.tolist()) + "))"


def random_route(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(20, 400))
    lon0, lat0 = rng.uniform(-179.0, 179.0), rng.uniform(-70.0, 70.0)
    steps = rng.uniform(5.0, 1_000.0, n)
    heading = np.cumsum(rng.normal(0.0, 30.0, n)) + rng.uniform(0, 360)
    lon, lat = [lon0], [lat0]
    for d, h in zip(steps, heading, strict=True):
        x, y, _ = GEOD.fwd(lon[-1], lat[-1], h, d)
        lon.append(x)
        lat.append(y)
    return np.column_stack([lon, lat])


def fixes_near(rng: np.random.Generator, line: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    i = rng.integers(0, len(line) - 1, n)
    t = rng.random(n)
    lon = line[i, 0] + t * (line[i + 1, 0] - line[i, 0])
    lat = line[i, 1] + t * (line[i + 1, 1] - line[i, 1])
    off = 10 ** rng.uniform(-1, 4, n)  # 0.1 m .. 10 km
    lon, lat, _ = GEOD.fwd(lon, lat, rng.uniform(0, 360, n), off)
    return np.asarray(lon), np.asarray(lat)


def test_route_distance_matches_postgis(db: psycopg.Connection) -> None:
    rng = np.random.default_rng(RNG_SEED)
    routes = RouteSet()
    db.execute("CREATE TABLE route (slot int PRIMARY KEY, geog geography(LineString, 4326))")
    lines = [random_route(rng) for _ in range(30)]
    slot_list, lon_list, lat_list = [], [], []
    with db.cursor() as cur:
        for k, line in enumerate(lines):
            slot = routes.add(f"trip-{k}", line)
            cur.execute(
                "INSERT INTO route VALUES (%s, ST_GeogFromText(%s))", (slot, wkt_line(line))
            )
            lon, lat = fixes_near(rng, line, 100)
            slot_list.append(np.full(100, slot))
            lon_list.append(lon)
            lat_list.append(lat)
    slots = np.concatenate(slot_list)
    lon = np.concatenate(lon_list)
    lat = np.concatenate(lat_list)
    rows = db.execute(
        """SELECT ST_Distance(r.geog, ST_SetSRID(ST_MakePoint(f.lon, f.lat), 4326)::geography)
           FROM unnest(%s::int[], %s::float8[], %s::float8[]) WITH ORDINALITY
                AS f(slot, lon, lat, i)
           JOIN route r USING (slot) ORDER BY f.i""",
        (slots.tolist(), lon.tolist(), lat.tolist()),
    ).fetchall()
    oracle = np.array([r[0] for r in rows])
    first = routes.locate(slots, lon, lat)
    wrong_hints = rng.integers(-1, 400, slots.shape[0])
    for match in (
        first,
        routes.locate(slots, lon, lat, first.segment),
        routes.locate(slots, lon, lat, wrong_hints),
    ):
        err = np.abs(match.distance_m - oracle)
        allowed = np.maximum(5.0, 0.01 * oracle)
        assert np.all(err <= allowed), (err.max(), oracle[err.argmax()])
        # Far tighter in practice: the 1 % / 5 m contract has room to spare.
        assert np.median(err) < 0.05


def test_fences_match_postgis(db: psycopg.Connection) -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    fences = FenceSet()
    db.execute(
        """CREATE TABLE fence (slot int PRIMARY KEY, circle bool, radius float8,
                               geog geography(Geometry, 4326))"""
    )
    centre_lon, centre_lat = rng.uniform(-170, 170), rng.uniform(-65, 65)
    with db.cursor() as cur:
        for k in range(200):
            lon, lat, _ = GEOD.fwd(
                centre_lon, centre_lat, rng.uniform(0, 360), rng.uniform(0, 30_000)
            )
            if k % 2 == 0:
                radius = float(rng.uniform(50.0, 5_000.0))
                slot = fences.add(
                    f"c{k}",
                    {"type": "Point", "coordinates": [lon, lat]},
                    radius_m=radius,
                    kind="depot",
                )
                cur.execute(
                    "INSERT INTO fence VALUES (%s, true, %s, ST_MakePoint(%s, %s)::geography)",
                    (slot, radius, lon, lat),
                )
            else:
                m = int(rng.integers(4, 25))
                ang = (np.arange(m) + rng.uniform(0, 0.9, m)) * (2 * np.pi / m)
                rad = rng.uniform(100.0, 3_000.0) * rng.uniform(0.3, 1.0, m)
                kx, ky = metres_per_degree(lat)
                ring = np.column_stack([lon + rad * np.cos(ang) / kx, lat + rad * np.sin(ang) / ky])
                ring = np.vstack([ring, ring[:1]])
                slot = fences.add(
                    f"p{k}", {"type": "Polygon", "coordinates": [ring.tolist()]}, kind="rest_area"
                )
                cur.execute(
                    "INSERT INTO fence VALUES (%s, false, NULL, ST_GeogFromText(%s))",
                    (slot, wkt_polygon(ring)),
                )
    db.execute("CREATE INDEX ON fence USING gist (geog)")
    n = 2_500
    lon, lat, _ = GEOD.fwd(
        np.full(n, centre_lon),
        np.full(n, centre_lat),
        rng.uniform(0, 360, n),
        rng.uniform(0, 33_000, n),
    )
    lon, lat = np.asarray(lon), np.asarray(lat)
    rows = db.execute(
        """WITH f AS (
             SELECT i - 1 AS i, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography AS g
             FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS u(lon, lat, i))
           SELECT f.i, z.slot,
                  CASE WHEN z.circle THEN ST_DWithin(z.geog, f.g, z.radius)
                       ELSE ST_Covers(z.geog, f.g) END AS inside,
                  CASE WHEN z.circle THEN abs(ST_Distance(z.geog, f.g) - z.radius)
                       ELSE ST_Distance(ST_Boundary(z.geog::geometry)::geography, f.g)
                  END AS to_edge,
                  z.radius
           FROM f JOIN fence z ON ST_DWithin(z.geog, f.g, coalesce(z.radius, 0) + 100)""",
        (lon.tolist(), lat.tolist()),
    ).fetchall()
    inside = {(i, s) for i, s, ins, _, _ in rows if ins}
    # Near the boundary (1 % of the radius or 5 m) membership is within the contract's slack.
    ambiguous = {(i, s) for i, s, _, edge, r in rows if edge < max(5.0, 0.01 * (r or 0.0))}
    fix, slot = fences.query(lon, lat)
    got = set(zip(fix.tolist(), slot.tolist(), strict=True))
    assert got - ambiguous == inside - ambiguous
    assert len(inside - ambiguous) > 200  # the oracle saw plenty of hits
    kinds_fix, kinds_slot = fences.query(lon, lat, kinds=["rest_area"])
    polys = {(i, s) for i, s in got if fences.kind(s) == "rest_area"}
    assert set(zip(kinds_fix.tolist(), kinds_slot.tolist(), strict=True)) == polys
    # Per-pair membership and distance to circle edges, on the pairs PostGIS looked at.
    pair_fix = np.array([r[0] for r in rows])
    pair_slot = np.array([r[1] for r in rows])
    clear = np.array([(i, s) not in ambiguous for i, s in zip(pair_fix, pair_slot, strict=True)])
    expect = np.array([r[2] for r in rows])
    got_in = fences.contains(pair_slot, lon[pair_fix], lat[pair_fix])
    np.testing.assert_array_equal(got_in[clear], expect[clear])
    circ = np.array([r[4] is not None for r in rows]) & ~expect
    edge = np.array([r[3] for r in rows])
    d = fences.distance_to(pair_slot[circ], lon[pair_fix[circ]], lat[pair_fix[circ]])
    np.testing.assert_allclose(d, edge[circ], rtol=1e-3, atol=0.5)
    # Polygons: distance from outside to the boundary (one call over many polygons, no loop
    # over fences), and the exit test of fence membership (beyond a 50 m margin).
    poly = np.array([r[4] is None for r in rows]) & ~expect & clear
    assert poly.sum() > 100
    d = fences.distance_to(pair_slot[poly], lon[pair_fix[poly]], lat[pair_fix[poly]])
    np.testing.assert_allclose(d, edge[poly], rtol=1e-3, atol=0.5)
    margin = 50.0
    far = ~expect & (edge > margin)
    sure = clear & (np.abs(edge - margin) > 5.0)
    got_far = fences.beyond(pair_slot, lon[pair_fix], lat[pair_fix], margin)
    np.testing.assert_array_equal(got_far[sure], far[sure])
    assert far[sure].sum() > 100 and (~far[sure] & ~expect[sure]).sum() > 10
