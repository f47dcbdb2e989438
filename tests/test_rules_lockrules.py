"""E-lock rules: sealing, unauthorized and out-of-sequence unlocks, completion, tamper."""

from __future__ import annotations

import pytest

from rules import AlarmType, Engine
from tests.tracks import (
    GPS,
    LOCK,
    MIN,
    SEC,
    STRAIGHT,
    T0,
    Live,
    drive,
    lock_event,
    path,
    stay,
    trip_doc,
)

UNAUTH = AlarmType.UNAUTHORIZED_UNLOCK
OOS = AlarmType.UNLOCK_OUT_OF_SEQUENCE
ORIGIN = STRAIGHT.point(0.0)


def loaded(**kw: object) -> tuple[Engine, Live]:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, **kw))  # type: ignore[arg-type]
    return engine, Live(engine)


def test_locked_at_origin_activates_and_seals() -> None:
    engine, live = loaded(planned_start=T0 + 60 * MIN)
    live.feed(locks=[lock_event("locked", T0, at=ORIGIN)])
    [status] = live.of("TripStatusChanged")
    assert status.status == "active" and status.ts == T0 and status.reason == "sealed at origin"
    assert live.milestones() == [("sealed", None)]
    assert engine.active_trips() == ["T1"]


def test_locked_outside_origin_does_not_activate() -> None:
    engine, live = loaded(planned_start=T0 + 60 * MIN)
    live.feed(locks=[lock_event("locked", T0, at=STRAIGHT.point(2000.0))])
    assert live.events == [] and engine.active_trips() == []


def test_lock_position_falls_back_to_a_recent_fix() -> None:
    _, live = loaded(planned_start=T0 + 60 * MIN)
    live.feed(stay(*ORIGIN, T0, 0))
    live.feed(locks=[lock_event("locked", T0 + 300 * SEC)])  # no own position, fix 300 s old
    assert live.milestones() == [("sealed", None)]


def test_sealed_once_when_already_active() -> None:
    _, live = loaded()
    live.feed(
        stay(*ORIGIN, T0, 0),
        [lock_event("locked", T0 + MIN, at=ORIGIN), lock_event("locked", T0 + 2 * MIN, at=ORIGIN)],
    )
    assert live.statuses() == ["active"]
    assert live.milestones() == [("sealed", None)]


def test_unlock_outside_stops_is_unauthorized() -> None:
    _, live = loaded()
    where = STRAIGHT.point(5000.0)
    live.feed(drive(STRAIGHT, T0, 0.0, 5000.0), [lock_event("unlocked", T0 + 6 * MIN, at=where)])
    [alarm] = live.alarms()
    assert alarm.type == UNAUTH and alarm.severity == "critical"
    assert alarm.episode == f"T1:UNAUTHORIZED_UNLOCK:{LOCK}:{T0 + 6 * MIN}"
    assert (alarm.lon, alarm.lat) == pytest.approx(where)
    assert alarm.details["position_source"] == "event"


@pytest.mark.parametrize(("age_s", "unknown"), [(300, False), (301, True)])
def test_unlock_position_from_last_fix_up_to_300_s(age_s: int, unknown: bool) -> None:
    _, live = loaded()
    fixes = path(STRAIGHT, T0, [(5000.0, 0.0)])
    live.feed(fixes, [lock_event("unlocked", T0 + age_s * SEC)])
    [alarm] = live.alarms(UNAUTH)
    assert alarm.details.get("position_unknown", False) is unknown
    assert (alarm.lat is None) is unknown


def test_unlock_with_no_position_at_all() -> None:
    _, live = loaded()
    live.tick(T0)
    live.feed(locks=[lock_event("unlocked", T0 + MIN)])
    [alarm] = live.alarms(UNAUTH)
    assert alarm.details["position_unknown"] is True and alarm.lat is None


def test_unlock_while_planned_is_no_alarm() -> None:
    _, live = loaded(planned_start=T0 + 60 * MIN)
    live.feed(locks=[lock_event("unlocked", T0, at=STRAIGHT.point(5000.0))])
    assert live.alarms() == []


def test_unlock_at_the_next_stop_is_the_unsealed_milestone() -> None:
    engine, live = loaded(stops_at=[5000.0, 20_000.0])
    s1 = STRAIGHT.point(5000.0)
    fixes = drive(STRAIGHT, T0, 0.0, 5000.0) + stay(*s1, T0 + 6 * MIN, 10 * 60)
    live.feed(
        fixes,
        [
            lock_event("unlocked", T0 + 8 * MIN, at=s1),
            lock_event("locked", T0 + 12 * MIN, at=s1),
            lock_event("unlocked", T0 + 13 * MIN, at=s1),
        ],
    )  # a repeat: nothing
    assert live.alarms() == []
    assert ("unsealed", "S1") in live.milestones()
    assert engine.trip_state("T1")["visited_stops"] == ["S1"]
    assert engine.trip_state("T1")["lock_state"] == "unlocked"


def test_unlock_at_a_later_stop_is_out_of_sequence() -> None:
    _, live = loaded(stops_at=[5000.0, 10_000.0, 20_000.0])
    s2 = STRAIGHT.point(10_000.0)
    # Never enters S1 (no fix there); the GPS is at S2 when the lock opens (CONTRACT v2: the
    # truck's GPS locates an unlock).
    s1_skipped = path(STRAIGHT, T0, [(3000.0, 0.0), (10_000.0, 0.0)], interval_s=300)
    live.feed(s1_skipped, [lock_event("unlocked", T0 + 6 * MIN, at=s2)])
    [alarm] = live.alarms()
    assert alarm.type == OOS and alarm.severity == "major"
    assert alarm.details["stop_id"] == "S2" and alarm.details["expected_stop_id"] == "S1"
    assert ("arrived", "S2") in live.milestones()


def test_a_stop_left_after_arrival_counts_as_visited() -> None:
    _, live = loaded(stops_at=[5000.0, 10_000.0, 20_000.0])
    fixes = drive(STRAIGHT, T0, 0.0, 10_000.0, interval_s=30)
    live.feed(fixes, [lock_event("unlocked", fixes[-1].ts + MIN, at=STRAIGHT.point(10_000.0))])
    assert live.alarms() == []
    assert ("left", "S1") in live.milestones() and ("unsealed", "S2") in live.milestones()


def test_unlock_at_a_stop_without_unlock_allowed_is_unauthorized() -> None:
    _, live = loaded(stops_at=[5000.0, 20_000.0], unlock_allowed=[False, True])
    s1 = STRAIGHT.point(5000.0)
    live.feed(drive(STRAIGHT, T0, 0.0, 5000.0), [lock_event("unlocked", T0 + 6 * MIN, at=s1)])
    [alarm] = live.alarms()
    assert alarm.type == UNAUTH and alarm.details["inside_stops"] == ["S1"]


def test_unlock_at_the_last_stop_completes_the_trip() -> None:
    engine, live = loaded()
    end = STRAIGHT.point(20_000.0)
    fixes = drive(STRAIGHT, T0, 0.0, 20_000.0)
    live.feed(fixes, [lock_event("unlocked", fixes[-1].ts + MIN, at=end)])
    assert live.milestones() == [
        ("departed", None),
        ("arrived", "S1"),
        ("unsealed", "S1"),
        ("completed", None),
    ]
    assert live.statuses() == ["active", "completed"]
    assert engine.active_trips() == [] and engine.device_trip(GPS) is None


def test_lock_at_the_last_stop_implies_arrival() -> None:
    _, live = loaded()
    end = STRAIGHT.point(20_000.0)
    live.tick(T0)
    live.feed(locks=[lock_event("unlocked", T0 + MIN, at=end)])
    assert live.milestones() == [("arrived", "S1"), ("unsealed", "S1"), ("completed", None)]


@pytest.mark.parametrize("kind", ["tamper", "rope_cut", "forced_open"])
def test_each_tamper_event_is_an_alarm(kind: str) -> None:
    _, live = loaded()
    live.tick(T0)
    live.feed(locks=[lock_event(kind, T0 + MIN), lock_event(kind, T0 + 2 * MIN)])
    alarms = live.alarms(AlarmType.LOCK_TAMPER)
    assert [a.episode for a in alarms] == [
        f"T1:LOCK_TAMPER:{LOCK}:{T0 + MIN}",
        f"T1:LOCK_TAMPER:{LOCK}:{T0 + 2 * MIN}",
    ]
    assert alarms[0].details["event"] == kind and alarms[0].severity == "critical"


def test_tamper_before_activation_is_no_alarm() -> None:
    _, live = loaded(planned_start=T0 + 60 * MIN)
    live.feed(locks=[lock_event("tamper", T0)])
    assert live.alarms() == []


def test_low_battery_event_and_battery_on_lock_events() -> None:
    _, live = loaded(devices=[GPS, LOCK, "lock-2"])
    live.tick(T0)
    live.feed(
        locks=[
            lock_event("low_battery", T0 + MIN),
            lock_event("heartbeat", T0 + 2 * MIN, device="lock-2", battery_pct=12),
            lock_event("heartbeat", T0 + 3 * MIN, device="lock-2", battery_pct=30),
        ]
    )
    alarms = live.alarms(AlarmType.LOW_BATTERY)
    assert [a.device_id for a in alarms] == [LOCK, "lock-2"]
    assert alarms[0].details["source"] == "event"
    assert [e.episode for e in live.ended()] == [alarms[1].episode]
