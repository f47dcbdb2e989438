"""Global geofences that act (CONTRACT §3-§4): RISK_ZONE_ENTRY once per entry episode,
geofence entered / exited for depot, consignee and custom fences, rest areas only excusing
LONG_STOP; LATE_ARRIVAL withdrawn by late data; an unlock located by the truck's GPS."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from rules import AlarmType, Engine, GeofenceTransition
from tests.tracks import (
    GEOD,
    MIN,
    SEC,
    STRAIGHT,
    T0,
    Live,
    arriving,
    circle,
    drive,
    lock_event,
    normal_trip,
    path,
    square,
    trip_doc,
)

RISK = AlarmType.RISK_ZONE_ENTRY
ZONE_AT = 8000.0  # chainage of the zone's centre on the normal trip's road


def _fence(gid: str, kind: str, shape: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"geofence_id": gid, "kind": kind, "name": f"{kind} {gid}", **shape, **extra}


def _run(
    fences: list[dict[str, Any]], sc: Any = None, *, batch: int = 1, shuffle: bool = False
) -> Live:
    sc = sc or normal_trip(STRAIGHT)
    engine = Engine()
    for f in fences:
        engine.put_geofence(f)
    engine.upsert_trip(sc.doc)
    msgs = [*sc.fixes, *sc.locks]
    if shuffle:
        random.Random(5).shuffle(msgs)
    fixes = [m for m in msgs if not hasattr(m, "event")]
    locks = [m for m in msgs if hasattr(m, "event")]
    return Live(engine).feed(fixes, locks, batch=batch)


def _zone(kind: str = "risk_zone", polygon: bool = False, **extra: Any) -> dict[str, Any]:
    centre = STRAIGHT.point(ZONE_AT)
    shape = square(*centre, 400.0) if polygon else circle(*centre, 400.0)
    return _fence("z1", kind, shape, **extra)


@pytest.mark.parametrize("polygon", [False, True], ids=["circle", "polygon"])
def test_risk_zone_entry_raises_once_and_ends_on_exit(polygon: bool) -> None:
    live = _run([_zone(polygon=polygon)])
    [alarm] = live.alarms()
    assert alarm.type == RISK and alarm.severity == "major"
    assert alarm.details["geofence_id"] == "z1" and alarm.details["name"] == "risk_zone z1"
    first_inside = next(
        f for f in normal_trip(STRAIGHT).fixes if abs(f.lon - STRAIGHT.point(ZONE_AT)[0]) < 0.0043
    )
    assert alarm.ts == first_inside.ts
    assert alarm.episode == f"T1:RISK_ZONE_ENTRY:z1:{alarm.ts}"
    [end] = live.ended(RISK)
    assert end.episode == alarm.episode and end.ts > alarm.ts
    # the same alarm whatever the batching and the order of messages within a batch
    again = _run([_zone(polygon=polygon)], batch=25, shuffle=True)
    assert [a.episode for a in again.alarms()] == [alarm.episode]


def test_risk_zone_drift_at_the_edge_is_one_episode_a_second_entry_another() -> None:
    doc = trip_doc(STRAIGHT)
    edge = 400.0  # the zone's radius: fixes north of its centre at these distances
    drift = [390.0, 430.0, 380.0, 470.0, 300.0, 440.0, 420.0]  # never 2 beyond 450 m in a row
    fixes = path(STRAIGHT, T0, [(ZONE_AT, y) for y in drift], speed_kmh=0.0, interval_s=60)
    live = _run([_zone()], sc=_Sc(doc, fixes))
    assert len(live.alarms(RISK)) == 1 and live.ended(RISK) == []
    t = fixes[-1].ts + MIN
    out_and_back = [edge + 100, edge + 100, 0.0]
    fixes2 = path(STRAIGHT, t, [(ZONE_AT, y) for y in out_and_back], speed_kmh=0, interval_s=60)
    live.feed(fixes2)
    alarms = live.alarms(RISK)
    assert len(alarms) == 2 and alarms[1].ts == fixes2[-1].ts
    [end] = live.ended(RISK)
    assert end.episode == alarms[0].episode and end.ts == t


class _Sc:
    def __init__(self, doc: dict[str, Any], fixes: list[Any], locks: list[Any] = ()) -> None:
        self.doc, self.fixes, self.locks = doc, fixes, list(locks)


def test_no_risk_alarm_for_a_planned_trip() -> None:
    doc = trip_doc(STRAIGHT, planned_start=T0 + 60 * MIN)
    fixes = drive(STRAIGHT, T0, 6000.0, 10_000.0)
    live = _run([_zone()], sc=_Sc(doc, fixes))
    assert live.alarms() == []


@pytest.mark.parametrize("kind", ["depot", "consignee", "custom"])
def test_entering_and_leaving_a_notifying_fence(kind: str) -> None:
    live = _run([_zone(kind)])
    assert live.alarms() == []
    moves = live.of("GeofenceTransition")
    assert [str(m.change) for m in moves] == ["entered", "exited"]
    entered, exited = moves
    assert (entered.geofence_id, entered.kind, entered.name) == ("z1", kind, f"{kind} z1")
    assert entered.trip_id == "T1" and entered.shipper == "pg" and entered.device_id == "gps-1"
    assert entered.ts < exited.ts
    assert isinstance(entered, GeofenceTransition)
    again = _run([_zone(kind)], batch=25, shuffle=True)
    assert [(m.change, m.ts) for m in again.of("GeofenceTransition")] == [
        (m.change, m.ts) for m in moves
    ]


def test_rest_areas_only_excuse_long_stop() -> None:
    live = _run([_zone("rest_area")])
    assert live.alarms() == [] and live.of("GeofenceTransition") == []


def test_a_shippers_own_fence_acts_for_its_trips_only() -> None:
    mine = _run([_zone(shipper="pg")])
    theirs = _run([_zone(shipper="acme")])
    assert len(mine.alarms(RISK)) == 1 and theirs.alarms() == []


def test_many_overlapping_fences_each_once() -> None:
    centre = STRAIGHT.point(ZONE_AT)
    fences = [_fence(f"c{k}", "custom", circle(*centre, 300.0 + 50 * k)) for k in range(6)]
    live = _run(fences)
    entered = [m.geofence_id for m in live.of("GeofenceTransition") if m.change == "entered"]
    # Four memberships at a time: the innermost two wait until a slot frees (never twice).
    assert len(entered) == len(set(entered)) >= 4


def test_a_removed_fence_ends_its_membership_quietly() -> None:
    engine = Engine()
    engine.put_geofence(_zone("depot"))
    sc = normal_trip(STRAIGHT)
    engine.upsert_trip(sc.doc)
    live = Live(engine)
    mid = T0 + 6 * MIN + int(ZONE_AT / (60 / 3.6) * 1000) + 30 * SEC  # just inside
    live.feed([f for f in sc.fixes if f.ts <= mid])
    engine.remove_geofence("z1")
    live.feed([f for f in sc.fixes if f.ts > mid], sc.locks)
    assert [str(m.change) for m in live.of("GeofenceTransition")] == ["entered"]
    assert live.statuses() == ["active", "completed"]


def test_geofence_membership_survives_a_restart() -> None:
    sc = normal_trip(STRAIGHT)
    mid = T0 + 6 * MIN + int(ZONE_AT / (60 / 3.6) * 1000) + 30 * SEC  # just inside
    one = Engine()
    one.put_geofence(_zone())
    one.upsert_trip(sc.doc)
    Live(one).feed([f for f in sc.fixes if f.ts <= mid])
    blob = one.export_trip_state("T1")
    two = Engine()
    two.put_geofence(_zone())
    two.upsert_trip(sc.doc)
    two.import_trip_state("T1", blob)
    after = Live(two).feed([f for f in sc.fixes if f.ts > mid], sc.locks)
    assert after.alarms() == []  # the entry was before the restart: not raised again
    assert len(after.ended(RISK)) == 1


# -- LATE_ARRIVAL withdrawn ---------------------------------------------------------------------
def _late_trip(spare_min: float) -> tuple[Live, Any]:
    """A trip reaching its only stop ``spare_min`` before eta + tolerance (negative: after);
    the GPS goes quiet 5 km before the stop and its backlog (stored while out of coverage)
    arrives an hour later."""
    travel = int(STRAIGHT.length_m / (60 / 3.6) * 1000)
    eta = T0 + travel - 30 * MIN + int(spare_min * MIN)  # tolerance 30 min
    doc = trip_doc(STRAIGHT, etas=[eta])
    engine = Engine()
    engine.upsert_trip(doc)
    fixes = drive(STRAIGHT, T0, 0.0, STRAIGHT.length_m)
    cut = T0 + int(15_000 / (60 / 3.6) * 1000)
    live_part = [f for f in fixes if f.ts < cut]
    backlog = arriving([f for f in fixes if f.ts >= cut], 60 * MIN)
    live = Live(engine).feed(live_part)
    live.run_timers(cut + 40 * MIN)
    live.feed(backlog)
    return live, fixes[-1]


def test_late_arrival_withdrawn_when_a_backlog_shows_the_stop_entered_in_time() -> None:
    live, _ = _late_trip(spare_min=5.0)  # entered 5 min before eta + tolerance
    [late] = live.alarms(AlarmType.LATE_ARRIVAL)
    [gone] = live.of("AlarmWithdrawn")
    assert gone.type == AlarmType.LATE_ARRIVAL and gone.episode == late.episode
    assert gone.details["stop_id"] == "S1" and gone.details["arrived_at"] <= late.ts
    assert ("arrived", "S1") in live.milestones()


def test_late_arrival_stays_when_the_backlog_shows_it_was_late() -> None:
    live, _ = _late_trip(spare_min=-20.0)  # the deadline was 20 min before arrival
    assert len(live.alarms(AlarmType.LATE_ARRIVAL)) == 1
    assert live.of("AlarmWithdrawn") == []


# -- an unlock located by the truck's GPS -------------------------------------------------------
def test_spoofed_unlock_far_from_the_gps_is_unauthorized_and_does_not_complete() -> None:
    """The probe: an ``unlocked`` event carrying the consignee's coordinates while the
    truck's own GPS unit is 54 km away."""
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT))
    consignee = STRAIGHT.point(STRAIGHT.length_m)
    away_lon, away_lat, _ = GEOD.fwd(*consignee, 200.0, 54_000.0)
    fixes = drive(STRAIGHT, T0, 0.0, 3000.0)
    t = fixes[-1].ts
    parked = [
        replace(fixes[-1], ts=t + k * MIN, received_at=t + k * MIN + 500, lon=away_lon,
                lat=away_lat, speed_kmh=0.0)
        for k in range(60, 64)
    ]  # fmt: skip
    unlock = lock_event("unlocked", parked[-1].ts + 30 * SEC, at=consignee)
    live = Live(engine).feed(fixes + parked, [unlock])
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert (alarm.lon, alarm.lat) == pytest.approx((away_lon, away_lat))
    assert alarm.details["position_source"] == "last_fix"
    assert alarm.details["lock_position"] == {"lat": consignee[1], "lon": consignee[0]}
    assert alarm.details["lock_position_trusted"] is False
    assert alarm.details["disagreement_m"] == pytest.approx(54_000.0, rel=0.01)
    assert "completed" not in live.statuses() and engine.active_trips() == ["T1"]
    assert ("unsealed", "S1") not in live.milestones()


def test_lock_position_within_the_threshold_is_trusted() -> None:
    """GPS and lock agree within lock_gps_disagree_m: the lock's own position stands."""
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0]))
    fixes = drive(STRAIGHT, T0, 0.0, 4700.0)  # the last fix 300 m before S1 (radius 200)
    unlock = lock_event("unlocked", fixes[-1].ts + 20 * SEC, at=STRAIGHT.point(5000.0))
    live = Live(engine).feed(fixes, [unlock])
    assert live.alarms() == []
    assert ("unsealed", "S1") in live.milestones()


def test_the_disagreement_threshold_is_per_trip() -> None:
    engine = Engine()
    engine.upsert_trip(
        trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0], rules={"lock_gps_disagree_m": 100.0})
    )
    fixes = drive(STRAIGHT, T0, 0.0, 4700.0)
    unlock = lock_event("unlocked", fixes[-1].ts + 20 * SEC, at=STRAIGHT.point(5000.0))
    live = Live(engine).feed(fixes, [unlock])
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert alarm.details["lock_position_trusted"] is False


def test_completion_needs_the_gps_at_the_last_stop() -> None:
    """The lock's own position at the last stop, within the threshold of a GPS fix that is
    just outside it: the unlock is authorised (the lock is corroborated) but the GPS does
    not place the truck there, so the trip is not completed."""
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT))
    end = STRAIGHT.length_m
    fixes = drive(STRAIGHT, T0, 0.0, end - 600.0)
    unlock = lock_event("unlocked", fixes[-1].ts + 20 * SEC, at=STRAIGHT.point(end))
    live = Live(engine).feed(fixes, [unlock])
    assert live.alarms() == [] and "completed" not in live.statuses()
    live.feed(drive(STRAIGHT, fixes[-1].ts + MIN, end - 300.0, end))
    live.feed(locks=[lock_event("unlocked", fixes[-1].ts + 3 * MIN, at=STRAIGHT.point(end))])
    assert live.statuses() == ["active", "completed"]
