"""Circle and polygon fences, prepared once, looked up for many fixes at a time.

Circles are geodesic circles (``distance_m`` from the centre <= radius); polygons are tested
in lon/lat (fine for fences of a few km), boundary counted as inside. Look-ups go through a
multi-level grid whose cells were classified per fence when it was added (see ``_grid``), so
most fixes need no exact test. Fences added or replaced since the grid was built are checked
through their bounding boxes until the next rebuild, which happens lazily on a query once
``PENDING_LIMIT`` of them have piled up or a quarter of the indexed fences went stale.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry.base import BaseGeometry

from geofence._checks import fix_arrays
from geofence._grid import Cells, GridIndex, cell_boxes, level_for
from geofence._rings import RingTable
from geofence._shapes import Circle, parse_fence
from geofence.distance import distance_m, metres_per_degree, wrap_lon
from geofence.errors import GeometryError

__all__ = ["PENDING_LIMIT", "FenceKind", "FenceSet"]

PENDING_LIMIT = 32
"""Fences checked by bounding box before the grid is rebuilt to include them."""


class FenceKind(StrEnum):
    """What a fence stands for; API geofences use the first five, trips add origin and stop."""

    DEPOT = "depot"
    CONSIGNEE = "consignee"
    REST_AREA = "rest_area"
    RISK_ZONE = "risk_zone"
    CUSTOM = "custom"
    ORIGIN = "origin"
    STOP = "stop"


_KINDS = list(FenceKind)
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}


def _kind(kind: str, key: str) -> FenceKind:
    try:
        return FenceKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in FenceKind)
        raise GeometryError(f"unknown fence kind {kind!r}; valid: {valid}", key=key) from None


class FenceSet:
    """Circle and polygon fences, prepared once, looked up through a grid.

    Slots are stable: replacing a key keeps its slot, removing a key retires its slot for good.
    Not thread-safe: one engine owns it.
    """

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._n = 0
        cap = 64
        self._alive = np.zeros(cap, bool)
        self._circle = np.zeros(cap, bool)
        self._centre = np.zeros((cap, 2))
        self._radius = np.zeros(cap)
        self._kind = np.zeros(cap, np.int8)
        self._bbox = np.zeros((cap, 4))  # minx, miny, maxx, maxy (circles: lon unwrapped)
        self._geom = np.full(cap, None, dtype=object)
        self._cells: dict[int, Cells] = {}
        self._indexed = np.zeros(cap, bool)  # slot's current shape is in the grid
        self._pending: set[int] = set()
        self._stale = 0  # grid entries of replaced or removed fences
        self._grid: GridIndex | None = None
        self._rings = RingTable()

    # ----------------------------------------------------------------- keys and slots

    def add(
        self,
        key: str,
        geometry: dict[str, Any] | BaseGeometry,
        radius_m: float = 200.0,
        kind: str = "custom",
    ) -> int:
        """Store fence ``key`` and return its slot (the same slot when ``key`` is replaced).

        ``geometry`` is a GeoJSON Point (a circle of ``radius_m`` metres), Polygon or
        MultiPolygon in lon/lat (a GeoJSON Feature is unwrapped), or the same as a shapely
        geometry. Raises GeometryError naming the problem for anything else.
        """
        fkind = _kind(kind, key)
        shape = parse_fence(geometry, radius_m, key)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot()
        else:
            self._retire(slot)
        if isinstance(shape, Circle):
            self._circle[slot] = True
            self._centre[slot] = (shape.lon, shape.lat)
            self._radius[slot] = shape.radius_m
            self._geom[slot] = None
            self._rings.drop(slot)
            self._bbox[slot] = _circle_bbox(shape)
            cells = _circle_cells(shape, self._bbox[slot])
        else:
            self._circle[slot] = False
            self._geom[slot] = shape
            self._rings.put(slot, shape)
            self._bbox[slot] = shape.bounds
            cells = _polygon_cells(shape)
        self._kind[slot] = _KIND_CODE[fkind]
        self._cells[slot] = cells
        self._alive[slot] = True
        self._pending.add(slot)
        self._slots[key] = slot
        return slot

    def remove(self, key: str) -> None:
        """Forget fence ``key``; its slot is never handed out again."""
        slot = self.slot(key)
        del self._slots[key]
        self._retire(slot)
        self._alive[slot] = False
        self._geom[slot] = None
        self._rings.drop(slot)

    def slot(self, key: str) -> int:
        """The slot of fence ``key``; GeometryError if unknown."""
        try:
            return self._slots[key]
        except KeyError:
            raise GeometryError("unknown fence", key=key) from None

    def kind(self, slot: int) -> str:
        """The kind of the fence in ``slot`` (a FenceKind value)."""
        slot = int(slot)
        self._check_slots(np.array([slot]))
        return _KINDS[int(self._kind[slot])].value

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    # ---------------------------------------------------------------------- queries

    def contains(self, slots: ArrayLike, lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]:
        """Whether fix i lies inside fence ``slots[i]`` (boundary inside; slot -1 -> False).

        Non-finite fixes are outside; a slot never handed out or removed raises GeometryError.
        """
        slots_a, lon_a, lat_a = _inputs(slots, lon, lat)
        out = np.zeros(slots_a.shape[0], bool)
        ok = (slots_a >= 0) & np.isfinite(lon_a) & np.isfinite(lat_a)
        idx = np.flatnonzero(ok)
        self._check_slots(slots_a[idx])
        out[idx] = self._inside(slots_a[idx], lon_a[idx], lat_a[idx])
        return out

    def query(
        self, lon: ArrayLike, lat: ArrayLike, kinds: Collection[str] | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """All (fix_index, fence_slot) pairs with the fix inside the fence.

        Sorted by fix index, then slot. ``kinds`` keeps only fences of those kinds.
        """
        lon_a, lat_a = (a.astype(np.float64, copy=False) for a in fix_arrays(lon, lat))
        # Bad fixes are inside nothing; keep them out of the arithmetic.
        good = np.flatnonzero(np.isfinite(lon_a) & (np.abs(lat_a) <= 90.0))
        lon_a, lat_a = lon_a[good], lat_a[good]
        fix, slot, full = self._candidates(lon_a, lat_a)
        keep = self._indexed[slot]
        if kinds is not None:
            wanted = np.zeros(len(_KINDS), bool)
            for k in kinds:
                wanted[_KIND_CODE[_kind(k, "kinds")]] = True
            keep &= wanted[self._kind[slot]]
        fix, slot, full = fix[keep], slot[keep], full[keep]
        test = np.flatnonzero(~full)
        if test.size:
            full[test] = self._inside(slot[test], lon_a[fix[test]], lat_a[fix[test]])
        fix, slot = fix[full], slot[full]
        # Fences added since the grid was built: bounding box, then the exact test.
        pf, ps = self._pending_candidates(lon_a, lat_a, kinds)
        if pf.size:
            inside = self._inside(ps, lon_a[pf], lat_a[pf])
            fix = np.concatenate([fix, pf[inside]])
            slot = np.concatenate([slot, ps[inside]])
        fix = good[fix]
        order = np.lexsort((slot, fix))
        fix, slot = fix[order], slot[order]
        if fix.size > 1:  # a fence reaching round the globe can meet a fix twice
            new = np.ones(fix.size, bool)
            new[1:] = (fix[1:] != fix[:-1]) | (slot[1:] != slot[:-1])
            fix, slot = fix[new], slot[new]
        return fix.astype(np.int64), slot.astype(np.int64)

    def distance_to(self, slots: ArrayLike, lon: ArrayLike, lat: ArrayLike) -> NDArray[np.float64]:
        """Metres from fix i to the boundary of fence ``slots[i]``, 0 inside (NaN: slot -1).

        Any mix of fences in one call, with no loop over them (polygons: ``_rings``)."""
        slots_a, lon_a, lat_a = _inputs(slots, lon, lat)
        out = np.full(slots_a.shape[0], np.nan)
        ok = (slots_a >= 0) & np.isfinite(lon_a) & np.isfinite(lat_a)
        self._check_slots(slots_a[ok])
        circ = ok & self._circle[np.maximum(slots_a, 0)]
        c = self._centre[slots_a[circ]]
        d = distance_m(c[:, 0], c[:, 1], lon_a[circ], lat_a[circ]) - self._radius[slots_a[circ]]
        out[circ] = np.maximum(d, 0.0)
        poly = np.flatnonzero(ok & ~circ)
        if poly.size:
            s, x, y = slots_a[poly], lon_a[poly], lat_a[poly]
            inside = shapely.intersects_xy(self._geom[s], x, y)
            out[poly] = np.where(inside, 0.0, self._rings.distance(s, x, y))
        return out

    def beyond(
        self, slots: ArrayLike, lon: ArrayLike, lat: ArrayLike, margin_m: ArrayLike
    ) -> NDArray[np.bool_]:
        """Whether fix i lies farther than ``margin_m[i]`` metres beyond the edge of fence
        ``slots[i]`` (the exit test of fence membership with hysteresis). Non-finite fixes
        and slot -1 are not beyond."""
        slots_a, lon_a, lat_a = _inputs(slots, lon, lat)
        margin = np.broadcast_to(np.asarray(margin_m, dtype=np.float64), slots_a.shape)
        with np.errstate(invalid="ignore"):
            return self.distance_to(slots_a, lon_a, lat_a) > margin

    def alive(self, slots: ArrayLike) -> NDArray[np.bool_]:
        """Whether each slot holds a fence (False for -1, never handed out, or removed)."""
        s = np.asarray(slots, dtype=np.int64)
        ok = (s >= 0) & (s < self._n)
        out = np.zeros(s.shape, bool)
        out[ok] = self._alive[s[ok]]
        return out

    # ---------------------------------------------------------------------- helpers

    def _inside(
        self, slot: NDArray[np.int64], lon: NDArray[np.float64], lat: NDArray[np.float64]
    ) -> NDArray[np.bool_]:
        out = np.empty(slot.shape[0], bool)
        circ = self._circle[slot]
        c = self._centre[slot[circ]]
        out[circ] = distance_m(c[:, 0], c[:, 1], lon[circ], lat[circ]) <= self._radius[slot[circ]]
        poly = ~circ
        if poly.any():
            out[poly] = shapely.intersects_xy(self._geom[slot[poly]], lon[poly], lat[poly])
        return out

    def _check_slots(self, slots: NDArray[np.int64]) -> None:
        bad = (slots < 0) | (slots >= self._n)
        bad[~bad] = ~self._alive[slots[~bad]]
        if bad.any():
            raise GeometryError("unknown fence slot", slot=int(slots[bad][0]))

    def _candidates(
        self, lon: NDArray[np.float64], lat: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        if (
            self._grid is None
            or len(self._pending) > PENDING_LIMIT
            or (self._stale > 64 and 4 * self._stale > self._indexed.sum())
        ):
            self._rebuild()
        assert self._grid is not None
        return self._grid.candidates(lon, lat)

    def _rebuild(self) -> None:
        live = {s: c for s, c in self._cells.items() if self._alive[s]}
        self._cells = live
        self._grid = GridIndex(live)
        self._indexed[:] = False
        self._indexed[list(live)] = True
        self._pending.clear()
        self._stale = 0

    def _pending_candidates(
        self, lon: NDArray[np.float64], lat: NDArray[np.float64], kinds: Collection[str] | None
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        fixes, slots = [], []
        wanted = None if kinds is None else {_KIND_CODE[_kind(k, "kinds")] for k in kinds}
        for s in sorted(self._pending):
            if wanted is not None and int(self._kind[s]) not in wanted:
                continue
            minx, miny, maxx, maxy = self._bbox[s]
            dx = wrap_lon(lon - minx)
            f = np.flatnonzero((dx <= maxx - minx) & (lat >= miny) & (lat <= maxy))
            fixes.append(f)
            slots.append(np.full(f.shape[0], s, np.int64))
        if not fixes:
            empty = np.empty(0, np.int64)
            return empty, empty
        return np.concatenate(fixes), np.concatenate(slots)

    def _retire(self, slot: int) -> None:
        """The slot's current shape leaves the grid (its entries are ignored until rebuild)."""
        if self._indexed[slot]:
            self._stale += 1
            self._indexed[slot] = False
        self._pending.discard(slot)

    def _new_slot(self) -> int:
        slot = self._n
        if slot == self._alive.shape[0]:
            cap = 2 * slot
            for name in ("_alive", "_circle", "_centre", "_radius", "_kind", "_bbox", "_geom",
                         "_indexed"):  # fmt: skip
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]), old.dtype)
                if old.dtype == object:
                    new[:] = None
                new[:slot] = old
                setattr(self, name, new)
        self._n += 1
        return slot


def _inputs(slots: ArrayLike, lon: ArrayLike, lat: ArrayLike) -> tuple[NDArray[Any], ...]:
    s, x, y = fix_arrays(slots, lon, lat)
    return s.astype(np.int64), x.astype(np.float64), y.astype(np.float64)


def _circle_bbox(c: Circle) -> NDArray[np.float64]:
    """Lon/lat box around a circle, a little generous; lon may run past ±180 (unwrapped)."""
    _, ky = metres_per_degree(c.lat)
    dy = 1.01 * c.radius_m / float(ky) + 1e-9
    miny, maxy = max(c.lat - dy, -90.0), min(c.lat + dy, 90.0)
    kx_lo = float(np.min(metres_per_degree(np.array([miny, maxy]))[0]))
    if kx_lo <= 0.0 or 1.01 * c.radius_m / kx_lo >= 179.0:  # reaches a pole or round
        return np.array([-180.0, miny, 180.0 - 1e-9, maxy])
    dx = 1.01 * c.radius_m / kx_lo + 1e-9
    return np.array([c.lon - dx, miny, c.lon + dx, maxy])


def _circle_cells(c: Circle, bbox: NDArray[np.float64]) -> Cells:
    level = level_for(*bbox)
    ix, iy, b = cell_boxes(level, *bbox)
    margin = max(1.0, 1e-4 * c.radius_m)  # classification must never contradict the test
    near_x = np.clip(c.lon, b[:, 0], b[:, 2])
    near_y = np.clip(c.lat, b[:, 1], b[:, 3])
    d_near = distance_m(c.lon, c.lat, near_x, near_y)
    corners = [distance_m(c.lon, c.lat, b[:, i], b[:, j]) for i in (0, 2) for j in (1, 3)]
    full = np.max(corners, axis=0) <= c.radius_m - margin
    keep = d_near <= c.radius_m + margin
    return Cells(level, ix[keep], iy[keep], full[keep])


def _polygon_cells(poly: BaseGeometry) -> Cells:
    level = level_for(*poly.bounds)
    ix, iy, b = cell_boxes(level, *poly.bounds)
    boxes = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    keep = shapely.intersects(poly, boxes)
    full = shapely.contains(poly, boxes)
    return Cells(level, ix[keep], iy[keep], full[keep])
