"""The engine's use of the ``geofence`` kernel: trip routes, trip fences, global geofences.

One call per batch each for route distances (``RouteSet.locate`` with per-trip hints),
trip-fence containment (``FenceSet.contains`` on the fix x own-fence pairs that survive a
bounding-box pre-filter, so fixes on the open road cost four comparisons per own fence) and
global-geofence containment (one grid ``FenceSet.query`` for all fixes, kept as pairs per
fix). Membership with hysteresis is decided per round from these and the state
(rules/membership.py), which asks ``FenceSet.beyond`` only about fixes outside a fence the
trip is inside of.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from geofence import FenceSet, GeometryError, RouteSet
from rules.errors import RulesError, TripPlanError
from rules.plan import FencePlan, TripPlan
from rules.state import TC, TripTable

__all__ = ["GF_KIND_CODE", "GF_NOTIFY", "GF_REST", "GF_RISK", "BatchGeometry", "TripGeometry"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
GF_REST, GF_RISK, GF_NOTIFY = 0, 1, 2
GF_KIND_CODE = {"rest_area": GF_REST, "risk_zone": GF_RISK, "depot": GF_NOTIFY,
                "consignee": GF_NOTIFY, "custom": GF_NOTIFY, "origin": -1, "stop": -1}  # fmt: skip
"""What a global geofence does: excuse LONG_STOP, raise RISK_ZONE_ENTRY, or notify the
shipper of entering and leaving (geofence.entered / geofence.exited)."""
_STOP_BITS = 20  # plan index packed under a priority class when choosing among stops


def fence_box(fence: FencePlan) -> tuple[float, float, float, float]:
    """A lon/lat box that surely contains the fence (circles padded by 1 %)."""
    geom = fence.geometry
    if geom["type"] == "Point":
        lon, lat = float(geom["coordinates"][0]), float(geom["coordinates"][1])
        dlat = fence.radius_m * 1.01 / 110_574.0 + 1e-9
        coslat = max(math.cos(math.radians(lat)), 1e-6)
        dlon = min(fence.radius_m * 1.01 / (111_320.0 * coslat) + 1e-9, 360.0)
        return lon - dlon, lat - dlat, lon + dlon, lat + dlat
    x0, y0, x1, y1 = shapely.geometry.shape(geom).bounds
    return x0, y0, x1, y1


class BatchGeometry:
    """Route distance, route segment and own-fence membership of each fix of a batch."""

    __slots__ = ("dist", "gf_slot", "gf_start", "in_origin", "seg", "stop")

    def __init__(self, n: int) -> None:
        self.dist: F64 = np.full(n, np.nan)
        self.seg: I64 = np.full(n, -1, dtype=np.int64)
        self.in_origin = np.zeros(n, dtype=bool)
        self.stop: I64 = np.full(n, -1, dtype=np.int64)
        # Global geofences holding fix i: gf_slot[gf_start[i] : gf_start[i + 1]].
        self.gf_start: I64 = np.zeros(n + 1, dtype=np.int64)
        self.gf_slot: I64 = np.zeros(0, dtype=np.int64)


class TripGeometry:
    """Routes and fences of the live trips plus the global geofences."""

    def __init__(self) -> None:
        self.routes = RouteSet()
        self.trip_fences = FenceSet()
        self.geofences = FenceSet()
        self._geofence_shipper: dict[int, str | None] = {}
        self._geofence_meta: dict[int, tuple[str, str | None, str]] = {}  # id, name, kind
        # Per geofence slot, for array filters: owning shipper (None: global) and kind code.
        self.gf_owner = np.full(64, None, dtype=object)
        self.gf_kind = np.full(64, -1, dtype=np.int8)

    # -- trips ------------------------------------------------------------------------------
    @staticmethod
    def _origin_key(trip_id: str) -> str:
        return f"{trip_id}\x1forigin"

    @staticmethod
    def _stop_key(trip_id: str, stop_id: str) -> str:
        return f"{trip_id}\x1fstop\x1f{stop_id}"

    def add_trip(self, plan: TripPlan) -> tuple[int, I64, I64, F64]:
        """Store the trip's route and fences: (route slot, fence slots, stop index per fence
        (-1 origin), fence boxes). TripPlanError when the geometry kernel refuses them."""
        try:
            route_slot = self.routes.add(plan.trip_id, plan.route)
            slots = [
                self.trip_fences.add(
                    self._origin_key(plan.trip_id),
                    plan.origin.geometry,
                    radius_m=plan.origin.radius_m,
                    kind="origin",
                )
            ]
            for stop in plan.stops:
                slots.append(
                    self.trip_fences.add(
                        self._stop_key(plan.trip_id, stop.stop_id),
                        stop.fence.geometry,
                        radius_m=stop.fence.radius_m,
                        kind="stop",
                    )
                )
        except GeometryError as exc:
            raise TripPlanError(exc.message, trip_id=plan.trip_id) from None
        boxes = [fence_box(plan.origin)] + [fence_box(s.fence) for s in plan.stops]
        return (
            route_slot,
            np.asarray(slots, dtype=np.int64),
            np.arange(-1, len(plan.stops), dtype=np.int64),
            np.asarray(boxes, dtype=np.float64),
        )

    def remove_trip(self, plan: TripPlan) -> None:
        """Forget the trip's route and fences."""
        if plan.trip_id in self.routes:
            self.routes.remove(plan.trip_id)
        self.remove_stop_fences(plan.trip_id, [s.stop_id for s in plan.stops])
        key = self._origin_key(plan.trip_id)
        if key in self.trip_fences:
            self.trip_fences.remove(key)

    def remove_stop_fences(self, trip_id: str, stop_ids: Sequence[str]) -> None:
        """Forget the fences of these stops of a trip (a re-planned trip dropped them)."""
        for stop_id in stop_ids:
            key = self._stop_key(trip_id, stop_id)
            if key in self.trip_fences:
                self.trip_fences.remove(key)

    def evaluate(
        self, trips: TripTable, tslot: I64, lon: F64, lat: F64, ok: npt.NDArray[np.bool_]
    ) -> BatchGeometry:
        """Route match and own-fence membership for fixes with ``ok`` and a trip slot >= 0.

        Among several of its trip's stops holding a fix, the stop the truck is already in
        wins, then the first one not yet arrived at, then plan order.
        """
        n = tslot.shape[0]
        out = BatchGeometry(n)
        sel = np.flatnonzero(ok & (tslot >= 0))
        if sel.size == 0:
            return out
        t = tslot[sel]
        slon, slat = lon[sel], lat[sel]
        match = self.routes.locate(
            trips.route_slot[t], slon, slat, trips.m[t, TC.HINT].astype(np.int64)
        )
        out.dist[sel] = match.distance_m
        out.seg[sel] = match.segment
        if self._geofence_meta:
            self._global_pairs(trips, out, sel, t, slon, slat)
        # Fix x own-fence pairs, pre-filtered by box; the kernel only sees the survivors.
        cnt = trips.fence_count[t]
        total = int(cnt.sum())
        if total == 0:
            return out
        rep = np.repeat(np.arange(sel.size), cnt)
        starts = np.cumsum(cnt) - cnt
        pos = np.repeat(trips.fence_base[t] - starts, cnt) + np.arange(total)
        box = trips.tf_box[pos]
        plon, plat = slon[rep], slat[rep]
        near = (plon >= box[:, 0]) & (plon <= box[:, 2]) & (plat >= box[:, 1]) & (plat <= box[:, 3])
        if not near.any():
            return out
        rep, pos, plon, plat = rep[near], pos[near], plon[near], plat[near]
        inside = self.trip_fences.contains(trips.tf_slot[pos], plon, plat)
        rep, stop = rep[inside], trips.tf_stop[pos[inside]]
        out.in_origin[sel[rep[stop < 0]]] = True
        at_stop = stop >= 0
        if at_stop.any():
            r, s = rep[at_stop], stop[at_stop]
            tr = t[r]
            cur = trips.m[tr, TC.CUR_STOP]
            nxt = trips.m[tr, TC.NEXT_STOP]
            klass = np.where(s == cur, 0, np.where(s >= nxt, 1, 2))
            key = (klass << _STOP_BITS) + s
            best = np.full(sel.size, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(best, r, key)
            hit = best != np.iinfo(np.int64).max
            out.stop[sel[hit]] = best[hit] & ((1 << _STOP_BITS) - 1)
        return out

    def _global_pairs(
        self, trips: TripTable, out: BatchGeometry, sel: I64, t: I64, lon: F64, lat: F64
    ) -> None:
        """Global geofences holding each fix: the grid query, then a shipper's own fences
        kept for that shipper's trips only."""
        fix, slot = self.geofences.query(lon, lat)
        if fix.size == 0:
            return
        owner = self.gf_owner[slot]
        private = np.flatnonzero(owner != None)  # noqa: E711 (element-wise on objects)
        if private.size:
            mine = owner[private] == trips.shippers[t[fix[private]]]
            keep = np.ones(fix.size, dtype=bool)
            keep[private[~mine]] = False
            fix, slot = fix[keep], slot[keep]
        counts = np.bincount(sel[fix], minlength=out.gf_start.size - 1)
        out.gf_start[1:] = np.cumsum(counts)
        out.gf_slot = slot

    def fences_at(
        self, trips: TripTable, slot: int, lon: float, lat: float
    ) -> tuple[bool, list[int]]:
        """Whether (lon, lat) is in the trip's origin, and the plan indices of its stops
        holding it."""
        base, cnt = int(trips.fence_base[slot]), int(trips.fence_count[slot])
        if cnt == 0:
            return False, []
        fslots = trips.tf_slot[base : base + cnt]
        inside = self.trip_fences.contains(fslots, np.full(cnt, lon), np.full(cnt, lat))
        stops = trips.tf_stop[base : base + cnt]
        return bool((inside & (stops < 0)).any()), stops[inside & (stops >= 0)].tolist()

    # -- global geofences -------------------------------------------------------------------
    def put_geofence(self, fence: Mapping[str, Any]) -> None:
        """Insert or replace a global geofence document (``geofence_id``, ``kind``,
        ``geometry`` GeoJSON or a Feature, ``radius_m``?, ``shipper``?)."""
        if not isinstance(fence, Mapping):
            raise RulesError("a geofence must be an object")
        gid = fence.get("geofence_id")
        if not isinstance(gid, str) or not gid:
            raise RulesError("geofence_id must be a non-empty string")
        geometry: Any = fence.get("geometry")  # FenceSet.add checks it (GeometryError)
        kind = fence.get("kind")
        props = fence.get("properties")
        if geometry is None and fence.get("type") == "Feature":
            geometry = fence
        if kind is None and isinstance(props, Mapping):
            kind = props.get("kind")
        radius = fence.get("radius_m")
        if radius is None and isinstance(props, Mapping):
            radius = props.get("radius_m")
        try:
            slot = self.geofences.add(
                gid, geometry, radius_m=200.0 if radius is None else radius, kind=kind or "custom"
            )
        except GeometryError as exc:
            raise RulesError(exc.message, geofence_id=gid) from None
        shipper = fence.get("shipper")
        owner = shipper if isinstance(shipper, str) else None
        self._geofence_shipper[slot] = owner
        name = fence.get("name")
        if name is None and isinstance(props, Mapping):
            name = props.get("name")
        self._geofence_meta[slot] = (gid, None if name is None else str(name), kind or "custom")
        if slot >= self.gf_owner.shape[0]:
            grow = max(2 * self.gf_owner.shape[0], slot + 1) - self.gf_owner.shape[0]
            self.gf_owner = np.concatenate([self.gf_owner, np.full(grow, None, dtype=object)])
            self.gf_kind = np.concatenate([self.gf_kind, np.full(grow, -1, dtype=np.int8)])
        self.gf_owner[slot] = owner
        self.gf_kind[slot] = GF_KIND_CODE[self.geofences.kind(slot)]

    def remove_geofence(self, geofence_id: str) -> None:
        """Forget a global geofence (unknown ids are ignored)."""
        if geofence_id in self.geofences:
            slot = self.geofences.slot(geofence_id)
            self.geofences.remove(geofence_id)
            self._geofence_shipper.pop(slot, None)
            self._geofence_meta.pop(slot, None)
            self.gf_owner[slot] = None
            self.gf_kind[slot] = -1

    def geofence_meta(self, slot: int) -> tuple[str, str | None, str] | None:
        """(geofence_id, name, kind) of a live global geofence slot, else None."""
        return self._geofence_meta.get(int(slot))

    def geofence_slot(self, geofence_id: str) -> int | None:
        """The slot of a live global geofence, else None."""
        return self.geofences.slot(geofence_id) if geofence_id in self.geofences else None

    def in_rest_area(self, lon: F64, lat: F64, shippers: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Whether each point lies in a rest-area geofence that is global or the shipper's."""
        out = np.zeros(lon.shape[0], dtype=bool)
        if lon.size == 0 or not self._geofence_shipper:
            return out
        fix, slot = self.geofences.query(lon, lat, kinds=("rest_area",))
        for i, s in zip(fix.tolist(), slot.tolist(), strict=True):
            owner = self._geofence_shipper.get(s)
            if owner is None or owner == shippers[i]:
                out[i] = True
        return out
