"""Point-to-point distances on the WGS-84 ellipsoid, vectorised over numpy arrays.

``distance_m`` is the fast one used on the hot path: an equirectangular step scaled by the
ellipsoid's local radii of curvature (meridional M, prime-vertical N) at the pair's mean
latitude. ``geodesic_m`` is the exact reference (Karney's algorithm through ``pyproj.Geod``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import Geod

__all__ = ["distance_m", "geodesic_m", "metres_per_degree", "wrap_lon"]

WGS84_A = 6_378_137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
_DEG = np.pi / 180.0
_GEOD = Geod(ellps="WGS84")


def metres_per_degree(lat: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Metres per degree of longitude and of latitude at latitude ``lat`` (degrees).

    East-west: N(lat)·cos(lat); north-south: M(lat) — the ellipsoid's local radii, so a small
    step (dlon, dlat) measures ``hypot(dlon * kx, dlat * ky)`` metres.
    """
    phi = np.asarray(lat, dtype=np.float64) * _DEG
    s = np.sin(phi)
    w2 = 1.0 - WGS84_E2 * s * s
    w = np.sqrt(w2)
    kx = (_DEG * WGS84_A) * np.cos(phi) / w
    ky = (_DEG * WGS84_A * (1.0 - WGS84_E2)) / (w2 * w)
    return kx, ky


def wrap_lon(dlon: ArrayLike) -> NDArray[np.float64]:
    """A longitude difference folded into [-180, 180), so pairs across the antimeridian work."""
    return (np.asarray(dlon, dtype=np.float64) + 180.0) % 360.0 - 180.0


def distance_m(
    lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike
) -> NDArray[np.float64]:
    """Distance in metres between (lon1, lat1) and (lon2, lat2), degrees, broadcasting.

    Accurate to better than 0.01 % against the geodesic for separations up to 50 km at
    |lat| <= 80 (see docs/geometry.md); meant for fix-to-fix steps, stop radii and circles.
    """
    lat1 = np.asarray(lat1, dtype=np.float64)
    lat2 = np.asarray(lat2, dtype=np.float64)
    kx, ky = metres_per_degree(0.5 * (lat1 + lat2))
    dx = wrap_lon(np.subtract(lon2, lon1, dtype=np.float64)) * kx
    dy = (lat2 - lat1) * ky
    out: NDArray[np.float64] = np.sqrt(dx * dx + dy * dy)
    return out


def geodesic_m(
    lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike
) -> NDArray[np.float64]:
    """Exact geodesic distance in metres on WGS-84 (``pyproj.Geod.inv``), broadcasting."""
    a, b, c, d = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lon1, lat1, lon2, lat2))
    )
    shape = a.shape
    _, _, dist = _GEOD.inv(a.ravel(), b.ravel(), c.ravel(), d.ravel())
    return np.asarray(dist, dtype=np.float64).reshape(shape)
