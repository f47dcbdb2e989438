"""Route lines of many trips and the distance of fixes to their own trip's line.

Each route is stored once in an arena of float32 vertices (degrees relative to the route's
first vertex, plus the vertex's metres-per-degree of longitude), padded at both ends and cut
into chunks of ``CHUNK`` segments. ``locate`` searches a window of three chunks around each
fix's hint (the segment its trip matched last) in one contiguous read, grows the window a
chunk at a time while the minimum sits in its outermost chunk, and accepts the answer only
when it is provably the nearest: the route's precomputed *clearance* of the chunk holding it
(a lower bound of that chunk's distance to every chunk two or more away, measured up to
``CLEARANCE_CAP_M``) is at least twice the distance found — by the triangle inequality no
segment outside the window can then be nearer. Everything else — no hint, stale hints, fixes
far off the route, stretches where the route folds back on itself — goes to an exact search
of the whole line, pruned by the bounding boxes of blocks of chunks and then of chunks. The
answer is thus always the nearest segment of the whole line; hints only decide how much of
the line is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from geofence._checks import fix_arrays, lonlat_array
from geofence._kernel import F32, group_argmin, nearest_on_runs, ragged_arange
from geofence._routeprep import BLOCK, CHUNK, CLEAR, CLEARANCE_CAP_M, KXMIN, MAXX, MAXY, MINX, MINY
from geofence._routeprep import prepare as _prepare
from geofence.distance import metres_per_degree, wrap_lon
from geofence.errors import GeometryError

__all__ = ["BLOCK", "CHUNK", "CLEARANCE_CAP_M", "RouteMatch", "RouteSet"]

_MAX_GROW = 6
"""Chunks a window may grow by before the fix goes to the whole-line search."""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Where each fix lies relative to its route line."""

    distance_m: NDArray[np.float64]
    """Distance of each fix to its route line in metres (>= 0; NaN for slot -1 or a bad fix)."""
    segment: NDArray[np.int64]
    """Index of the nearest segment (vertex i -> i+1); -1 where the distance is NaN."""
    along_m: NDArray[np.float64]
    """Distance along the route from its first vertex to the fix's projection, metres."""


class RouteSet:
    """Route lines of many trips, each stored once, addressed by an int slot.

    Slots are stable: replacing a key keeps its slot, removing a key retires its slot for good.
    Not thread-safe: one engine owns it.
    """

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._nslots = 0
        cap = 64
        self._vbase = np.zeros(cap, np.int64)  # first padded vertex in the arena
        self._cbase = np.zeros(cap, np.int64)  # first chunk row (the leading pad chunk)
        self._nseg = np.zeros(cap, np.int64)
        self._nchunk = np.zeros(cap, np.int64)  # real chunks (pads excluded)
        self._ref = np.zeros((cap, 2), np.float64)
        self._len = np.zeros(cap, np.float64)
        self._alive = np.zeros(cap, bool)
        self._vtx = np.zeros((4096, 3), F32)  # dlon, dlat, kx
        self._cum = np.zeros(4096, np.float64)  # metres along the route at the vertex
        self._vused = 0
        self._chunks = np.zeros((512, 8), F32)
        self._cused = 0
        self._garbage = 0  # arena vertices of replaced or removed routes
        self.located = 0
        """Fixes matched so far (a counter for metrics)."""
        self.full_searches = 0
        """Of those, fixes that needed the whole-line search (no or stale hint, off route)."""

    # ----------------------------------------------------------------- keys and slots

    def add(self, key: str, lonlat: ArrayLike) -> int:
        """Store route ``key`` ((N, 2) lon/lat degrees, N >= 2) and return its slot.

        Adding an existing key replaces its line and keeps its slot (hints for it become
        stale, which ``locate`` tolerates). Raises GeometryError for fewer than two
        positions, non-finite or out-of-range coordinates.
        """
        line = lonlat_array(lonlat, "route", 2, key=key)
        vtx, cum, chunks, ref = _prepare(line, key)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot()
        else:
            self._garbage += int(self._nchunk[slot] + 2) * CHUNK + 1
        vbase = self._alloc_vertices(vtx.shape[0])
        self._vtx[vbase : vbase + vtx.shape[0]] = vtx
        self._cum[vbase : vbase + vtx.shape[0]] = cum
        cbase = self._alloc_chunks(chunks.shape[0])
        self._chunks[cbase : cbase + chunks.shape[0]] = chunks
        self._vbase[slot] = vbase
        self._cbase[slot] = cbase
        self._nseg[slot] = line.shape[0] - 1
        self._nchunk[slot] = -(-(line.shape[0] - 1) // CHUNK)
        self._ref[slot] = ref
        self._len[slot] = cum[-1]
        self._alive[slot] = True
        self._slots[key] = slot
        return slot

    def remove(self, key: str) -> None:
        """Forget route ``key``; its slot is never handed out again."""
        slot = self.slot(key)
        del self._slots[key]
        self._alive[slot] = False
        self._garbage += int(self._nchunk[slot] + 2) * CHUNK + 1

    def slot(self, key: str) -> int:
        """The slot of route ``key``; GeometryError if unknown."""
        try:
            return self._slots[key]
        except KeyError:
            raise GeometryError("unknown route", key=key) from None

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def length_m(self, slot: int) -> float:
        """Length of the route in ``slot``, metres."""
        slot = int(slot)
        if not (0 <= slot < self._nslots and self._alive[slot]):
            raise GeometryError("unknown route slot", slot=slot)
        return float(self._len[slot])

    # ----------------------------------------------------------------------- locate

    def locate(
        self,
        slots: ArrayLike,
        lon: ArrayLike,
        lat: ArrayLike,
        hint: ArrayLike | None = None,
    ) -> RouteMatch:
        """Match fix i against route ``slots[i]``: distance, nearest segment, distance along.

        ``hint[i]`` is the segment fix i's trip matched last (-1 = unknown; stale or wrong
        hints only cost time). Slot -1 and non-finite fixes give NaN and segment -1; a slot
        that was never handed out or was removed raises GeometryError.
        """
        if hint is None:
            slots_a, lon_a, lat_a = fix_arrays(slots, lon, lat)
            hint_a = np.full(slots_a.shape[0], -1, np.int64)
        else:
            slots_a, lon_a, lat_a, hint_a = fix_arrays(slots, lon, lat, hint)
        slots_a = slots_a.astype(np.int64, copy=False)
        lon_a = lon_a.astype(np.float64, copy=False)
        lat_a = lat_a.astype(np.float64, copy=False)
        n = slots_a.shape[0]
        dist = np.full(n, np.nan)
        seg = np.full(n, -1, np.int64)
        along = np.full(n, np.nan)
        ok = (slots_a >= 0) & np.isfinite(lon_a) & (np.abs(lat_a) <= 90.0)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return RouteMatch(dist, seg, along)
        s = slots_a[idx]
        bad = (s >= self._nslots) | ~self._alive[np.minimum(s, self._nslots - 1)]
        if bad.any():
            raise GeometryError("unknown route slot", slot=int(s[bad][0]))
        h = hint_a[idx]
        if h.dtype.kind == "f":  # float hints (e.g. from a state matrix): NaN means unknown
            h = np.where(np.isfinite(h) & (h >= 0) & (h < 2**62), h, -1)
        d2, seg_p, t = self._search(s, lon_a[idx], lat_a[idx], h.astype(np.int64))
        nseg = self._nseg[s]
        vi = self._vbase[s] + seg_p
        dist[idx] = np.sqrt(d2.astype(np.float64))
        seg[idx] = np.clip(seg_p - CHUNK, 0, nseg - 1)
        c0 = self._cum[vi]
        along[idx] = c0 + t.astype(np.float64) * (self._cum[vi + 1] - c0)
        return RouteMatch(dist, seg, along)

    def _search(
        self,
        s: NDArray[np.int64],
        lon: NDArray[np.float64],
        lat: NDArray[np.float64],
        hint: NDArray[np.int64],
    ) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32]]:
        """Squared distance, padded segment index and projection parameter per fix."""
        m = s.shape[0]
        ref = self._ref[s]
        px = wrap_lon(lon - ref[:, 0]).astype(F32)
        py = (lat - ref[:, 1]).astype(F32)
        kx, ky = metres_per_degree(lat)
        kxp = kx.astype(F32)
        kyp = ky.astype(F32)
        vbase = self._vbase[s]
        cbase = self._cbase[s]
        nchunk = self._nchunk[s]
        best_d2 = np.full(m, np.inf, F32)
        best_seg = np.zeros(m, np.int64)
        best_t = np.zeros(m, F32)
        hinted = (hint >= 0) & (hint < self._nseg[s])
        live = np.flatnonzero(hinted)
        full = [np.flatnonzero(~hinted)]
        # Window: chunks lo..hi around the hint's chunk, evaluated as one run.
        lo = hint[live] // CHUNK
        hi = lo + 2
        d2, j, t = nearest_on_runs(
            self._vtx, vbase[live] + lo * CHUNK, 3 * CHUNK,
            px[live], py[live], kxp[live], kyp[live],
        )  # fmt: skip
        best_d2[live] = d2
        best_seg[live] = lo * CHUNK + j
        best_t[live] = t
        for _ in range(_MAX_GROW + 1):
            # The chunk holding the minimum (pad chunks count as their real neighbour) must
            # have both neighbours searched; otherwise grow the window by one chunk that way.
            cb = np.clip(best_seg[live] // CHUNK, 1, nchunk[live])
            grow_lo = cb - 1 < lo
            grow_hi = cb + 1 > hi
            settled = ~(grow_lo | grow_hi)
            done = live[settled]
            clear = self._chunks[cbase[done] + cb[settled], CLEAR]
            proven = best_d2[done] <= F32(0.25) * clear * clear
            full.append(done[~proven])
            keep = ~settled
            live, lo, hi, grow_lo = live[keep], lo[keep], hi[keep], grow_lo[keep]
            if live.size == 0:
                break
            lo = lo - grow_lo
            hi = hi + ~grow_lo
            chunk = np.where(grow_lo, lo, hi)
            self._merge(np.arange(live.size), live, chunk, px, py, kxp, kyp, vbase, best_d2,
                        best_seg, best_t)  # fmt: skip
        full.append(live)
        todo = np.concatenate(full)
        self.located += m
        self.full_searches += todo.size
        if todo.size:
            self._full_search(todo, px, py, kxp, kyp, vbase, cbase, nchunk, best_d2, best_seg,
                              best_t)  # fmt: skip
        return best_d2, best_seg, best_t

    def _full_search(
        self,
        todo: NDArray[np.int64],
        px: NDArray[np.float32],
        py: NDArray[np.float32],
        kxp: NDArray[np.float32],
        kyp: NDArray[np.float32],
        vbase: NDArray[np.int64],
        cbase: NDArray[np.int64],
        nchunk: NDArray[np.int64],
        best_d2: NDArray[np.float32],
        best_seg: NDArray[np.int64],
        best_t: NDArray[np.float32],
    ) -> None:
        """Exact nearest segment over the whole line for fixes ``todo`` (updates best_*).

        Two levels of bounding boxes: blocks of BLOCK chunks, then chunks. The most promising
        chunk of the most promising block gives each fix an upper bound (unless the window
        already gave one); then every block and chunk whose box could hold anything nearer is
        searched.
        """
        nblock = -(-nchunk // BLOCK)
        owner, block = ragged_arange(nblock[todo])
        fix = todo[owner]
        # Block rows follow the chunk rows (pads included) of each route.
        lower = self._lower2(cbase[fix] + nchunk[fix] + 2 + block, fix, px, py, kxp, kyp)
        # Pass 1: an upper bound from the best chunk of the best block.
        _, first = group_argmin(lower, owner)
        o, f, c = self._chunks_of(owner[first], fix[first], block[first], nchunk)
        lc = self._lower2(cbase[f] + c, f, px, py, kxp, kyp)
        _, pick = group_argmin(lc, o)
        self._merge(o[pick], f[pick], c[pick], px, py, kxp, kyp, vbase, best_d2, best_seg,
                    best_t)  # fmt: skip
        # Pass 2: every block, then every chunk in it, that could hold something nearer.
        cand = np.flatnonzero(lower <= _bound(best_d2[fix]))
        o, f, c = self._chunks_of(owner[cand], fix[cand], block[cand], nchunk)
        lc = self._lower2(cbase[f] + c, f, px, py, kxp, kyp)
        near = np.flatnonzero(lc <= _bound(best_d2[f]))
        if near.size:
            self._merge(o[near], f[near], c[near], px, py, kxp, kyp, vbase, best_d2, best_seg,
                        best_t)  # fmt: skip

    def _lower2(
        self,
        rows: NDArray[np.int64],
        fix: NDArray[np.int64],
        px: NDArray[np.float32],
        py: NDArray[np.float32],
        kxp: NDArray[np.float32],
        kyp: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Lower bound of the squared distance (m²) from each fix to the box in chunk-table row.

        The scale of a pair is the mean of the fix's and the vertex's metres per degree, so
        the smaller of the box's bounds gives a lower bound.
        """
        info = self._chunks[rows]
        fx = px[fix]
        fy = py[fix]
        gx: NDArray[np.float32] = np.maximum(
            np.maximum(info[:, MINX] - fx, fx - info[:, MAXX]), F32(0)
        )
        gy = np.maximum(np.maximum(info[:, MINY] - fy, fy - info[:, MAXY]), F32(0))
        gx *= F32(0.5) * (kxp[fix] + info[:, KXMIN])
        gy *= kyp[fix]
        gx *= gx
        gy *= gy
        gx += gy
        return gx

    @staticmethod
    def _chunks_of(
        owner: NDArray[np.int64],
        fix: NDArray[np.int64],
        block: NDArray[np.int64],
        nchunk: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(owner, fix, padded chunk index) for every real chunk of the given blocks."""
        first = 1 + block * BLOCK
        count = np.minimum(BLOCK, nchunk[fix] + 1 - first)
        k, pos = ragged_arange(count)
        return owner[k], fix[k], first[k] + pos

    def _merge(
        self,
        owner: NDArray[np.int64],
        fix: NDArray[np.int64],
        chunk: NDArray[np.int64],
        px: NDArray[np.float32],
        py: NDArray[np.float32],
        kxp: NDArray[np.float32],
        kyp: NDArray[np.float32],
        vbase: NDArray[np.int64],
        best_d2: NDArray[np.float32],
        best_seg: NDArray[np.int64],
        best_t: NDArray[np.float32],
    ) -> None:
        """Search chunks (fix[k], chunk[k]) and keep each fix's nearest result.

        ``owner`` groups the pairs of one fix (sorted, contiguous).
        """
        d2, j, t = nearest_on_runs(
            self._vtx, vbase[fix] + chunk * CHUNK, CHUNK, px[fix], py[fix], kxp[fix], kyp[fix]
        )
        _, k = group_argmin(d2, owner)
        f = fix[k]
        better = d2[k] < best_d2[f]
        f, k = f[better], k[better]
        best_d2[f] = d2[k]
        best_seg[f] = chunk[k] * CHUNK + j[k]
        best_t[f] = t[k]

    # ------------------------------------------------------------------------ arena

    def _new_slot(self) -> int:
        slot = self._nslots
        if slot == self._vbase.shape[0]:
            cap = 2 * slot
            for name in ("_vbase", "_cbase", "_nseg", "_nchunk", "_ref", "_len", "_alive"):
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]), old.dtype)
                new[:slot] = old
                setattr(self, name, new)
        self._nslots += 1
        return slot

    def _alloc_vertices(self, n: int) -> int:
        if self._vused + n > self._vtx.shape[0]:
            if self._garbage > self._vused // 2:
                self._compact()
            if self._vused + n > self._vtx.shape[0]:
                cap = max(2 * self._vtx.shape[0], self._vused + n)
                vtx = np.zeros((cap, 3), F32)
                vtx[: self._vused] = self._vtx[: self._vused]
                cum = np.zeros(cap, np.float64)
                cum[: self._vused] = self._cum[: self._vused]
                self._vtx, self._cum = vtx, cum
        base = self._vused
        self._vused += n
        return base

    def _alloc_chunks(self, n: int) -> int:
        if self._cused + n > self._chunks.shape[0]:
            cap = max(2 * self._chunks.shape[0], self._cused + n)
            chunks = np.zeros((cap, 8), F32)
            chunks[: self._cused] = self._chunks[: self._cused]
            self._chunks = chunks
        base = self._cused
        self._cused += n
        return base

    def _compact(self) -> None:
        """Drop the vertices and chunks of replaced and removed routes."""
        live = np.flatnonzero(self._alive[: self._nslots])
        vsize = (self._nchunk[live] + 2) * CHUNK + 1
        csize = self._nchunk[live] + 2 + -(-self._nchunk[live] // BLOCK)
        vtx = np.zeros((max(int(vsize.sum()) * 2, 4096), 3), F32)
        cum = np.zeros(vtx.shape[0], np.float64)
        chunks = np.zeros((max(int(csize.sum()) * 2, 512), 8), F32)
        v = c = 0
        for slot, nv, nc in zip(live.tolist(), vsize.tolist(), csize.tolist(), strict=True):
            vb, cb = int(self._vbase[slot]), int(self._cbase[slot])
            vtx[v : v + nv] = self._vtx[vb : vb + nv]
            cum[v : v + nv] = self._cum[vb : vb + nv]
            chunks[c : c + nc] = self._chunks[cb : cb + nc]
            self._vbase[slot], self._cbase[slot] = v, c
            v += nv
            c += nc
        self._vtx, self._cum, self._chunks = vtx, cum, chunks
        self._vused, self._cused, self._garbage = v, c, 0


def _bound(d2: NDArray[np.float32]) -> NDArray[np.float32]:
    """A squared distance widened for float32 rounding, for comparing lower bounds with it."""
    return d2 * F32(1.0001) + F32(1e-4)
