"""Input checks shared by the route and fence stores: clear GeometryErrors, never numpy noise."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from geofence.errors import GeometryError


def lonlat_array(
    coords: ArrayLike, what: str, min_points: int, **context: object
) -> NDArray[np.float64]:
    """``coords`` as a float64 (N, 2) lon/lat array, checked for shape, NaN and range."""
    try:
        arr = np.array(coords, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what}: coordinates are not numbers ({exc})", **context) from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise GeometryError(
            f"{what}: expected (N, 2) lon/lat pairs, got shape {arr.shape}", **context
        )
    arr = np.ascontiguousarray(arr[:, :2])
    if arr.shape[0] < min_points:
        raise GeometryError(
            f"{what}: needs at least {min_points} positions, got {arr.shape[0]}", **context
        )
    check_lonlat(arr[:, 0], arr[:, 1], what, **context)
    return arr


def check_lonlat(
    lon: NDArray[np.float64], lat: NDArray[np.float64], what: str, **context: object
) -> None:
    """Raise GeometryError unless every lon is in [-180, 180] and every lat in [-90, 90]."""
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise GeometryError(f"{what}: coordinates must be finite (NaN or inf found)", **context)
    if (np.abs(lon) > 180.0).any() or (np.abs(lat) > 90.0).any():
        raise GeometryError(
            f"{what}: lon must be in [-180, 180] and lat in [-90, 90] (lon/lat order)", **context
        )


def fix_arrays(*arrays: ArrayLike) -> tuple[NDArray[Any], ...]:
    """1-d arrays of equal length (scalars broadcast), for per-fix inputs."""
    out = [np.atleast_1d(np.asarray(a)) for a in arrays]
    try:
        out = list(np.broadcast_arrays(*out))
    except ValueError:
        shapes = [a.shape for a in out]
        raise GeometryError(f"per-fix arrays must have one length, got {shapes}") from None
    if out and out[0].ndim != 1:
        raise GeometryError(f"per-fix arrays must be 1-d, got shape {out[0].shape}")
    return tuple(out)
