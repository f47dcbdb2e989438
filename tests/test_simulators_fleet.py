"""Fleets: size, mix of incidents, unique ids, staggered starts, merged message order."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import shapely

from simulators import INCIDENTS, ScenarioError, SimTrip, build_fleet, iter_fleet_messages
from simulators.draft import DeviceIds
from simulators.fleet import _avoid_rest_areas, _long_stop_points
from simulators.scenarios import build_trip

START = 1_795_334_400_000


@functools.cache
def fleet_1000() -> list[SimTrip]:
    return build_fleet(1_000, seed=4, start_ms=START, incidents=INCIDENTS)


def test_fleet_of_1000_builds_with_one_of_each_incident() -> None:
    fleet = fleet_1000()
    assert len(fleet) == 1_000
    scenarios = Counter(t.scenario for t in fleet)
    assert scenarios["normal"] == 1_000 - len(INCIDENTS)
    assert all(scenarios[name] == 1 for name in INCIDENTS)
    assert len({t.trip_id for t in fleet}) == 1_000
    devices = [d for t in fleet for d in t.trip["devices"]]
    assert len(devices) == len(set(devices))
    assert {t.trip["shipper"] for t in fleet[::2]} == {"pg"}
    assert {t.trip["shipper"] for t in fleet[1::2]} == {"unilever"}
    assert all(d["shipper"] == t.trip["shipper"] for t in fleet for d in t.devices)
    starts = [t.first_at_ms - START for t in fleet]
    assert min(starts) >= 0 and max(starts) <= 1_800_000
    assert all(t.first_at_ms - START <= 300_000 for t in fleet if t.scenario != "normal")
    assert (
        sum(len(t.expected) for t in fleet)
        == sum(len(t.expected) for t in fleet if t.scenario != "normal")
        > len(INCIDENTS) - 6
    )


def test_long_stops_are_outside_every_rest_area_of_the_fleet() -> None:
    fleet = fleet_1000()
    areas = [shapely.geometry.shape(g["geometry"]) for t in fleet for g in t.geofences]
    assert areas
    for t in fleet:
        for p in _long_stop_points(t):
            assert not any(a.contains(shapely.Point(p)) for a in areas)


def test_a_long_stop_inside_a_fleet_mates_rest_area_is_moved() -> None:
    ids = DeviceIds("gps-a", "lock-a", "unit-a")
    long_stop = build_trip("long_stop", (9, 0), start_ms=START, trip_id="L", shipper="pg", ids=ids)
    (point,) = _long_stop_points(long_stop)
    area = shapely.Point(point).buffer(0.003)
    mate = build_trip(
        "normal",
        (9, 1),
        start_ms=START,
        trip_id="N",
        shipper="pg",
        ids=DeviceIds("gps-b", "lock-b", "unit-b"),
    )
    mate.geofences.append(
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(area),
            "properties": {"kind": "rest_area"},
        }
    )
    trips = [mate, long_stop]
    _avoid_rest_areas(trips, [DeviceIds("gps-b", "lock-b", "unit-b"), ids], 9)
    moved = trips[1]
    assert moved is not long_stop and moved.trip_id == "L" and moved.scenario == "long_stop"
    assert not area.contains(shapely.Point(_long_stop_points(moved)[0]))
    assert set(moved.trip["devices"]) <= {"gps-a", "lock-a", "unit-a"}


def test_fleet_is_repeatable() -> None:
    a = build_fleet(30, seed=8, start_ms=START, incidents=("tamper", "malformed"))
    b = build_fleet(30, seed=8, start_ms=START, incidents=("tamper", "malformed"))
    assert [t.trip for t in a] == [t.trip for t in b]
    assert [m.payload for m in iter_fleet_messages(a)] == [
        m.payload for m in iter_fleet_messages(b)
    ]


def test_merged_messages_are_in_publish_order() -> None:
    fleet = build_fleet(
        40, seed=2, start_ms=START, incidents=("signal_loss_backlog", "duplicates_out_of_order")
    )
    merged = list(iter_fleet_messages(fleet))
    assert [m.at_ms for m in merged] == sorted(m.at_ms for m in merged)
    assert len(merged) == sum(len(t.messages) for t in fleet)
    # each trip's own order is kept
    for t in fleet[:5]:
        mine = [m for m in merged if m.device_id in t.trip["devices"]]
        assert mine == t.messages
    assert list(iter_fleet_messages([])) == []


def test_bad_fleet_arguments() -> None:
    with pytest.raises(ScenarioError):
        build_fleet(2, seed=0, start_ms=START, incidents=("tamper", "speeding", "gps_jump"))
    with pytest.raises(ScenarioError):
        build_fleet(2, seed=0, start_ms=START, shipper_cycle=())
    with pytest.raises(ScenarioError, match="unknown scenario"):
        build_fleet(2, seed=0, start_ms=START, incidents=("bogus",))


def test_incidents_can_repeat() -> None:
    fleet = build_fleet(6, seed=1, start_ms=START, incidents=["tamper"] * 6)
    assert [t.scenario for t in fleet] == ["tamper"] * 6
    assert all(len(t.expected) == 1 for t in fleet)
    assert len({t.trip_id for t in fleet}) == 6
    assert len({d for t in fleet for d in t.trip["devices"]}) >= 6
