"""Vectorised geometry kernel: WGS-84 lon/lat in, metres out.

Distances (``distance_m``; ``geodesic_m`` as the exact reference), route lines of many trips
(``RouteSet.locate``: distance of N fixes to their own trip's line in one call) and circle /
polygon fences (``FenceSet``: membership per fix, look-up of all fences holding each fix).
Method and measured accuracy: docs/geometry.md.
"""

from geofence.distance import distance_m, geodesic_m
from geofence.errors import GeometryError
from geofence.fences import FenceKind, FenceSet
from geofence.routes import RouteMatch, RouteSet

__all__ = [
    "FenceKind",
    "FenceSet",
    "GeometryError",
    "RouteMatch",
    "RouteSet",
    "distance_m",
    "geodesic_m",
]
