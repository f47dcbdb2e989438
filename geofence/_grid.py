"""A multi-level lon/lat grid over fences, with cells pre-classified per fence.

Each fence goes to the finest level whose cells its bounding box covers at most
``MAX_CELLS`` of, and each covered cell is classified once at insertion: *full* (the closed
cell lies inside the fence: every fix there is inside, no test needed), *partial* (the fence
boundary may cross it: exact test) or dropped (the fence cannot reach it). A look-up reads one
cell per level in use; levels whose occupied cells are few enough get a dense table (one
gather per fix), the others a sorted key array (one binary search per fix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from geofence._kernel import ragged_arange

LEVELS = (0.01, 0.1, 1.0, 10.0)
"""Cell sizes in degrees, finest first."""
MAX_CELLS = 256
_DENSE_LIMIT = 1 << 24  # cells of a dense table (int32: 64 MiB at most)


@dataclass(frozen=True, slots=True)
class Cells:
    """The cells one fence occupies: level, cell column/row, and whether each is full."""

    level: int
    ix: NDArray[np.int64]
    iy: NDArray[np.int64]
    full: NDArray[np.bool_]


def level_for(minx: float, miny: float, maxx: float, maxy: float) -> int:
    """The finest level at which the box covers at most MAX_CELLS cells."""
    for level, size in enumerate(LEVELS):
        nx = np.floor((maxx + 180.0) / size) - np.floor((minx + 180.0) / size) + 1
        ny = np.floor((maxy + 90.0) / size) - np.floor((miny + 90.0) / size) + 1
        if nx * ny <= MAX_CELLS:
            return level
    return len(LEVELS) - 1


def cell_boxes(
    level: int, minx: float, miny: float, maxx: float, maxy: float
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Column, row (unwrapped) and (K, 4) lon/lat bounds of the cells the box covers."""
    size = LEVELS[level]
    nrow = round(180.0 / size)
    x0 = int(np.floor((minx + 180.0) / size))
    x1 = int(np.floor((maxx + 180.0) / size))
    y0 = min(int(np.floor((miny + 90.0) / size)), nrow - 1)
    y1 = min(int(np.floor((maxy + 90.0) / size)), nrow - 1)
    gx, gy = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1), indexing="ij")
    ix, iy = gx.ravel(), gy.ravel()
    bounds = np.column_stack(
        [ix * size - 180.0, iy * size - 90.0, (ix + 1) * size - 180.0, (iy + 1) * size - 90.0]
    )
    return ix, iy, bounds


def cell_of(
    level: int, lon: NDArray[np.float64], lat: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Column and row of the cell holding each point at ``level`` (columns wrap at 360°)."""
    size = LEVELS[level]
    ncol = round(360.0 / size)
    nrow = round(180.0 / size)
    ix = np.floor((lon + 180.0) / size).astype(np.int64) % ncol
    iy = np.minimum(np.floor((lat + 90.0) / size).astype(np.int64), nrow - 1)
    return ix, iy


class _Level:
    """Cells of one level: cell -> run of (slot, full) entries."""

    def __init__(
        self,
        level: int,
        ix: NDArray[np.int64],
        iy: NDArray[np.int64],
        slot: NDArray[np.int64],
        full: NDArray[np.bool_],
    ) -> None:
        self.level = level
        ncol = round(360.0 / LEVELS[level])
        key = iy * ncol + ix
        order = np.argsort(key, kind="stable")
        key = key[order]
        self.slot = slot[order]
        self.full = full[order]
        head = np.ones(key.shape[0], dtype=bool)
        head[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(head)
        self.keys = key[starts]
        self.start = np.append(starts, key.shape[0]).astype(np.int64)
        self.ncol = ncol
        cx, cy = ix[order][starts], iy[order][starts]
        self.x0, self.y0 = int(cx.min()), int(cy.min())
        w, h = int(cx.max()) - self.x0 + 1, int(cy.max()) - self.y0 + 1
        self.dense: NDArray[np.int32] | None = None
        if w * h <= _DENSE_LIMIT:
            self.dense = np.full((w, h), -1, np.int32)
            self.dense[cx - self.x0, cy - self.y0] = np.arange(starts.shape[0], dtype=np.int32)

    def rows(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.int64]:
        """Cell row per point, -1 where the cell holds no fence."""
        ix, iy = cell_of(self.level, lon, lat)
        if self.dense is not None:
            w, h = self.dense.shape
            dx, dy = ix - self.x0, iy - self.y0
            ok = (dx >= 0) & (dx < w) & (dy >= 0) & (dy < h)
            out = np.full(ix.shape[0], -1, np.int64)
            out[ok] = self.dense[dx[ok], dy[ok]]
            return out
        key = iy * self.ncol + ix
        pos = np.searchsorted(self.keys, key)
        pos = np.minimum(pos, self.keys.shape[0] - 1)
        return np.where(self.keys[pos] == key, pos, -1)


class GridIndex:
    """All fences' cells, level by level."""

    def __init__(self, cells: dict[int, Cells]) -> None:
        by_level: dict[int, list[tuple[int, Cells]]] = {}
        for slot, c in cells.items():
            by_level.setdefault(c.level, []).append((slot, c))
        self.levels: list[_Level] = []
        for level, items in sorted(by_level.items()):
            ncol = round(360.0 / LEVELS[level])
            ix = np.concatenate([c.ix % ncol for _, c in items])
            iy = np.concatenate([c.iy for _, c in items])
            full = np.concatenate([c.full for _, c in items])
            slots = np.concatenate([np.full(c.ix.shape[0], s, np.int64) for s, c in items])
            if ix.size:
                self.levels.append(_Level(level, ix, iy, slots, full))

    def candidates(
        self, lon: NDArray[np.float64], lat: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """(fix, slot, full) for every fence whose cell holds the fix."""
        fixes, slots, fulls = [], [], []
        for lv in self.levels:
            row = lv.rows(lon, lat)
            f = np.flatnonzero(row >= 0)
            r = row[f]
            first = lv.start[r]
            owner, off = ragged_arange(lv.start[r + 1] - first)
            e = first[owner] + off
            fixes.append(f[owner])
            slots.append(lv.slot[e])
            fulls.append(lv.full[e])
        if not fixes:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0, bool)
        return np.concatenate(fixes), np.concatenate(slots), np.concatenate(fulls)
