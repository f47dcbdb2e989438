"""Turn GeoJSON dicts or shapely geometries into checked fence shapes (circle or polygon)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geofence._checks import check_lonlat
from geofence.errors import GeometryError


@dataclass(frozen=True, slots=True)
class Circle:
    """A geodesic circle: every point within ``radius_m`` of the centre."""

    lon: float
    lat: float
    radius_m: float


def parse_fence(geometry: Any, radius_m: float, key: str) -> Circle | BaseGeometry:
    """A Circle for a Point, a valid shapely (Multi)Polygon for a (Multi)Polygon.

    Raises GeometryError naming the problem for anything else.
    """
    if isinstance(geometry, Mapping):
        if geometry.get("type") == "Feature":
            geometry = geometry.get("geometry")
            if not isinstance(geometry, Mapping):
                raise GeometryError("fence Feature has no geometry", key=key)
        gtype = geometry.get("type")
        if gtype not in ("Point", "Polygon", "MultiPolygon"):
            raise GeometryError(
                f"unsupported fence geometry type {gtype!r}; use Point, Polygon or MultiPolygon",
                key=key,
            )
        try:
            geom = shapely.geometry.shape(dict(geometry))
        except Exception as exc:  # shapely raises many kinds for malformed input
            raise GeometryError(f"malformed GeoJSON {gtype}: {exc}", key=key) from None
    elif isinstance(geometry, BaseGeometry):
        geom = geometry
    else:
        raise GeometryError(
            f"fence geometry must be a GeoJSON dict or a shapely geometry, not "
            f"{type(geometry).__name__}",
            key=key,
        )
    if geom.is_empty:
        raise GeometryError("fence geometry is empty", key=key)
    if geom.has_z:
        geom = shapely.force_2d(geom)
    coords = shapely.get_coordinates(geom)
    check_lonlat(coords[:, 0], coords[:, 1], "fence", key=key)
    if geom.geom_type == "Point":
        try:
            radius = float(radius_m)
        except (TypeError, ValueError):
            radius = float("nan")
        if not (np.isfinite(radius) and radius > 0.0):
            raise GeometryError(f"circle fence radius_m must be > 0, got {radius_m!r}", key=key)
        return Circle(float(coords[0, 0]), float(coords[0, 1]), radius)
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise GeometryError(
            f"unsupported fence geometry type {geom.geom_type!r}; use Point, Polygon or "
            "MultiPolygon",
            key=key,
        )
    if not shapely.is_valid(geom):
        raise GeometryError(f"invalid polygon: {shapely.is_valid_reason(geom)}", key=key)
    if geom.area <= 0.0:
        raise GeometryError("polygon has zero area", key=key)
    xmin, _, xmax, _ = geom.bounds
    if xmax - xmin > 180.0:
        raise GeometryError(
            "polygon spans more than 180° of longitude; split it at the antimeridian", key=key
        )
    shapely.prepare(geom)
    return geom
