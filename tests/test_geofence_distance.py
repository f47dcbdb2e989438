"""distance_m against the exact geodesic (pyproj.Geod), worldwide up to |lat| 80."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from geofence import distance_m, geodesic_m
from geofence.distance import metres_per_degree, wrap_lon

GEOD = Geod(ellps="WGS84")

lons = st.floats(-180.0, 180.0, allow_nan=False)
lats = st.floats(-80.0, 80.0, allow_nan=False)
azimuths = st.floats(0.0, 360.0, allow_nan=False)
separations = st.floats(0.0, np.log10(50_000.0)).map(lambda e: 10.0**e)  # 1 m .. 50 km


@settings(max_examples=400, deadline=None)
@given(lons, lats, azimuths, separations)
def test_distance_m_matches_geodesic(lon: float, lat: float, az: float, dist: float) -> None:
    lon2, lat2, _ = GEOD.fwd(lon, lat, az, dist)
    got = float(distance_m(lon, lat, lon2, lat2))
    assert abs(got - dist) <= max(0.001 * dist, 0.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(lons, lats, azimuths, separations), min_size=1, max_size=50))
def test_distance_m_is_vectorised_and_symmetric(rows: list[tuple[float, ...]]) -> None:
    lon, lat, az, dist = (np.array(c) for c in zip(*rows, strict=True))
    lon2, lat2, _ = GEOD.fwd(lon, lat, az, dist)
    fwd = distance_m(lon, lat, lon2, lat2)
    back = distance_m(lon2, lat2, lon, lat)
    assert fwd.shape == lon.shape
    np.testing.assert_allclose(fwd, back, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(fwd, geodesic_m(lon, lat, lon2, lat2), rtol=1e-3, atol=0.5)


def test_distance_m_broadcasts_a_point_against_many() -> None:
    lon = np.linspace(10.0, 10.1, 7)
    d = distance_m(10.0, 50.0, lon, np.full(7, 50.0))
    assert d.shape == (7,)
    assert d[0] == 0.0
    assert np.all(np.diff(d) > 0)


def test_distance_m_across_the_antimeridian() -> None:
    d = float(distance_m(179.9995, 0.0, -179.9995, 0.0))
    assert d == pytest.approx(float(geodesic_m(179.9995, 0.0, -179.9995, 0.0)), rel=1e-6)
    assert d < 200.0


def test_metres_per_degree_known_values() -> None:
    kx, ky = metres_per_degree(np.array([0.0, 45.0, 60.0]))
    # Standard tables of WGS-84 degree lengths.
    np.testing.assert_allclose(kx, [111_319.49, 78_847.0, 55_800.0], rtol=1e-3)
    np.testing.assert_allclose(ky, [110_574.3, 111_132.0, 111_412.0], rtol=1e-4)


def test_wrap_lon_folds_into_half_open_range() -> None:
    np.testing.assert_allclose(wrap_lon([359.0, -359.0, 180.0, 10.0]), [-1.0, 1.0, -180.0, 10.0])


def test_geodesic_m_keeps_shape() -> None:
    d = geodesic_m(np.zeros((2, 3)), 0.0, 1.0, 0.0)
    assert d.shape == (2, 3)
    np.testing.assert_allclose(d, 111_319.49, rtol=1e-6)
