"""Position rules: thresholds exactly at and just below, episode ends, overrides, jitter."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rules import AlarmType, Engine
from tests.tracks import (
    GPS,
    MIN,
    SEC,
    STRAIGHT,
    T0,
    Live,
    circle,
    drive,
    path,
    stay,
    trip_doc,
)

ROUTE = AlarmType.ROUTE_DEVIATION
LONG = AlarmType.LONG_STOP
SPEED = AlarmType.SPEEDING
DWELL = AlarmType.DWELL_OVERTIME
BATTERY = AlarmType.LOW_BATTERY


def started(**kw: object) -> tuple[Engine, Live]:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, **kw))  # type: ignore[arg-type]
    return engine, Live(engine)


def excursion(offset: float, n_off: int, *, interval_s: float = 60.0, back: int = 0) -> list:
    """One on-route fix, ``n_off`` fixes ``offset`` m off the line, ``back`` on-route fixes."""
    pts = [(1000.0, 0.0)]
    pts += [(1500.0 + 500 * k, offset) for k in range(n_off)]
    pts += [(1500.0 + 500 * (n_off + k), 0.0) for k in range(back)]
    return path(STRAIGHT, T0, pts, interval_s=interval_s)


# -- ROUTE_DEVIATION ----------------------------------------------------------------------------
@pytest.mark.parametrize(("offset", "fires"), [(499.0, False), (501.0, True)])
def test_route_deviation_fires_beyond_corridor_only(offset: float, fires: bool) -> None:
    _, live = started()
    live.feed(excursion(offset, 5))
    assert bool(live.alarms(ROUTE)) is fires


def test_route_deviation_details_and_episode_key() -> None:
    _, live = started()
    fixes = excursion(800.0, 4)
    live.feed(fixes)
    [alarm] = live.alarms(ROUTE)
    first_off = fixes[1].ts
    assert alarm.ts == fixes[3].ts  # third off-route fix, 120 s after the first
    assert alarm.episode == f"T1:ROUTE_DEVIATION:{first_off}"
    assert alarm.details["off_route_since"] == first_off
    assert alarm.details["fixes"] == 3
    assert alarm.details["distance_m"] == pytest.approx(800.0, abs=2.0)
    assert alarm.details["max_distance_m"] >= alarm.details["distance_m"] - 1e-6
    assert "detected_late" not in alarm.details
    assert alarm.severity == "major"


def test_route_deviation_needs_three_fixes_even_after_long_time() -> None:
    _, live = started()
    fixes = excursion(800.0, 2, interval_s=300.0)
    live.feed(fixes)
    assert live.alarms(ROUTE) == []
    live.feed(path(STRAIGHT, fixes[-1].ts + 60 * SEC, [(4000.0, 800.0)]))
    assert len(live.alarms(ROUTE)) == 1


def test_route_deviation_needs_120_seconds_even_with_many_fixes() -> None:
    _, live = started()
    t = T0 + MIN
    times = [T0, t, t + 59 * SEC, t + 119 * SEC]
    pts = [(1000.0, 0.0), (1500.0, 700.0), (1600.0, 700.0), (1700.0, 700.0)]
    live.feed(path(STRAIGHT, T0, pts, times=times))
    assert live.alarms(ROUTE) == []
    live.feed(path(STRAIGHT, 0, [(1710.0, 700.0)], times=[t + 120 * SEC]))
    [alarm] = live.alarms(ROUTE)
    assert alarm.details["fixes"] == 4


def test_route_deviation_ends_after_two_fixes_back() -> None:
    _, live = started()
    fixes = excursion(800.0, 4, back=2)
    live.feed(fixes[:-1])
    assert len(live.alarms(ROUTE)) == 1 and live.ended(ROUTE) == []
    live.feed(fixes[-1:])
    [end] = live.ended(ROUTE)
    assert end.episode == live.alarms(ROUTE)[0].episode
    assert end.ts == fixes[-1].ts


def test_one_fix_back_does_not_split_the_episode() -> None:
    _, live = started()
    pts = [(1000.0, 0.0)] + [(1500.0 + 500 * k, 900.0) for k in range(4)]
    pts += [(3500.0, 0.0), (4000.0, 900.0), (4500.0, 900.0), (5000.0, 900.0), (5500.0, 0.0)]
    pts += [(6000.0, 0.0)]
    live.feed(path(STRAIGHT, T0, pts, interval_s=60))
    assert len(live.alarms(ROUTE)) == 1
    assert len(live.ended(ROUTE)) == 1


def test_new_episode_after_the_end() -> None:
    _, live = started()
    first = excursion(800.0, 3, back=2)
    second = [replace(f, ts=f.ts + 30 * MIN, received_at=f.received_at + 30 * MIN) for f in first]
    second = path(
        STRAIGHT,
        0,
        [(8000.0 + 500 * k, -900.0 if 0 < k < 4 else 0.0) for k in range(6)],
        times=[first[-1].ts + (k + 1) * MIN for k in range(6)],
    )
    live.feed(first + second)
    alarms = live.alarms(ROUTE)
    assert len(alarms) == 2 and alarms[0].episode != alarms[1].episode
    assert len(live.ended(ROUTE)) == 2


@pytest.mark.parametrize(
    ("doc_kw", "shipper_rules", "offset", "fires"),
    [
        ({"corridor_m": 1000.0}, None, 800.0, False),  # trip top-level field
        ({"corridor_m": 1000.0, "rules": {"corridor_m": 300.0}}, None, 400.0, True),  # rules win
        ({}, {"corridor_m": 300.0}, 400.0, True),  # shipper default
        ({"rules": {"corridor_m": 1000.0}}, {"corridor_m": 300.0}, 800.0, False),  # trip wins
        ({"rules": {"off_route_min_fixes": 5}}, None, 800.0, False),
        ({"rules": {"off_route_min_s": 300}}, None, 800.0, False),
    ],
)
def test_route_deviation_overrides(
    doc_kw: dict, shipper_rules: dict | None, offset: float, fires: bool
) -> None:
    engine = Engine()
    if shipper_rules:
        engine.put_shipper_rules("pg", shipper_rules)
    engine.upsert_trip(trip_doc(STRAIGHT, **doc_kw))
    live = Live(engine).feed(excursion(offset, 4))
    assert bool(live.alarms(ROUTE)) is fires


def test_shipper_rules_apply_to_loaded_trips_at_once() -> None:
    engine, live = started()
    engine.put_shipper_rules("pg", {"corridor_m": 300.0})
    live.feed(excursion(400.0, 4))
    assert len(live.alarms(ROUTE)) == 1


def test_fixes_inside_an_off_route_stop_are_not_off_route() -> None:
    stop_lon, stop_lat = STRAIGHT.point(5000.0, 1500.0)
    doc = trip_doc(STRAIGHT, stops_at=[20_000.0])
    doc["stops"].insert(0, {"stop_id": "S0", **circle(stop_lon, stop_lat, 300.0)})
    engine = Engine()
    engine.upsert_trip(doc)
    live = Live(engine)
    fixes = path(STRAIGHT, T0, [(4000.0, 0.0)])
    fixes += stay(stop_lon, stop_lat, T0 + MIN, 10 * 60, interval_s=60, noise_m=8.0)
    fixes += path(STRAIGHT, T0 + 12 * MIN, [(6000.0, 0.0), (6500.0, 0.0)])
    live.feed(fixes)
    assert live.alarms(ROUTE) == []
    assert ("arrived", "S0") in live.milestones()


def test_no_route_alarm_before_activation() -> None:
    _, live = started(planned_start=T0 + 86_400_000)
    live.feed(excursion(2000.0, 6))
    assert live.alarms() == []


# -- LONG_STOP ------------------------------------------------------------------------------------
def stop_scenario(
    minutes: float, *, along: float = 5000.0, **stay_kw: object
) -> tuple[list, tuple]:
    fixes = drive(STRAIGHT, T0, 1000.0, along, interval_s=60.0)
    where = STRAIGHT.point(along)
    fixes += stay(*where, fixes[-1].ts + MIN, minutes * 60, **stay_kw)  # type: ignore[arg-type]
    return fixes, where


@pytest.mark.parametrize(("minutes", "fires"), [(29.0, False), (30.0, True)])
def test_long_stop_threshold(minutes: float, fires: bool) -> None:
    _, live = started()
    fixes, where = stop_scenario(minutes)
    live.feed(fixes)
    alarms = live.alarms(LONG)
    assert bool(alarms) is fires
    if fires:
        [alarm] = alarms
        anchor = fixes[-31]
        assert alarm.ts == fixes[-1].ts
        assert alarm.episode == f"T1:LONG_STOP:{anchor.ts}"
        assert alarm.details["duration_min"] == pytest.approx(30.0)
        assert alarm.details["anchor_lon"] == pytest.approx(where[0])
        assert alarm.details["radius_m"] == 150.0


def test_long_stop_ends_when_moving_again() -> None:
    _, live = started()
    fixes, _ = stop_scenario(35.0)
    fixes += drive(STRAIGHT, fixes[-1].ts + MIN, 5200.0, 7000.0, interval_s=60.0)
    live.feed(fixes)
    [alarm] = live.alarms(LONG)
    [end] = live.ended(LONG)
    assert (
        end.episode == alarm.episode
        and end.ts == fixes[-len(drive(STRAIGHT, 0, 5200.0, 7000.0, interval_s=60.0))].ts
    )


def test_long_stop_survives_8m_jitter() -> None:
    _, live = started()
    fixes, _ = stop_scenario(31.0, noise_m=8.0)
    live.feed(fixes)
    assert len(live.alarms(LONG)) == 1


@pytest.mark.parametrize(("drift_m", "fires"), [(140.0, True), (160.0, False)])
def test_long_stop_radius_is_measured_from_the_first_fix(drift_m: float, fires: bool) -> None:
    _, live = started()
    fixes = drive(STRAIGHT, T0, 1000.0, 5000.0, interval_s=60.0)
    t = fixes[-1].ts + MIN
    fixes += stay(*STRAIGHT.point(5000.0), t, 10 * 60)
    fixes += stay(*STRAIGHT.point(5000.0, drift_m), t + 11 * MIN, 19 * 60)
    live.feed(fixes)
    assert bool(live.alarms(LONG)) is fires


@pytest.mark.parametrize(("speed", "fires"), [(5.0, True), (6.0, False), (None, True)])
def test_long_stop_speed_when_reported(speed: float | None, fires: bool) -> None:
    _, live = started()
    fixes, _ = stop_scenario(31.0, speed_kmh=speed)
    live.feed(fixes)
    assert bool(live.alarms(LONG)) is fires


@pytest.mark.parametrize(
    ("kind", "shipper", "fires"),
    [
        ("rest_area", None, False),
        ("rest_area", "pg", False),
        ("rest_area", "other", True),
        ("depot", None, True),
    ],
)
def test_long_stop_suppressed_in_rest_areas(kind: str, shipper: str | None, fires: bool) -> None:
    engine, live = started()
    fence = {"geofence_id": "G1", "kind": kind, **circle(*STRAIGHT.point(5000.0), 400.0)}
    if shipper:
        fence["shipper"] = shipper
    engine.put_geofence(fence)
    live.feed(stop_scenario(40.0)[0])
    assert bool(live.alarms(LONG)) is fires


def test_removed_rest_area_no_longer_suppresses() -> None:
    engine, live = started()
    engine.put_geofence(
        {"geofence_id": "G1", "kind": "rest_area", **circle(*STRAIGHT.point(5000.0), 400.0)}
    )
    engine.remove_geofence("G1")
    live.feed(stop_scenario(40.0)[0])
    assert len(live.alarms(LONG)) == 1


def test_long_stop_not_in_origin_nor_stop() -> None:
    _, live = started(stops_at=[5000.0, 20_000.0])
    origin = STRAIGHT.point(0.0)
    fixes = stay(*origin, T0, 60 * 60)
    fixes += drive(STRAIGHT, T0 + 61 * MIN, 0.0, 5000.0, interval_s=60.0)
    fixes += stay(*STRAIGHT.point(5000.0), fixes[-1].ts + MIN, 60 * 60)
    live.feed(fixes)
    assert live.alarms(LONG) == []


@pytest.mark.parametrize("where", ["trip", "shipper"])
def test_long_stop_override_45_min(where: str) -> None:
    engine = Engine()
    if where == "shipper":
        engine.put_shipper_rules("pg", {"stop_max_min": 45})
        engine.upsert_trip(trip_doc(STRAIGHT))
    else:
        engine.upsert_trip(trip_doc(STRAIGHT, rules={"stop_max_min": 45}))
    live = Live(engine)
    fixes, _ = stop_scenario(44.0)
    live.feed(fixes)
    assert live.alarms(LONG) == []
    live.feed(stay(*STRAIGHT.point(5000.0), fixes[-1].ts + MIN, 0))
    [alarm] = live.alarms(LONG)
    assert alarm.details["duration_min"] == pytest.approx(45.0)


# -- SPEEDING -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "fires"), [(50, False), (60, True)])
def test_speeding_needs_60_seconds(seconds: int, fires: bool) -> None:
    _, live = started()
    live.feed(drive(STRAIGHT, T0, 1000.0, 1000.0 + 95 / 3.6 * seconds, speed_kmh=95, interval_s=10))
    assert bool(live.alarms(SPEED)) is fires


def test_speeding_at_the_limit_is_not_over() -> None:
    _, live = started()
    live.feed(drive(STRAIGHT, T0, 1000.0, 5000.0, speed_kmh=90, interval_s=10))
    assert live.alarms(SPEED) == []


def test_speeding_episode_and_end() -> None:
    _, live = started()
    fast = drive(STRAIGHT, T0, 1000.0, 3000.0, speed_kmh=95, interval_s=10)
    slow = drive(STRAIGHT, fast[-1].ts + 10 * SEC, 3100.0, 3500.0, speed_kmh=80, interval_s=10)
    live.feed(fast + slow)
    [alarm] = live.alarms(SPEED)
    assert alarm.episode == f"T1:SPEEDING:{fast[0].ts}"
    assert alarm.ts == fast[0].ts + 60 * SEC
    assert alarm.details["speed_limit_kmh"] == 90.0
    [end] = live.ended(SPEED)
    assert end.episode == alarm.episode and end.ts == slow[0].ts


def test_speeding_fix_without_speed_neither_breaks_nor_extends() -> None:
    _, live = started()
    fixes = drive(STRAIGHT, T0, 1000.0, 3000.0, speed_kmh=95, interval_s=10)[:7]
    fixes[3] = replace(fixes[3], speed_kmh=None)
    live.feed(fixes)
    assert len(live.alarms(SPEED)) == 1


def test_speeding_override() -> None:
    _, live = started(rules={"speed_limit_kmh": 100, "speeding_min_s": 30})
    live.feed(drive(STRAIGHT, T0, 1000.0, 4000.0, speed_kmh=95, interval_s=10))
    assert live.alarms(SPEED) == []
    live.feed(drive(STRAIGHT, T0 + 10 * MIN, 5000.0, 6000.0, speed_kmh=101, interval_s=10))
    assert len(live.alarms(SPEED)) == 1


# -- DWELL_OVERTIME -----------------------------------------------------------------------------
def dwell_scenario(minutes: int, **doc_kw: object) -> tuple[Live, list]:
    _, live = started(stops_at=[5000.0, 20_000.0], **doc_kw)
    fixes = drive(STRAIGHT, T0, 1000.0, 4700.0, interval_s=60.0)
    fixes += stay(*STRAIGHT.point(5000.0), fixes[-1].ts + MIN, minutes * 60)
    live.feed(fixes)
    return live, fixes


@pytest.mark.parametrize(("minutes", "fires"), [(120, False), (121, True)])
def test_dwell_overtime_longer_than_max(minutes: int, fires: bool) -> None:
    live, fixes = dwell_scenario(minutes)
    alarms = live.alarms(DWELL)
    assert bool(alarms) is fires
    if fires:
        entered = fixes[-minutes - 1].ts
        assert alarms[0].episode == f"T1:DWELL_OVERTIME:S1:{entered}"
        assert alarms[0].details["stop_id"] == "S1"
        assert alarms[0].severity == "minor"


def test_dwell_overtime_per_stop_and_trip_rules() -> None:
    live, _ = dwell_scenario(31, max_dwell_min=[30, None])
    assert len(live.alarms(DWELL)) == 1
    live, _ = dwell_scenario(31, max_dwell_min=[30, None], rules={"max_dwell_min": 60})
    assert live.alarms(DWELL) == []


def test_dwell_overtime_once_per_visit_and_ends_on_leaving() -> None:
    live, fixes = dwell_scenario(130)
    assert len(live.alarms(DWELL)) == 1
    live.feed(drive(STRAIGHT, fixes[-1].ts + MIN, 5400.0, 6000.0, interval_s=60.0))
    [end] = live.ended(DWELL)
    assert end.episode == live.alarms(DWELL)[0].episode
    assert ("left", "S1") in live.milestones()


# -- LOW_BATTERY --------------------------------------------------------------------------------
def with_battery(values: list[float | None]) -> list:
    fixes = drive(STRAIGHT, T0, 1000.0, 1000.0 + 500 * len(values), interval_s=30.0)
    return [replace(f, battery_pct=b) for f, b in zip(fixes, values, strict=False)]


@pytest.mark.parametrize(("pct", "fires"), [(16.0, False), (15.0, True)])
def test_low_battery_threshold(pct: float, fires: bool) -> None:
    _, live = started()
    live.feed(with_battery([50.0, pct]))
    assert bool(live.alarms(BATTERY)) is fires


def test_low_battery_hysteresis() -> None:
    _, live = started()
    fixes = with_battery([15.0, 14.0, 18.0, 20.0, 21.0, 15.0])
    live.feed(fixes)
    alarms = live.alarms(BATTERY)
    assert [a.ts for a in alarms] == [fixes[0].ts, fixes[5].ts]
    assert alarms[0].episode == f"T1:LOW_BATTERY:{GPS}:{fixes[0].ts}"
    [end] = live.ended(BATTERY)
    assert end.episode == alarms[0].episode and end.ts == fixes[4].ts


def test_low_battery_override() -> None:
    _, live = started(rules={"low_battery_pct": 25, "low_battery_clear_pct": 40})
    live.feed(with_battery([24.0, 35.0, 41.0]))
    assert len(live.alarms(BATTERY)) == 1 and len(live.ended(BATTERY)) == 1


# -- validity: null island, GPS jumps -----------------------------------------------------------
def test_null_island_is_flagged_and_ignored() -> None:
    _, live = started()
    fixes = path(STRAIGHT, T0, [(1000.0, 0.0), (1500.0, 0.0)], interval_s=60)
    bad = replace(fixes[1], lat=0.0, lon=0.0, ts=fixes[1].ts + 1, seq=7)
    live.feed([*fixes, bad])
    assert ((GPS, bad.ts, 7), "null_island") in live.flagged
    assert live.alarms() == []


def test_gps_jump_is_flagged_not_used_and_not_previous() -> None:
    _, live = started()
    pts = [(1000.0, 0.0), (1500.0, 0.0), (2000.0, 30_000.0), (2500.0, 0.0), (3000.0, 0.0)]
    fixes = path(STRAIGHT, T0, pts, interval_s=30)
    live.feed(fixes)
    assert [f for f in live.flagged if f[1] == "gps_jump"] == [
        ((GPS, fixes[2].ts, None), "gps_jump")
    ]
    assert live.alarms() == []


def test_jump_run_of_consistent_fixes_is_accepted_after_five() -> None:
    """Safeguard: the previous valid fix was the bad one; five agreeing fixes win."""
    _, live = started()
    pts = [(1000.0, 0.0)] + [(1000.0 + 100 * k, 50_000.0) for k in range(1, 7)]
    live.feed(path(STRAIGHT, T0, pts, interval_s=10))
    assert len([f for f in live.flagged if f[1] == "gps_jump"]) == 4


def test_jump_threshold_is_250_kmh() -> None:
    _, live = started()
    # 2 km in 30 s = 240 km/h: valid; 2.2 km in 30 s = 264 km/h: a jump.
    fixes = path(STRAIGHT, T0, [(1000.0, 0.0), (3000.0, 0.0), (5200.0, 0.0)], interval_s=30)
    live.feed(fixes)
    assert [f[0][1] for f in live.flagged] == [fixes[2].ts]
