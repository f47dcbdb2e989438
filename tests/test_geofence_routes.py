"""RouteSet.locate against an exact reference, with good, missing, stale and wrong hints.

Reference: the route is densified along its lon/lat-straight segments (GeoJSON semantics) to
<= 20 m steps, projected into an azimuthal-equidistant projection centred on the fix (distances
from the centre are exact geodesic distances there), and measured with shapely.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod, Proj

from geofence import GeometryError, RouteMatch, RouteSet, distance_m
from geofence.distance import metres_per_degree, wrap_lon

GEOD = Geod(ellps="WGS84")


def tolerance(ref: np.ndarray) -> np.ndarray:
    """The contract's accuracy: 1 % or 5 m, whichever is larger."""
    return np.maximum(5.0, 0.01 * ref)


def densify(line: np.ndarray, step_m: float = 20.0) -> np.ndarray:
    lon = np.unwrap(line[:, 0], period=360.0)
    lat = line[:, 1]
    seg = distance_m(lon[:-1], lat[:-1], lon[1:], lat[1:])
    parts = []
    for i, length in enumerate(seg):
        k = max(1, int(np.ceil(length / step_m)))
        t = np.arange(k) / k
        parts.append(
            np.column_stack(
                [lon[i] + t * (lon[i + 1] - lon[i]), lat[i] + t * (lat[i + 1] - lat[i])]
            )
        )
    parts.append(np.array([[lon[-1], lat[-1]]]))
    return np.concatenate(parts)


def reference_distance(line: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    dense = densify(line)
    out = np.empty(lon.shape[0])
    for i, (x0, y0) in enumerate(zip(lon, lat, strict=True)):
        proj = Proj(proj="aeqd", lat_0=y0, lon_0=x0, ellps="WGS84")
        x, y = proj(dense[:, 0], dense[:, 1])
        geom = shapely.LineString(np.column_stack([x, y])) if len(x) > 1 else shapely.Point(x, y)
        out[i] = shapely.distance(shapely.Point(0.0, 0.0), geom)
    return out


def make_route(seed: int, shape: str) -> np.ndarray:
    """Routes of the kinds that break naive matchers."""
    rng = np.random.default_rng(seed)
    lon0 = rng.uniform(-170.0, 170.0)
    lat0 = rng.uniform(-70.0, 70.0)
    if shape == "road":
        n = int(rng.integers(1, 200))
        steps = 10 ** rng.uniform(0.0, 3.3, n)  # 1 m .. 2 km
        heading = np.cumsum(rng.normal(0.0, 25.0, n)) + rng.uniform(0, 360)
    elif shape == "zigzag":
        n = int(rng.integers(2, 120))
        steps = rng.uniform(20.0, 600.0, n)
        heading = rng.uniform(0, 360) + np.where(np.arange(n) % 2 == 0, 0.0, 170.0)
        heading = heading + rng.normal(0.0, 5.0, n)
    elif shape == "north_south":
        n = int(rng.integers(100, 400))
        lat0 = rng.uniform(-60.0, 55.0)
        steps = rng.uniform(300.0, 2_500.0, n)  # 30 .. 1000 km in all
        heading = rng.choice([0.0, 180.0]) + rng.normal(0.0, 30.0, n)
    elif shape == "out_and_back":
        n = int(rng.integers(5, 100))
        out = rng.uniform(50.0, 800.0, n)
        steps = np.concatenate([out, out[::-1]])
        h = np.cumsum(rng.normal(0.0, 20.0, n)) + rng.uniform(0, 360)
        heading = np.concatenate([h, h[::-1] + 180.0])
    else:  # a closed loop, start and end close together
        n = int(rng.integers(8, 150))
        steps = np.full(n, rng.uniform(30.0, 400.0))
        heading = rng.uniform(0, 360) + np.arange(n) * (360.0 / n)
    pts = [(lon0, lat0)]
    for d, h in zip(steps, heading, strict=True):
        lon, lat, _ = GEOD.fwd(pts[-1][0], pts[-1][1], h, d)
        pts.append((lon, lat))
    line = np.array(pts)
    if rng.random() < 0.5:  # near-duplicate vertices
        k = int(rng.integers(1, max(2, len(line) // 5)))
        at = np.sort(rng.integers(0, len(line), k))
        dup = line[at] + rng.normal(0.0, 1e-9, (k, 2))
        line = np.insert(line, at, dup, axis=0)
    return line


def make_fixes(line: np.ndarray, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(line) - 1, n)
    t = rng.random(n)
    lon = line[i, 0] + t * (line[i + 1, 0] - line[i, 0])
    lat = line[i, 1] + t * (line[i + 1, 1] - line[i, 1])
    off = 10 ** rng.uniform(-1.0, 3.8, n)  # 0.1 m .. 6 km off the line
    off[rng.random(n) < 0.2] = 0.0
    lon, lat, _ = GEOD.fwd(lon, lat, rng.uniform(0, 360, n), off)
    return np.asarray(lon), np.asarray(lat)


SHAPES = st.sampled_from(["road", "zigzag", "north_south", "out_and_back", "loop"])
HINTS = st.sampled_from(["none", "unknown", "exact", "random", "stale", "shifted"])


def make_hints(kind: str, good: np.ndarray, nseg: int, seed: int) -> np.ndarray | None:
    rng = np.random.default_rng(seed)
    n = good.shape[0]
    if kind == "none":
        return None
    if kind == "unknown":
        return np.full(n, -1, dtype=np.int64)
    if kind == "exact":
        return good.copy()
    if kind == "random":
        return rng.integers(-1, nseg, n).astype(np.int64)
    if kind == "stale":
        return good + nseg + rng.integers(0, 10, n)
    return np.clip(good + rng.integers(-40, 41, n), 0, nseg - 1)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), SHAPES, HINTS)
def test_locate_agrees_with_reference(seed: int, shape: str, hint_kind: str) -> None:
    line = make_route(seed, shape)
    routes = RouteSet()
    routes.add("decoy", make_route(seed + 1, "road"))
    slot = routes.add("trip", line)
    lon, lat = make_fixes(line, seed, 25)
    slots = np.full(lon.shape[0], slot, dtype=np.int64)
    first = routes.locate(slots, lon, lat)
    hints = make_hints(hint_kind, first.segment, len(line) - 1, seed)
    match = routes.locate(slots, lon, lat, hints)
    ref = reference_distance(line, lon, lat)
    for m in (first, match):
        err = np.abs(m.distance_m - ref)
        assert np.all(err <= tolerance(ref)), (shape, hint_kind, err.max(), ref[err.argmax()])
        assert np.all((m.segment >= 0) & (m.segment < len(line) - 1))
        assert np.all((m.along_m >= -1e-6) & (m.along_m <= routes.length_m(slot) + 1e-3))
    # The reported segment is the nearest one: the distance to it alone is the distance.
    seg = match.segment
    own = np.array(
        [
            reference_distance(line[s : s + 2], lon[i : i + 1], lat[i : i + 1])[0]
            for i, s in enumerate(seg)
        ]
    )
    assert np.all(np.abs(own - ref) <= tolerance(ref))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), SHAPES)
def test_many_routes_in_one_call(seed: int, shape: str) -> None:
    rng = np.random.default_rng(seed)
    routes = RouteSet()
    lines = [make_route(seed + k, shape if k % 2 else "road") for k in range(5)]
    slot_of = [routes.add(f"trip-{k}", line) for k, line in enumerate(lines)]
    which = rng.integers(0, 5, 40)
    lon = np.empty(40)
    lat = np.empty(40)
    for k in range(5):
        sel = which == k
        lon[sel], lat[sel] = make_fixes(lines[k], seed + k, int(sel.sum()))
    slots = np.array(slot_of)[which]
    match = routes.locate(slots, lon, lat, np.full(40, -1))
    again = routes.locate(slots, lon, lat, match.segment)
    for k in range(5):
        sel = which == k
        ref = reference_distance(lines[k], lon[sel], lat[sel])
        assert np.all(np.abs(match.distance_m[sel] - ref) <= tolerance(ref))
        assert np.all(np.abs(again.distance_m[sel] - ref) <= tolerance(ref))


def test_on_route_fixes_give_along_distance_and_segment() -> None:
    line = np.array([[8.0, 47.0], [8.01, 47.0], [8.01, 47.01], [8.02, 47.01]])
    routes = RouteSet()
    slot = routes.add("t", line)
    seg_len = distance_m(line[:-1, 0], line[:-1, 1], line[1:, 0], line[1:, 1])
    lon = np.array([8.005, 8.01, 8.015, 8.02])
    lat = np.array([47.0, 47.005, 47.01, 47.01])
    m = routes.locate(np.full(4, slot), lon, lat, np.array([0, 0, 2, -1]))
    np.testing.assert_allclose(m.distance_m, 0.0, atol=1e-3)
    np.testing.assert_array_equal(m.segment, [0, 1, 2, 2])
    expect = [
        seg_len[0] / 2,
        seg_len[0] + seg_len[1] / 2,
        seg_len[:2].sum() + seg_len[2] / 2,
        seg_len.sum(),
    ]
    np.testing.assert_allclose(m.along_m, expect, rtol=1e-3)
    assert routes.length_m(slot) == pytest.approx(seg_len.sum())


def test_long_straight_route_far_from_its_centre_latitude() -> None:
    # 1,000 km due north: a single projection at the route's centre would err by percent.
    lat = np.linspace(40.0, 49.0, 10)
    line = np.column_stack([np.full(10, 10.0), lat])
    routes = RouteSet()
    slot = routes.add("long", line)
    lon_f, lat_f, _ = GEOD.fwd(
        np.full(3, 10.0), np.array([40.5, 44.2, 48.9]), np.full(3, 90.0), np.full(3, 3_000.0)
    )
    m = routes.locate(np.full(3, slot), lon_f, lat_f)
    np.testing.assert_allclose(m.distance_m, 3_000.0, rtol=1e-3)


def test_route_across_the_antimeridian() -> None:
    line = np.array([[179.99, -17.0], [-179.99, -17.0], [-179.98, -17.0]])
    routes = RouteSet()
    slot = routes.add("fiji", line)
    m = routes.locate(
        np.array([slot, slot]), np.array([180.0, -179.985]), np.array([-17.001, -17.0])
    )
    assert m.distance_m[0] == pytest.approx(110.6, rel=1e-2)
    assert m.distance_m[1] == pytest.approx(0.0, abs=1e-3)
    assert routes.length_m(slot) < 3_500.0


def test_add_replace_remove_and_slots() -> None:
    routes = RouteSet()
    a = routes.add("a", [[0.0, 0.0], [0.01, 0.0]])
    b = routes.add("b", [[1.0, 1.0], [1.01, 1.0]])
    assert (a, b) == (routes.slot("a"), routes.slot("b"))
    assert a != b
    again = routes.add("a", [[0.0, 0.0], [0.0, 0.02], [0.01, 0.02]])
    assert again == a
    m = routes.locate(np.array([a]), np.array([0.005]), np.array([0.02]), np.array([0]))
    assert m.distance_m[0] == pytest.approx(0.0, abs=1e-3)
    assert m.segment[0] == 1
    routes.remove("b")
    with pytest.raises(GeometryError):
        routes.slot("b")
    with pytest.raises(GeometryError):
        routes.locate(np.array([b]), np.array([1.0]), np.array([1.0]))
    with pytest.raises(GeometryError):
        routes.remove("b")
    c = routes.add("c", [[2.0, 2.0], [2.01, 2.0]])
    assert c not in (a, b)
    assert "a" in routes
    assert len(routes) == 2


@pytest.mark.parametrize(
    "bad",
    [
        [[0.0, 0.0]],
        [],
        [[0.0, 0.0], [np.nan, 1.0]],
        [[0.0, 0.0], [181.0, 1.0]],
        [[0.0, 0.0], [1.0, 91.0]],
        [[0.0, 0.0], [1.0, np.inf]],
        [0.0, 1.0, 2.0],
        [["a", "b"], ["c", "d"]],
    ],
)
def test_bad_routes_are_rejected_with_geometry_error(bad: object) -> None:
    routes = RouteSet()
    with pytest.raises(GeometryError, match="route"):
        routes.add("bad", bad)  # type: ignore[arg-type]
    assert "bad" not in routes


def test_missing_slot_and_bad_fixes_give_nan_not_errors() -> None:
    routes = RouteSet()
    slot = routes.add("t", [[0.0, 0.0], [0.01, 0.0]])
    m = routes.locate(
        np.array([slot, -1, slot]), np.array([0.005, 0.0, np.nan]), np.array([0.0, 0.0, 0.0])
    )
    assert isinstance(m, RouteMatch)
    assert m.distance_m[0] == pytest.approx(0.0, abs=1e-3)
    assert np.isnan(m.distance_m[1:]).all()
    np.testing.assert_array_equal(m.segment, [0, -1, -1])
    with pytest.raises(GeometryError):
        routes.locate(np.array([slot, slot]), np.zeros(3), np.zeros(3))
    empty = routes.locate(np.empty(0, dtype=np.int64), np.empty(0), np.empty(0))
    assert empty.distance_m.shape == (0,)


def test_degenerate_route_of_one_repeated_point() -> None:
    routes = RouteSet()
    slot = routes.add("still", [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]])
    lon, lat, _ = GEOD.fwd(5.0, 5.0, 45.0, 250.0)
    m = routes.locate(np.array([slot]), np.array([lon]), np.array([lat]), np.array([1]))
    assert m.distance_m[0] == pytest.approx(250.0, rel=1e-4)
    assert routes.length_m(slot) == 0.0


def brute_force(line: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The kernel's own distance model over every segment, in float64."""
    kxp, kyp = metres_per_degree(lat[:, None])
    kxv, _ = metres_per_degree(line[None, :, 1])
    x = wrap_lon(line[None, :, 0] - lon[:, None]) * (0.5 * (kxp + kxv))
    y = (line[None, :, 1] - lat[:, None]) * kyp
    ax, ay, bx, by = x[:, :-1], y[:, :-1], x[:, 1:], y[:, 1:]
    dx, dy = bx - ax, by - ay
    den = dx * dx + dy * dy
    t = np.clip(-(ax * dx + ay * dy) / np.where(den > 0, den, 1.0), 0.0, 1.0)
    return np.hypot(ax + t * dx, ay + t * dy).min(axis=1)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), SHAPES, HINTS)
def test_windowed_search_finds_the_global_minimum(seed: int, shape: str, hint_kind: str) -> None:
    """Hints only change how much of the line is read, never the answer (beyond float32)."""
    line = make_route(seed, shape)
    routes = RouteSet()
    slot = routes.add("trip", line)
    rng = np.random.default_rng(seed)
    lon, lat = make_fixes(line, seed, 200)
    slots = np.full(lon.shape[0], slot, dtype=np.int64)
    truth = brute_force(line, lon, lat)
    hints = make_hints(hint_kind, routes.locate(slots, lon, lat).segment, len(line) - 1, seed)
    for h in (hints, rng.integers(0, len(line) - 1, lon.shape[0])):
        m = routes.locate(slots, lon, lat, h)
        err = np.abs(m.distance_m - truth)
        assert np.all(err <= 0.25 + 1e-5 * truth), (err.max(), truth[err.argmax()])


def test_float_hints_with_nan_mean_unknown() -> None:
    routes = RouteSet()
    slot = routes.add("t", [[0.0, 0.0], [0.01, 0.0], [0.02, 0.0]])
    lon = np.array([0.015, 0.015, 0.015])
    lat = np.zeros(3)
    m = routes.locate(np.full(3, slot), lon, lat, np.array([np.nan, 0.0, 1e30]))
    np.testing.assert_array_equal(m.segment, [1, 1, 1])
    np.testing.assert_allclose(m.distance_m, 0.0, atol=1e-3)
    assert routes.located == 3
    assert routes.full_searches == 2  # NaN and the absurd hint; the good one was proven
