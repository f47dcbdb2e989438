"""The engine's geometry: batch route/fence evaluation, fences at a point, rest areas."""

from __future__ import annotations

import numpy as np
import pytest

from rules import RulesError, TripPlanError, parse_trip
from rules.geometry import TripGeometry, fence_box
from rules.state import TC, TripTable
from tests.tracks import STRAIGHT, circle, square, trip_doc


def setup_trip(stops_at=(5000.0, 5100.0, 20_000.0)) -> tuple[TripGeometry, TripTable, int]:
    geo, trips = TripGeometry(), TripTable()
    plan = parse_trip(trip_doc(STRAIGHT, stops_at=stops_at))
    route, fslots, fstops, boxes = geo.add_trip(plan)
    slot = trips.allocate()
    trips.route_slot[slot] = route
    n = len(plan.stops)
    trips.set_stops(slot, fslots, fstops, boxes, np.ones(n, bool), np.zeros(n), np.full(n, np.inf))
    return geo, trips, slot


def test_batch_evaluation() -> None:
    geo, trips, slot = setup_trip()
    pts = [STRAIGHT.point(0.0), STRAIGHT.point(2000.0, 700.0), STRAIGHT.point(5050.0), (0.0, 0.0)]
    lon = np.array([p[0] for p in pts])
    lat = np.array([p[1] for p in pts])
    tslot = np.array([slot, slot, slot, -1])
    out = geo.evaluate(trips, tslot, lon, lat, np.array([True, True, True, False]))
    assert out.dist[:3] == pytest.approx([0.0, 700.0, 0.0], abs=0.5)
    assert np.isnan(out.dist[3]) and out.seg[3] == -1
    assert out.in_origin.tolist() == [True, False, False, False]
    assert out.stop.tolist() == [-1, -1, 0, -1]  # in S1 and S2: the first not yet arrived at
    trips.m[slot, TC.NEXT_STOP] = 1
    assert geo.evaluate(trips, tslot, lon, lat, np.ones(4, bool)).stop[2] == 1
    trips.m[slot, TC.CUR_STOP] = 0  # already inside S1: stays there
    assert geo.evaluate(trips, tslot, lon, lat, np.ones(4, bool)).stop[2] == 0


def test_fences_at_a_point() -> None:
    geo, trips, slot = setup_trip()
    assert geo.fences_at(trips, slot, *STRAIGHT.point(0.0)) == (True, [])
    assert geo.fences_at(trips, slot, *STRAIGHT.point(5050.0)) == (False, [0, 1])


def test_fence_boxes_contain_their_fence() -> None:
    lon, lat = STRAIGHT.point(100.0)
    plan = parse_trip(trip_doc(STRAIGHT))
    for fence in (plan.origin, plan.stops[0]):
        box = fence_box(getattr(fence, "fence", fence))
        assert box[0] < box[2] and box[1] < box[3]
    x0, y0, x1, y1 = fence_box(
        parse_trip({**trip_doc(STRAIGHT), "origin": square(lon, lat, 100)}).origin
    )
    assert x0 < lon < x1 and y0 < lat < y1


def test_rest_areas_by_shipper() -> None:
    geo = TripGeometry()
    a, b = STRAIGHT.point(1000.0), STRAIGHT.point(9000.0)
    geo.put_geofence({"geofence_id": "R1", "kind": "rest_area", **circle(*a, 300.0)})
    geo.put_geofence(
        {
            "type": "Feature",
            "geofence_id": "R2",
            "geometry": circle(*b)["geometry"],
            "properties": {"kind": "rest_area", "radius_m": 300.0},
            "shipper": "other",
        }
    )
    lon, lat = np.array([a[0], b[0], b[0]]), np.array([a[1], b[1], b[1]])
    assert geo.in_rest_area(lon, lat, ["pg", "pg", "other"]).tolist() == [True, False, True]
    geo.remove_geofence("R1")
    geo.remove_geofence("nope")
    assert geo.in_rest_area(lon, lat, ["pg", "pg", "other"]).tolist() == [False, False, True]


def test_geofence_errors() -> None:
    geo = TripGeometry()
    with pytest.raises(RulesError, match="geofence_id"):
        geo.put_geofence({"kind": "rest_area"})
    with pytest.raises(RulesError, match="kind"):
        geo.put_geofence({"geofence_id": "x", "kind": "beach", **circle(121.0, 31.0)})
    with pytest.raises(TripPlanError):
        geo.add_trip(parse_trip({**trip_doc(STRAIGHT), "origin": circle(121.0, 31.0, 1e6)}))
