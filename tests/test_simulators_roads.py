"""Road atlas, local frame, paths and detours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from hypothesis import given
from hypothesis import strategies as st
from pyproj import Geod, Transformer

from simulators.errors import ScenarioError
from simulators.roads import (
    DATA_FILE,
    ORIGIN_RADIUS_M,
    STOP_RADIUS_M,
    LocalFrame,
    RoadAtlas,
    default_atlas,
    detour_lonlat,
    make_path,
)

GEOD = Geod(ellps="WGS84")


def test_committed_data_is_small_and_attributed() -> None:
    assert DATA_FILE.stat().st_size < 1_000_000
    doc = json.loads(DATA_FILE.read_text())
    assert "CC BY 4.0" in doc["source"] and "not confirmed" in doc["source"]
    assert (DATA_FILE.parent / "README").read_text().count("NOT CONFIRMED") == 1
    assert len(doc["shapes"]) == 52


def test_atlas_roads_are_real_and_long() -> None:
    atlas = default_atlas()
    assert len(atlas) == 52
    lengths = [r.length_m for r in atlas.roads]
    assert min(lengths) > 5_000 and max(lengths) > 40_000
    for road in atlas.roads:
        # Cairns, Queensland
        assert road.lat.min() > -17.3 and road.lat.max() < -16.6
        assert road.lon.min() > 145.6 and road.lon.max() < 145.9
        assert road.length_m == pytest.approx(GEOD.line_length(road.lon, road.lat), rel=1e-9)
        first, last = road.stops[0], road.stops[-1]
        assert road.enters_once(first.lon, first.lat, ORIGIN_RADIUS_M)
        assert road.enters_once(last.lon, last.lat, STOP_RADIUS_M)
        assert road.cruise_kmh.min() >= 30.0 and road.cruise_kmh.max() <= 80.0
        for c in road.consignee_candidates:
            assert 2_000 <= road.s[c.vertex] <= road.length_m - 2_000
    with pytest.raises(ScenarioError):
        atlas.get("no-such-shape")
    assert atlas.get(atlas.roads[3].shape_id) is atlas.roads[3]


def test_atlas_loads_from_a_path() -> None:
    assert len(RoadAtlas.load(DATA_FILE)) == len(default_atlas())


@given(
    lat0=st.floats(-60, 60),
    lon0=st.floats(-170, 170),
    dx=st.floats(-20_000, 20_000),
    dy=st.floats(-20_000, 20_000),
)
def test_local_frame_round_trips_and_measures(
    lat0: float, lon0: float, dx: float, dy: float
) -> None:
    fr = LocalFrame.around(lat0, lon0)
    lon, lat = fr.to_lonlat(np.array([dx]), np.array([dy]))
    x, y = fr.to_xy(lon, lat)
    assert x[0] == pytest.approx(dx, abs=1e-6) and y[0] == pytest.approx(dy, abs=1e-6)
    _, _, d = GEOD.inv(lon0, lat0, lon[0], lat[0])
    # local radii: well within 1 % up to 20 km from the centre
    assert np.hypot(dx, dy) == pytest.approx(d, rel=0.01, abs=0.5)


def test_path_is_dense_and_keeps_vertices() -> None:
    road = default_atlas().roads[0]
    p = road.path
    assert np.diff(p.s).max() <= 100.0 + 1e-6 and np.diff(p.s).min() >= 0.5
    # repeated GTFS points (< 0.5 m apart) are dropped; every road vertex maps to a path vertex
    assert p.length_m == pytest.approx(road.length_m, abs=5.0)
    _, _, d = GEOD.inv(p.lon[p.source_index], p.lat[p.source_index], road.lon, road.lat)
    assert np.max(d) < 1.0
    assert (p.limit_kmh >= 12.0).all() and (p.limit_kmh <= 80.0).all()
    lon, _, bearing = p.locate(np.array([0.0, p.length_m / 2, p.length_m, p.length_m + 99]))
    assert lon[0] == road.lon[0] and lon[-1] == lon[-2] == road.lon[-1]
    assert ((bearing >= 0) & (bearing < 360)).all()


def test_sharp_corner_slows_the_truck() -> None:
    fr = LocalFrame.around(-16.9, 145.7)
    # 1 km east, then a right angle, 1 km north
    lon, lat = fr.to_lonlat(np.array([0.0, 1000.0, 1000.0]), np.array([0.0, 0.0, 1000.0]))
    p = make_path(lon, lat, np.full(3, 80.0), fr)
    corner = int(p.source_index[1])
    assert p.limit_kmh[corner] < 30.0
    assert p.limit_kmh[corner - 5] == pytest.approx(80.0)


def test_detour_runs_beside_the_road() -> None:
    road = default_atlas().roads[0]
    a, b = road.vertex_at(10_000), road.vertex_at(11_500)
    lon, lat = detour_lonlat(road, a, b, 1_000.0, +1)
    d = road.distance_m(lon, lat)
    assert (d > 600).all()
    with pytest.raises(ScenarioError):
        detour_lonlat(road, a, a, 1_000.0, +1)


def test_distance_matches_utm() -> None:
    """The local frame's distances agree with a proper projection (UTM 55S) within 1 %."""
    utm = Transformer.from_crs("EPSG:4326", "EPSG:32755", always_xy=True)
    for road in default_atlas().roads[::7]:
        fr = road.frame
        x, y = road.xy
        rng = np.random.default_rng(len(x))
        i = rng.integers(0, len(x), 20)
        px = x[i] + rng.uniform(-2_000, 2_000, 20)
        py = y[i] + rng.uniform(-2_000, 2_000, 20)
        lon, lat = fr.to_lonlat(px, py)
        line = shapely.LineString(np.column_stack(utm.transform(road.lon, road.lat)))
        d_utm = shapely.distance(shapely.points(*utm.transform(lon, lat)), line)
        # UTM's own scale error here is < 0.1 %
        np.testing.assert_allclose(road.distance_m(lon, lat), d_utm, rtol=0.01, atol=1.0)
