"""Errors of the geofence package.

CargowatchError
 └── InvalidInput
      └── GeometryError   bad coordinates, rings or routes; unknown keys or slots
"""

from core.errors import InvalidInput


class GeometryError(InvalidInput):
    """A geometry, coordinate, key or slot handed to the geofence package is not usable."""
