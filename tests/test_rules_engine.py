"""The engine as a whole: rules x tracks invariants, batching independence, API surface."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import (
    AlarmType,
    Engine,
    MilestoneKind,
    PositionUpdate,
    RulesError,
    TripPlanError,
    TripStatus,
)
from telemetry.models import Fix
from tests.tracks import (
    GPS,
    INCIDENTS,
    LOCK,
    MIN,
    ROADS,
    STRAIGHT,
    T0,
    Live,
    Scenario,
    drive,
    lock_event,
    normal_trip,
    stay,
    trip_doc,
)

# RISK_ZONE_ENTRY needs a global geofence: its invariants are in test_rules_geofences.py.
ALL_TYPES = [t for t in AlarmType if t != AlarmType.RISK_ZONE_ENTRY]
FULL_MILESTONES = [
    ("sealed", None),
    ("departed", None),
    ("arrived", "S1"),
    ("unsealed", "S1"),
    ("completed", None),
]


def run_live(sc, *, batch: int = 1, shuffle: bool = False, **engine_kw) -> Live:
    engine = Engine(**engine_kw)
    engine.upsert_trip(sc.doc)
    live = Live(engine)
    msgs = [*sc.fixes, *sc.locks]
    if shuffle:  # messages of one batch in any order: the engine sorts them
        random.Random(7).shuffle(msgs)
    fixes = [m for m in msgs if not hasattr(m, "event")]
    locks = [m for m in msgs if hasattr(m, "event")]
    return live.feed(fixes, locks, batch=batch)


@pytest.mark.parametrize("road", ROADS)
def test_normal_trip_raises_nothing_and_reaches_every_milestone(road: str) -> None:
    live = run_live(normal_trip(ROADS[road]))
    assert live.alarms() == []
    assert live.milestones() == FULL_MILESTONES
    assert live.statuses() == ["active", "completed"]
    assert live.engine.active_trips() == []


@pytest.mark.parametrize("road", ROADS)
@pytest.mark.parametrize("rule", ALL_TYPES, ids=str)
def test_rule_invariants_on_each_track(road: str, rule: AlarmType) -> None:
    """Each incident raises exactly one alarm, of its type, with a key that batching and
    message order do not change; the normal track of the same road raises none."""
    sc = INCIDENTS[rule.value](ROADS[road])
    live = run_live(sc)
    alarms = live.alarms()
    assert [a.type for a in alarms] == [rule], [(a.type, a.ts) for a in alarms]
    [alarm] = alarms
    assert alarm.episode.startswith(f"T1:{rule.value}:")
    assert alarm.shipper == "pg" and alarm.trip_id == "T1"
    assert "detected_late" not in alarm.details
    if rule != AlarmType.SIGNAL_LOST:  # a wall-clock rule: 25-message batches hide the gap
        batched = run_live(sc, batch=25, shuffle=True)
        assert [a.episode for a in batched.alarms()] == [alarm.episode]
    # Episodes that end do so once, with the same key.
    for end in live.ended():
        assert end.episode == alarm.episode


@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_batching_does_not_change_events(batch: int) -> None:
    sc = INCIDENTS["ROUTE_DEVIATION"](STRAIGHT)
    one = run_live(sc)
    other = run_live(sc, batch=batch, shuffle=batch > 1)
    key = lambda live: sorted(  # noqa: E731
        (type(e).__name__, getattr(e, "episode", None) or str(getattr(e, "kind", "")), e.ts)
        for e in live.events
        if not isinstance(e, PositionUpdate)
    )
    assert key(one) == key(other)


def test_duplicates_are_ignored() -> None:
    sc = INCIDENTS["LOCK_TAMPER"](STRAIGHT)
    once = run_live(sc)
    sc2 = Scenario(sc.doc, sc.fixes + sc.fixes[::3], sc.locks + sc.locks)
    twice = run_live(sc2, batch=50, shuffle=True)
    assert [a.episode for a in twice.alarms()] == [a.episode for a in once.alarms()]
    assert twice.milestones() == once.milestones()


def test_positions_one_per_device_per_batch_latest() -> None:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT))
    fixes = drive(STRAIGHT, T0, 0.0, 3000.0, interval_s=30)
    lock_fixes = [replace(f, device_id=LOCK, ts=f.ts + 1) for f in fixes[:3]]
    stranger = [replace(f, device_id="other-9") for f in fixes[:2]]
    res = engine.process(fixes + lock_fixes + stranger, [], T0 + 10 * MIN)
    ups = {u.device_id: u for u in res.events if isinstance(u, PositionUpdate)}
    assert set(ups) == {GPS, LOCK, "other-9"}
    assert ups[GPS].ts == fixes[-1].ts and ups[GPS].trip_id == "T1"
    assert ups[GPS].state == "on_route" and ups[GPS].distance_to_route_m == pytest.approx(
        0.0, abs=1
    )
    assert ups["other-9"].trip_id is None and ups["other-9"].state == "idle"
    assert len(res.positions) == 3
    # An older fix later does not move the device back on the live map.
    res = engine.process([replace(fixes[0], seq=99)], [], T0 + 11 * MIN)
    assert [e for e in res.events if isinstance(e, PositionUpdate)] == []


def test_position_events_can_stay_columnar() -> None:
    engine = Engine(position_events=False)
    engine.upsert_trip(trip_doc(STRAIGHT))
    res = engine.process(drive(STRAIGHT, T0, 0.0, 1000.0), [], T0)
    assert not any(isinstance(e, PositionUpdate) for e in res.events)
    [update] = res.positions.updates()
    assert update.device_id == GPS and update.speed_kmh == 60.0


def test_queries() -> None:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT))
    assert engine.device_trip(GPS) == "T1" and engine.device_trip("nobody") is None
    assert engine.active_trips() == []
    engine.tick(T0)
    assert engine.active_trips() == ["T1"]
    engine.process(drive(STRAIGHT, T0, 0.0, 2000.0), [], T0 + MIN)
    state = engine.trip_state("T1")
    assert state["status"] == "active" and state["state"] == "on_route"
    assert state["last_fix"]["device_id"] == GPS
    assert state["next_stop"] == "S1" and state["visited_stops"] == []
    assert state["lock_state"] == "unknown" and state["departed"] is True
    with pytest.raises(RulesError):
        engine.trip_state("nope")


def test_device_moves_to_the_next_trip() -> None:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, trip_id="A"))
    engine.upsert_trip(trip_doc(STRAIGHT, trip_id="B", planned_start=T0 + 86_400_000))
    engine.tick(T0)
    assert engine.device_trip(GPS) == "A"
    events = engine.end_trip("A", TripStatus.COMPLETED, T0 + 60 * MIN, "desk")
    assert [type(e).__name__ for e in events] == ["Milestone", "TripStatusChanged"]
    assert engine.device_trip(GPS) == "B"
    assert engine.end_trip("A", TripStatus.CANCELLED, T0, "again") == []


def test_upsert_validation() -> None:
    engine = Engine()
    with pytest.raises(TripPlanError, match="status"):
        engine.upsert_trip({**trip_doc(STRAIGHT), "status": "lost"})
    with pytest.raises(TripPlanError, match="route"):
        engine.upsert_trip(
            {**trip_doc(STRAIGHT), "route": {"type": "Point", "coordinates": [0, 0]}}
        )
    with pytest.raises(RulesError):
        engine.end_trip("T1", TripStatus.ACTIVE, T0, "x")
    engine.upsert_trip({**trip_doc(STRAIGHT), "status": "completed"})
    assert engine.device_trip(GPS) is None


def test_completed_upsert_removes_a_loaded_trip() -> None:
    engine = Engine()
    doc = trip_doc(STRAIGHT)
    engine.upsert_trip(doc)
    engine.upsert_trip({**doc, "status": "cancelled"})
    assert engine.device_trip(GPS) is None
    assert engine.next_timer_ms() is None


def test_bad_engine_defaults() -> None:
    with pytest.raises(RulesError, match="unknown"):
        Engine(defaults={"corridor": 5})
    assert Engine(defaults={"corridor_m": 700})._defaults["corridor_m"] == 700.0


def test_milestone_kinds_are_the_contract_ones() -> None:
    assert {m.value for m in MilestoneKind} == {
        "sealed",
        "departed",
        "arrived",
        "unsealed",
        "left",
        "completed",
    }


def test_the_same_document_again_keeps_state() -> None:
    engine = Engine()
    doc = trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0])
    engine.upsert_trip(doc)
    live = Live(engine).feed(drive(STRAIGHT, T0, 0.0, 6000.0))
    gen = engine.trips.gen[engine._slots["T1"]]
    assert engine.upsert_trip({**doc, "status": "planned"}) == []  # a stale copy
    assert engine.trips.gen[engine._slots["T1"]] == gen
    state = engine.trip_state("T1")
    assert state["status"] == "active" and state["visited_stops"] == ["S1"]
    assert ("left", "S1") in live.milestones()


def test_an_active_document_activates_without_an_event() -> None:
    engine = Engine()
    doc = trip_doc(STRAIGHT, planned_start=T0 + 86_400_000)
    engine.upsert_trip(doc)
    engine.upsert_trip({**doc, "status": "active"})
    assert engine.active_trips() == ["T1"]
    assert engine.tick(T0) == []


def test_process_columns_matches_process() -> None:
    from rules import FixCols, LockCols

    fixes = drive(STRAIGHT, T0, 0.0, 5000.0, speed_kmh=100, interval_s=10)
    a, b = Engine(position_events=False), Engine(position_events=False)
    for e in (a, b):
        e.upsert_trip(trip_doc(STRAIGHT))
    ra = a.process(fixes, [], T0 + 10 * MIN)
    rb = b.process_columns(FixCols.from_fixes(fixes, b.devices), LockCols.empty(), T0 + 10 * MIN)
    assert [e.episode for e in ra.events if hasattr(e, "episode")] == [
        e.episode for e in rb.events if hasattr(e, "episode")
    ]
    assert ra.positions.device_ids.tolist() == rb.positions.device_ids.tolist() == [GPS]


fix_strategy = st.builds(
    lambda dev, dt, along, off, speed, bat, seq, late, null: Fix(
        device_id=dev,
        ts=T0 + dt * 1000,
        lat=0.0 if null else STRAIGHT.point(along, off)[1],
        lon=0.0 if null else STRAIGHT.point(along, off)[0],
        speed_kmh=speed,
        battery_pct=bat,
        seq=seq,
        received_at=T0 + dt * 1000 + late,
    ),
    st.sampled_from([GPS, LOCK, "stranger"]),
    st.integers(-600, 7200),
    st.floats(0, 20_000),
    st.sampled_from([0.0, 300.0, 800.0, -5000.0, 90_000.0]),
    st.none() | st.floats(0, 200),
    st.none() | st.floats(0, 100),
    st.none() | st.integers(0, 5),
    st.sampled_from([0, 500, 3_600_000]),
    st.booleans(),
)
lock_strategy = st.builds(
    lambda kind, dt, along, bat: lock_event(
        kind, T0 + dt * 1000, at=STRAIGHT.point(along), battery_pct=bat
    ),
    st.sampled_from(["locked", "unlocked", "tamper", "low_battery", "heartbeat"]),
    st.integers(-600, 7200),
    st.sampled_from([0.0, 5000.0, 20_000.0]),
    st.none() | st.floats(0, 100),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(fix_strategy, max_size=12), max_size=5), st.lists(lock_strategy, max_size=6)
)
def test_any_message_mix_is_processed(batches: list, locks: list) -> None:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0]))
    events = []
    for k, batch in enumerate(batches):
        res = engine.process(batch, locks if k == 0 else [], T0 + 3_600_000 * k)
        events += res.events + engine.tick(T0 + 3_600_000 * k)
    for e in events:
        json.dumps(getattr(e, "details", {}))
        assert isinstance(e.ts, int)
    keys = [e.episode for e in events if type(e).__name__ == "AlarmSignal"]
    assert len(keys) == len(set(keys))


# -- a late unlock waits for its truck's GPS -------------------------------------------------
# The truck drives to S1 (5 km) during a gap in coverage and is unsealed there; both devices
# flush their backlogs when it is back. The last fix before the gap is 180 s before the unlock
# (within the 300 s that may locate it) and 1.5 km short of the stop.
GAP_FROM = T0 + 3 * MIN + 30_000
UNLOCK_AT = T0 + 6 * MIN + 30_000
BACK_AT = T0 + 10 * MIN  # when both backlogs arrive


def _gap_trip() -> tuple[Engine, Live, list[Fix]]:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0]))
    live = Live(engine)
    before = drive(STRAIGHT, T0, 0.0, 3500.0)
    assert before[-1].ts == GAP_FROM
    live.feed(before)
    s1 = STRAIGHT.point(5000.0)
    gap = drive(STRAIGHT, GAP_FROM + 30_000, 3530.0, 5000.0, include_end=True)
    gap += stay(*s1, gap[-1].ts + 60_000, 3 * 60)
    return engine, live, [replace(f, received_at=BACK_AT + 1_000) for f in gap]


def _late(event: str, ts: int, **kw: object) -> Any:
    return replace(lock_event(event, ts, **kw), received_at=BACK_AT)  # type: ignore[arg-type]


def test_a_late_unlock_waits_for_the_gps_backlog_that_places_it_at_the_stop() -> None:
    engine, live, gps_backlog = _gap_trip()
    live.feed(locks=[_late("unlocked", UNLOCK_AT)])  # the lock's backlog first
    assert live.alarms() == []
    assert [e.ts for e in engine.waiting_unlocks()] == [UNLOCK_AT]
    live.feed(gps_backlog)
    assert live.alarms() == []
    assert ("unsealed", "S1") in live.milestones()
    assert engine.waiting_unlocks() == []


def test_without_the_wait_the_same_backlogs_raise_a_false_alarm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The case the wait exists for: judged at once, the unlock is located by the fix before
    the gap (1.5 km short of the stop) and the GPS backlog cannot undo the alarm."""
    monkeypatch.setattr(Engine, "_hold", lambda self, ctx, locks, ltrip, f, ftrip: (locks, ltrip))
    _, live, gps_backlog = _gap_trip()
    live.feed(locks=[_late("unlocked", UNLOCK_AT)])
    live.feed(gps_backlog)
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert alarm.details["position_source"] == "last_fix"


def test_the_lock_events_after_a_waiting_unlock_wait_with_it() -> None:
    engine, live, gps_backlog = _gap_trip()
    s1 = STRAIGHT.point(5000.0)
    relock = UNLOCK_AT + MIN
    live.feed(locks=[_late("unlocked", UNLOCK_AT), _late("locked", relock, at=s1)], batch=2)
    assert [str(e.event) for e in engine.waiting_unlocks()] == ["unlocked", "locked"]
    live.feed(gps_backlog)
    assert live.alarms() == []
    assert engine.trip_state("T1")["lock_state"] == "locked"
    assert ("unsealed", "S1") in live.milestones()


@pytest.mark.parametrize("wait_s", [None, 30])
def test_a_waiting_unlock_is_judged_when_the_gps_stays_silent(wait_s: int | None) -> None:
    """No GPS backlog comes: after ``unlock_gps_wait_s`` (default 120 s) of wall clock the
    unlock is judged on what is known, as late data."""
    engine, live, _ = _gap_trip()
    if wait_s is not None:
        engine.put_shipper_rules("pg", {"unlock_gps_wait_s": wait_s})
    wait_ms = 1000 * (wait_s or 120)
    live.feed(locks=[_late("unlocked", UNLOCK_AT)])
    live.tick(BACK_AT + wait_ms - 1000)
    assert live.alarms() == []
    assert engine.next_timer_ms() == BACK_AT + wait_ms
    live.tick(BACK_AT + wait_ms)
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert alarm.details["detected_late"] is True
    assert engine.waiting_unlocks() == []


def test_no_wait_when_unlock_gps_wait_s_is_0() -> None:
    engine, live, _ = _gap_trip()
    engine.put_shipper_rules("pg", {"unlock_gps_wait_s": 0})
    live.feed(locks=[_late("unlocked", UNLOCK_AT)])
    assert engine.waiting_unlocks() == []
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert alarm.details["position_source"] == "last_fix"


def test_a_live_unlock_never_waits() -> None:
    engine, live, _ = _gap_trip()
    live.feed(locks=[lock_event("unlocked", UNLOCK_AT)])  # received 0.5 s after
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert alarm.ts == UNLOCK_AT and engine.waiting_unlocks() == []


def test_a_waiting_unlock_survives_a_restart_in_the_checkpoint() -> None:
    engine, live, gps_backlog = _gap_trip()
    live.feed(locks=[_late("unlocked", UNLOCK_AT)])
    blob = engine.export_trip_state("T1")
    again = Engine()
    again.upsert_trip(trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0], status="active"))
    again.import_trip_state("T1", blob)
    again.import_trip_state("T1", blob)  # twice: still one waiting event
    assert [e.ts for e in again.waiting_unlocks()] == [UNLOCK_AT]
    resumed = Live(again)
    resumed.feed(gps_backlog)
    assert resumed.alarms() == []
    assert ("unsealed", "S1") in resumed.milestones()


def test_an_unloaded_trip_leaves_without_ending_and_comes_back_from_its_checkpoint() -> None:
    """``unload_trip`` (a bus-mode partition moved to another worker): no event, no ended
    span, its checkpoint not dropped; its devices report for the other trip that lists them;
    loaded again from its checkpoint it continues where it was."""
    engine = Engine()
    doc = trip_doc(STRAIGHT, status="active")
    nxt = trip_doc(STRAIGHT, trip_id="T2", planned_start=T0 + 600 * MIN)  # the same devices
    engine.upsert_trip(doc)
    engine.upsert_trip(nxt)
    live = Live(engine)
    live.feed(drive(STRAIGHT, T0, 0.0, 3000.0))
    engine.take_dirty()
    blob = engine.export_trip_state("T1")
    before = engine.trip_state("T1")
    assert engine.device_trip(GPS) == "T1"
    assert engine.unload_trip("T1") and not engine.unload_trip("T1")
    assert engine.loaded_trips() == ["T2"] and engine.device_trip(GPS) == "T2"
    with pytest.raises(RulesError):
        engine.trip_state("T1")
    _, removed = engine.take_dirty()
    assert removed == set()  # its checkpoint stays for the next owner
    assert engine.tick(T0 + 60 * MIN) == []  # nothing of T1 is judged any more
    engine.upsert_trip(doc)
    engine.import_trip_state("T1", blob)
    assert engine.device_trip(GPS) == "T1"
    assert engine.trip_state("T1") == before
    # an ended trip, by contrast, leaves its span and its checkpoint goes
    engine.upsert_trip({**doc, "status": "completed"})
    assert engine.take_dirty()[1] == {"T1"}
