"""Polygon boundaries as one flat segment table: distance of many (fix, fence) pairs at once.

The exit test of fence membership (a fix farther than a margin beyond a fence's edge) asks
for the distance from fixes to the boundaries of *different* polygons in one call. Each
polygon's rings (holes included) are kept as a run of segments in one table, so a batch of
pairs is one gather of their runs and one ``point_segment`` over all of them, with no loop
over fences. Distances use the same local ellipsoidal scale as the route kernel (the mean of
fix and vertex for east-west, the fix's for north-south): within 0.1 % up to tens of km.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from geofence._kernel import point_segment, ragged_arange
from geofence.distance import metres_per_degree, wrap_lon

F64 = NDArray[np.float64]


def ring_segments(poly: BaseGeometry) -> F64:
    """(K, 6) segments of every ring of a (multi)polygon: lon_a, lat_a, lon_b, lat_b and the
    metres per degree of longitude at a's and at b's latitude."""
    rows = []
    for ring in shapely.get_rings(shapely.get_parts(poly)):
        c = shapely.get_coordinates(ring)
        kx, _ = metres_per_degree(c[:, 1])
        rows.append(np.column_stack([c[:-1, 0], c[:-1, 1], c[1:, 0], c[1:, 1], kx[:-1], kx[1:]]))
    return np.concatenate(rows) if rows else np.zeros((0, 6))


class RingTable:
    """Segments of many polygons, flattened lazily after changes."""

    def __init__(self) -> None:
        self._parts: dict[int, F64] = {}
        self._table = np.zeros((0, 6))
        self._start = np.zeros(0, np.int64)
        self._count = np.zeros(0, np.int64)
        self._dirty = False

    def put(self, slot: int, poly: BaseGeometry) -> None:
        self._parts[slot] = ring_segments(poly)
        self._dirty = True

    def drop(self, slot: int) -> None:
        if self._parts.pop(slot, None) is not None:
            self._dirty = True

    def _flatten(self) -> None:
        size = max(self._parts, default=-1) + 1
        start = np.zeros(size, np.int64)
        count = np.zeros(size, np.int64)
        chunks, pos = [], 0
        for slot in sorted(self._parts):
            seg = self._parts[slot]
            start[slot], count[slot] = pos, seg.shape[0]
            chunks.append(seg)
            pos += seg.shape[0]
        self._table = np.concatenate(chunks) if chunks else np.zeros((0, 6))
        self._start, self._count = start, count
        self._dirty = False

    def distance(self, slots: NDArray[np.int64], lon: F64, lat: F64) -> F64:
        """Metres from point i to the boundary of polygon ``slots[i]`` (every slot must have
        been ``put``); inside or outside alike."""
        if self._dirty:
            self._flatten()
        out = np.full(slots.shape[0], np.inf)
        if slots.size == 0:
            return out
        counts = self._count[slots]
        owner, pos = ragged_arange(counts)
        seg = self._table[self._start[slots][owner] + pos]
        plon, plat = lon[owner], lat[owner]
        kxp, kyp = metres_per_degree(plat)
        ax = wrap_lon(seg[:, 0] - plon) * (0.5 * (kxp + seg[:, 4]))
        ay = (seg[:, 1] - plat) * kyp
        bx = wrap_lon(seg[:, 2] - plon) * (0.5 * (kxp + seg[:, 5]))
        by = (seg[:, 3] - plat) * kyp
        d2, _ = point_segment(ax, ay, bx, by)
        has = np.flatnonzero(counts > 0)
        starts = (np.cumsum(counts) - counts)[has]
        out[has] = np.sqrt(np.minimum.reduceat(d2, starts)) if starts.size else out[has]
        return out
