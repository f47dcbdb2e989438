"""Errors of the geofence package.

CargowatchError
 └── GeometryError   bad coordinates, rings or routes; unknown keys or slots
"""

from cargowatch.errors import CargowatchError


class GeometryError(CargowatchError):
    """A geometry, coordinate, key or slot handed to the geofence package is not usable."""
