"""Fleets: many trips at once, and their messages merged into one publish order.

A fleet is mostly normal trips; ``incidents`` names scenarios to mix in, one trip each,
spread through the fleet and started first (within 5 minutes) so they show early in a demo.
Normal trips start spread over ``stagger_s``. Building is cheap (a trip keeps a small script,
not its messages): 10,000 trips build in seconds; :func:`iter_fleet_messages` merges the
trips' message streams lazily, starting a trip's generator only when its first message is
due, so memory follows the trips on the road, not the fleet's total message count.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from simulators.draft import DeviceIds
from simulators.errors import ScenarioError
from simulators.gnss import NOISE_KINDS, GnssErrors
from simulators.model import SimMessage, SimTrip
from simulators.scenarios import build_trip


def _long_stop_points(trip: SimTrip) -> list[tuple[float, float]]:
    """Where a trip that must raise LONG_STOP stands."""
    if trip.script is None or not any(e["type"] == "LONG_STOP" for e in trip.expected):
        return []
    p = trip.script.plan.path
    return [
        (float(p.lon[h.vertex]), float(p.lat[h.vertex]))
        for h in trip.script.plan.halts
        if h.kind == "incident"
    ]


def build_fleet(
    n: int,
    *,
    seed: int,
    start_ms: int,
    incidents: Sequence[str] = (),
    shipper_cycle: Sequence[str] = ("pg", "unilever"),
    stagger_s: float = 1800.0,
    device_prefix: str = "",
    noise: str | GnssErrors = "clean",
) -> list[SimTrip]:
    """``n`` trips: one per name in ``incidents`` (spread through the fleet), the rest
    ``normal``. Shippers cycle through ``shipper_cycle``. Trip ids are
    ``{SHIPPER}-F{seed}-{i:06d}``; device ids ``{prefix}gps-{seed}-{i:05d}``,
    ``{prefix}lock-…`` or ``{prefix}unit-…`` (combined GPS e-lock). ``noise``: a GNSS
    error kind for every trip (``simulators.gnss.NOISE_KINDS``), or ``"mixed"``: each trip
    draws one of them (``all`` half the time)."""
    if n < len(incidents):
        raise ScenarioError(
            "fleet smaller than its list of incidents", n=n, incidents=len(incidents)
        )
    if not shipper_cycle:
        raise ScenarioError("shipper_cycle is empty")
    rng = np.random.default_rng([int(seed), 0xF1EE7])
    slots = {(k * n) // max(len(incidents), 1): name for k, name in enumerate(incidents)}
    offsets = rng.uniform(0.0, stagger_s, n)
    kinds = mixed_noise(n, seed) if noise == "mixed" else [noise] * n
    trips: list[SimTrip] = []
    all_ids: list[DeviceIds] = []
    for i in range(n):
        name = slots.get(i, "normal")
        shipper = shipper_cycle[i % len(shipper_cycle)]
        offset = offsets[i] if name == "normal" else offsets[i] % 300.0
        ids = DeviceIds(
            f"{device_prefix}gps-{seed}-{i:05d}",
            f"{device_prefix}lock-{seed}-{i:05d}",
            f"{device_prefix}unit-{seed}-{i:05d}",
        )
        all_ids.append(ids)
        trips.append(
            build_trip(
                name,
                (int(seed), i),
                start_ms=start_ms + int(offset * 1000),
                trip_id=f"{shipper.upper()}-F{seed}-{i:06d}",
                shipper=shipper,
                ids=ids,
                noise=kinds[i],
            )
        )
    _avoid_rest_areas(trips, all_ids, int(seed), kinds)
    _avoid_risk_zones(trips, all_ids, int(seed), kinds)
    return trips


def mixed_noise(n: int, seed: int) -> list[str]:
    """Noise kinds of a mixed fleet: ``all`` for half the trips, the others evenly spread
    over the single sources and ``clean``."""
    rng = np.random.default_rng([int(seed), 0x6E55])
    single = [k for k in NOISE_KINDS if k != "all"]
    p = np.array([0.5 / len(single)] * len(single) + [0.5])
    return [str(k) for k in rng.choice([*single, "all"], size=n, p=p)]


def _risk_zones(trips: Sequence[SimTrip]) -> list[tuple[int, BaseGeometry]]:
    return [
        (i, shapely.geometry.shape(g["geometry"]))
        for i, t in enumerate(trips)
        for g in t.geofences
        if g.get("properties", {}).get("kind") == "risk_zone"
    ]


def _path_line(trip: SimTrip) -> shapely.LineString | None:
    if trip.script is None:
        return None
    p = trip.script.plan.path
    return shapely.LineString(np.column_stack([p.lon, p.lat]))


def _avoid_risk_zones(
    trips: list[SimTrip], ids: list[DeviceIds], seed: int, kinds: Sequence[str | GnssErrors]
) -> None:
    """A risk zone raises RISK_ZONE_ENTRY for any truck that enters it: rebuild a fleet-mate
    whose drive comes within ~400 m of another trip's zone (beyond a multipath burst's
    reach) on another road."""
    zones = _risk_zones(trips)
    if not zones:
        return
    # ~400 m in degrees at these latitudes (the zones are compared in lon/lat)
    reach = 400.0 / 111_000.0 / 0.95
    for i, trip in enumerate(trips):
        for attempt in range(1, 10):
            line = _path_line(trip)
            if line is None or not any(j != i and line.distance(z) <= reach for j, z in zones):
                break
            trip = build_trip(
                trip.scenario,
                (seed, i, 2000 + attempt),
                start_ms=trip.first_at_ms,
                trip_id=trip.trip_id,
                shipper=trip.trip["shipper"],
                ids=ids[i],
                noise=kinds[i],
            )
        trips[i] = trip


def _avoid_rest_areas(
    trips: list[SimTrip],
    ids: list[DeviceIds],
    seed: int,
    kinds: Sequence[str | GnssErrors] | None = None,
) -> None:
    """A rest area excuses every truck that stops in it, not just its own trip's: move any
    fleet-mate's long stop that happens to fall inside one."""
    areas = [shapely.geometry.shape(g["geometry"]) for t in trips for g in t.geofences]
    if not areas:
        return
    tree = shapely.STRtree(areas)
    for i, trip in enumerate(trips):
        for attempt in range(1, 10):
            pts = _long_stop_points(trip)
            if not any(len(tree.query(shapely.Point(p), predicate="intersects")) for p in pts):
                break
            trip = build_trip(
                trip.scenario,
                (seed, i, 1000 + attempt),
                start_ms=trip.first_at_ms,
                trip_id=trip.trip_id,
                shipper=trip.trip["shipper"],
                ids=ids[i],
                noise=kinds[i] if kinds is not None else "clean",
            )
        trips[i] = trip


def iter_fleet_messages(trips: Sequence[SimTrip]) -> Iterator[SimMessage]:
    """All trips' messages in ``at_ms`` order (ties: trip order, then the trip's own order).
    A trip's generator starts when its first message is due and is dropped when done."""
    pending = sorted(range(len(trips)), key=lambda i: (trips[i].first_at_ms, i))
    heap: list[tuple[int, int, int, SimMessage, Iterator[SimMessage]]] = []
    seq = 0
    p = 0
    while heap or p < len(pending):
        # start every trip whose first message is due no later than the next one queued
        while p < len(pending) and (not heap or trips[pending[p]].first_at_ms <= heap[0][0]):
            i = pending[p]
            p += 1
            it = trips[i].iter_messages()
            first = next(it, None)
            if first is not None:
                heapq.heappush(heap, (first.at_ms, i, seq, first, it))
                seq += 1
        _, i, _, msg, it = heapq.heappop(heap)
        yield msg
        nxt = next(it, None)
        if nxt is not None:
            heapq.heappush(heap, (nxt.at_ms, i, seq, nxt, it))
            seq += 1
