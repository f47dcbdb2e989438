"""FenceSet against shapely and pyproj.Geod references: membership, look-up, kinds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod, Proj

from geofence import FenceKind, FenceSet, GeometryError
from geofence.distance import metres_per_degree
from geofence.fences import PENDING_LIMIT

GEOD = Geod(ellps="WGS84")


def star_polygon(rng: np.random.Generator, lon: float, lat: float, size_m: float) -> list:
    """A simple (star-shaped) ring of 4-30 vertices around (lon, lat), GeoJSON order."""
    n = int(rng.integers(4, 31))
    # Increasing angles with gaps below 180°, so the centre sees every edge: no crossings.
    ang = (np.arange(n) + rng.uniform(0.0, 0.9, n)) * (2 * np.pi / n)
    rad = size_m * rng.uniform(0.2, 1.0, n)
    kx, ky = metres_per_degree(lat)
    ring = np.column_stack([lon + rad * np.cos(ang) / kx, lat + rad * np.sin(ang) / ky])
    return [[*p] for p in np.vstack([ring, ring[:1]])]


def points_around(rng, lon, lat, reach_m, n):
    lon2, lat2, _ = GEOD.fwd(
        np.full(n, lon), np.full(n, lat), rng.uniform(0, 360, n), rng.uniform(0, reach_m, n)
    )
    return np.asarray(lon2), np.asarray(lat2)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_circles_match_the_geodesic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-180, 180), rng.uniform(-80, 80)
    radius = float(10 ** rng.uniform(1, 4.3))  # 10 m .. 20 km
    fences = FenceSet()
    slot = fences.add("c", {"type": "Point", "coordinates": [lon, lat]}, radius_m=radius)
    plon, plat = points_around(rng, lon, lat, 2 * radius, 300)
    d = np.asarray(GEOD.inv(np.full(300, lon), np.full(300, lat), plon, plat)[2])
    clear = np.abs(d - radius) > 1e-4 * radius  # distance_m agrees with Geod to ~1e-5
    expect = d <= radius
    got = fences.contains(np.full(300, slot), plon, plat)
    np.testing.assert_array_equal(got[clear], expect[clear])
    fix, fence = fences.query(plon, plat)
    np.testing.assert_array_equal(
        fix[np.isin(fix, np.flatnonzero(clear))], np.flatnonzero(expect & clear)
    )
    assert np.all(fence == slot)
    dist = fences.distance_to(np.full(300, slot), plon, plat)
    assert np.all(np.abs(dist - np.maximum(d - radius, 0)) <= np.maximum(0.05, 2e-4 * d))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_polygons_match_shapely_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-179, 179), rng.uniform(-80, 80)
    size = float(10 ** rng.uniform(1.5, 4.5))  # 30 m .. 30 km: several grid levels
    ring = star_polygon(rng, lon, lat, size)
    geom = {"type": "Polygon", "coordinates": [ring]}
    fences = FenceSet()
    slot = fences.add("p", geom, kind="risk_zone")
    poly = shapely.geometry.shape(geom)
    plon, plat = points_around(rng, lon, lat, 1.3 * size, 400)
    # Vertices and edge midpoints: the boundary counts as inside.
    r = np.array(ring)
    plon = np.concatenate([plon, r[:, 0], (r[1:, 0] + r[:-1, 0]) / 2])
    plat = np.concatenate([plat, r[:, 1], (r[1:, 1] + r[:-1, 1]) / 2])
    expect = shapely.intersects_xy(poly, plon, plat)
    assert expect[400 : 400 + len(r)].all()
    got = fences.contains(np.full(plon.size, slot), plon, plat)
    np.testing.assert_array_equal(got, expect)
    fix, fence = fences.query(plon, plat)
    np.testing.assert_array_equal(fix, np.flatnonzero(expect))
    assert np.all(fence == slot)
    assert fences.query(plon, plat, kinds=["depot"])[0].size == 0


def reference_polygon_distance(poly, lon, lat):
    out = []
    for x0, y0 in zip(lon, lat, strict=True):
        proj = Proj(proj="aeqd", lat_0=y0, lon_0=x0, ellps="WGS84")
        rings = []
        for ring in shapely.get_rings(shapely.get_parts(poly)):
            c = shapely.get_coordinates(shapely.segmentize(ring, 2e-4))
            x, y = proj(c[:, 0], c[:, 1])
            rings.append(shapely.LineString(np.column_stack([x, y])))
        inside = shapely.intersects_xy(poly, x0, y0)
        out.append(0.0 if inside else min(r.distance(shapely.Point(0, 0)) for r in rings))
    return np.array(out)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_polygon_distance_to_boundary(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-179, 179), rng.uniform(-75, 75)
    size = float(10 ** rng.uniform(2, 3.7))
    ring = star_polygon(rng, lon, lat, size)
    fences = FenceSet()
    slot = fences.add("p", {"type": "Polygon", "coordinates": [ring]})
    plon, plat = points_around(rng, lon, lat, 3 * size, 20)
    got = fences.distance_to(np.full(20, slot), plon, plat)
    ref = reference_polygon_distance(shapely.Polygon(ring), plon, plat)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=0.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_query_equals_brute_force_through_adds_replacements_and_removals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fences = FenceSet()
    kinds = [k.value for k in FenceKind]
    centre = (rng.uniform(-170, 170), rng.uniform(-70, 70))
    live: dict[str, int] = {}
    plon, plat = points_around(rng, *centre, 20_000, 1_500)
    for step in range(3 * PENDING_LIMIT):
        key = f"f{int(rng.integers(0, 2 * PENDING_LIMIT))}"
        action = rng.random()
        if action < 0.15 and key in live:
            fences.remove(key)
            del live[key]
        else:
            flon, flat = points_around(rng, *centre, 18_000, 1)
            if action < 0.55:
                geom = {"type": "Point", "coordinates": [float(flon[0]), float(flat[0])]}
            else:
                geom = {
                    "type": "Polygon",
                    "coordinates": [
                        star_polygon(rng, float(flon[0]), float(flat[0]), rng.uniform(100, 9_000))
                    ],
                }
            live[key] = fences.add(
                key,
                geom,
                radius_m=float(rng.uniform(50, 6_000)),
                kind=kinds[int(rng.integers(0, len(kinds)))],
            )
        if step % 17 == 0 or step == 3 * PENDING_LIMIT - 1:
            want_kinds = None if step % 2 else kinds[: 1 + step % len(kinds)]
            fix, slot = fences.query(plon, plat, kinds=want_kinds)
            pairs = set(zip(fix.tolist(), slot.tolist(), strict=True))
            expect = set()
            for s in live.values():
                if want_kinds is not None and fences.kind(s) not in want_kinds:
                    continue
                inside = fences.contains(np.full(plon.size, s), plon, plat)
                expect |= {(int(i), s) for i in np.flatnonzero(inside)}
            assert pairs == expect
            assert np.all(np.diff(fix) >= 0)


def test_polygon_with_hole_and_multipolygon() -> None:
    outer = [[0, 0], [0.02, 0], [0.02, 0.02], [0, 0.02], [0, 0]]
    hole = [[0.005, 0.005], [0.015, 0.005], [0.015, 0.015], [0.005, 0.015], [0.005, 0.005]]
    far = [[1, 1], [1.01, 1], [1.01, 1.01], [1, 1.01], [1, 1]]
    fences = FenceSet()
    s = fences.add(
        "m", {"type": "MultiPolygon", "coordinates": [[outer, hole], [far]]}, kind="depot"
    )
    lon = np.array([0.001, 0.01, 1.005, 0.005, 0.5])
    lat = np.array([0.001, 0.01, 1.005, 0.01, 0.5])
    np.testing.assert_array_equal(
        fences.contains(np.full(5, s), lon, lat), [True, False, True, True, False]
    )
    fix, slot = fences.query(lon, lat, kinds={"depot"})
    np.testing.assert_array_equal(fix, [0, 2, 3])
    np.testing.assert_array_equal(slot, [s, s, s])
    assert fences.kind(s) == "depot"
    d = fences.distance_to(np.full(5, s), lon, lat)
    assert d[0] == 0.0
    assert d[1] == pytest.approx(0.005 * 110_574, rel=1e-2)  # to the hole's edge


def test_circle_boundary_counts_as_inside_and_antimeridian() -> None:
    fences = FenceSet()
    s = fences.add("dateline", {"type": "Point", "coordinates": [179.999, -16.5]}, radius_m=500)
    lon, lat, _ = GEOD.fwd(
        np.full(4, 179.999),
        np.full(4, -16.5),
        np.array([90, 90, 270, 0.0]),
        np.array([499.99, 500.5, 499.0, 499.9]),
    )
    got = fences.contains(np.full(4, s), lon, lat)
    np.testing.assert_array_equal(got, [True, False, True, True])
    assert lon[0] < -179.0  # across the antimeridian
    np.testing.assert_array_equal(fences.query(lon, lat)[0], [0, 2, 3])


def test_slot_minus_one_bad_fixes_and_unknown_slots() -> None:
    fences = FenceSet()
    s = fences.add("c", {"type": "Point", "coordinates": [10.0, 10.0]})
    got = fences.contains(
        np.array([-1, s, s]), np.array([10.0, np.nan, 10.0]), np.array([10.0, 10.0, 10.0])
    )
    np.testing.assert_array_equal(got, [False, False, True])
    fix, _ = fences.query(np.array([np.nan, 10.0]), np.array([10.0, 10.0]))
    np.testing.assert_array_equal(fix, [1])
    with pytest.raises(GeometryError):
        fences.contains(np.array([s + 1]), np.array([0.0]), np.array([0.0]))
    fences.remove("c")
    with pytest.raises(GeometryError):
        fences.contains(np.array([s]), np.array([10.0]), np.array([10.0]))
    with pytest.raises(GeometryError):
        fences.kind(s)
    assert fences.query(np.array([10.0]), np.array([10.0]))[0].size == 0
    assert "c" not in fences and len(fences) == 0


def test_replace_keeps_slot_and_takes_new_shape() -> None:
    fences = FenceSet()
    a = fences.add("a", {"type": "Point", "coordinates": [0.0, 0.0]}, radius_m=100)
    fences.query(np.zeros(1), np.zeros(1))  # grid built with the old shape
    b = fences.add("a", {"type": "Point", "coordinates": [1.0, 1.0]}, radius_m=100, kind="stop")
    assert a == b
    fix, slot = fences.query(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    np.testing.assert_array_equal(fix, [1])
    np.testing.assert_array_equal(slot, [a])
    assert fences.kind(a) == "stop"
    c = fences.add("c", shapely.Point(2.0, 2.0), radius_m=50)
    assert c != a


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "unsupported"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
            "invalid polygon",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "GeoJSON|invalid"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [0, 1], [0, 0]]]}, "lon must"),
        ({"type": "Point", "coordinates": [0, 95]}, "lon must"),
        ({"type": "Point", "coordinates": [float("nan"), 0]}, "finite"),
        ({"type": "Point", "coordinates": ["a", "b"]}, "malformed|GeoJSON"),
        ({"type": "Polygon", "coordinates": []}, "empty"),
        (
            {"type": "Polygon", "coordinates": [[[-170, 0], [170, 0], [170, 1], [-170, 0]]]},
            "antimeridian",
        ),
        ({"coordinates": [0, 0]}, "unsupported"),
        ("POINT (0 0)", "GeoJSON dict"),
        (shapely.LineString([(0, 0), (1, 1)]), "unsupported"),
    ],
)
def test_bad_geometry_is_a_clear_geometry_error(geometry: object, message: str) -> None:
    fences = FenceSet()
    with pytest.raises(GeometryError, match=message):
        fences.add("bad", geometry)  # type: ignore[arg-type]
    assert "bad" not in fences


@pytest.mark.parametrize("radius", [0.0, -5.0, float("nan"), float("inf"), "wide", None])
def test_bad_radius(radius: object) -> None:
    with pytest.raises(GeometryError, match="radius_m"):
        FenceSet().add("c", {"type": "Point", "coordinates": [0, 0]}, radius_m=radius)  # type: ignore[arg-type]


def test_unknown_kind_lists_the_valid_ones() -> None:
    fences = FenceSet()
    with pytest.raises(GeometryError, match="rest_area"):
        fences.add("c", {"type": "Point", "coordinates": [0, 0]}, kind="parking")
    fences.add("c", {"type": "Point", "coordinates": [0, 0]})
    with pytest.raises(GeometryError, match="valid"):
        fences.query(np.zeros(1), np.zeros(1), kinds=["parking"])


def test_geojson_feature_and_large_fences_use_coarse_levels() -> None:
    fences = FenceSet()
    big = {
        "type": "Feature",
        "properties": {},
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [30, 0], [30, 20], [0, 20], [0, 0]]],
        },
    }
    s = fences.add("big", big, kind="risk_zone")
    pole = fences.add("pole", {"type": "Point", "coordinates": [0, 89.99]}, radius_m=5_000)
    lon = np.array([15.0, 29.999, 31.0, 120.0])
    lat = np.array([10.0, 19.999, 10.0, 89.99])
    fix, slot = fences.query(lon, lat)
    np.testing.assert_array_equal(fix, [0, 1, 3])
    np.testing.assert_array_equal(slot, [s, s, pole])
