"""Trip life cycle: activation, milestones, restart restore, API completion, re-planning."""

from __future__ import annotations

from rules import AlarmType, Engine, TripStatus
from tests.tracks import GPS, MIN, SEC, STRAIGHT, T0, Live, drive, lock_event, path, stay, trip_doc

ORIGIN = STRAIGHT.point(0.0)


def loaded(**kw: object) -> tuple[Engine, Live]:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, **kw))  # type: ignore[arg-type]
    return engine, Live(engine)


def test_activation_by_the_clock_at_planned_start() -> None:
    engine, live = loaded(planned_start=T0 + MIN)
    live.tick(T0 + MIN - 1)
    assert live.events == []
    live.tick(T0 + MIN)
    [status] = live.of("TripStatusChanged")
    assert (status.status, status.ts, status.reason) == ("active", T0 + MIN, "planned_start")
    assert engine.active_trips() == ["T1"]


def test_activation_by_event_time_of_a_message() -> None:
    engine, live = loaded(planned_start=T0 + MIN)
    live.feed(path(STRAIGHT, T0, [(0.0, 0.0)]), tick=False)
    assert engine.active_trips() == []
    live.feed(path(STRAIGHT, T0 + MIN, [(0.0, 0.0)]), tick=False)
    assert live.statuses() == ["active"] and live.of("TripStatusChanged")[0].ts == T0 + MIN


def test_departed_needs_the_origin_first() -> None:
    _, live = loaded()
    live.feed(drive(STRAIGHT, T0, 2000.0, 4000.0))
    assert live.milestones() == []
    _, live = loaded()
    live.feed(drive(STRAIGHT, T0, 0.0, 2000.0))
    [dep] = live.of("Milestone")
    assert dep.kind == "departed" and dep.device_id == GPS
    assert dep.ts == T0 + 30 * SEC  # the first fix outside the 300 m origin


def test_departed_after_leaving_before_activation() -> None:
    _, live = loaded(planned_start=T0 + 30 * MIN)
    live.feed(drive(STRAIGHT, T0, 0.0, 2000.0), tick=False)
    assert live.milestones() == []
    live.feed(path(STRAIGHT, T0 + 31 * MIN, [(3000.0, 0.0)]))
    assert live.milestones() == [("departed", None)]


def test_arrived_and_left_each_stop_once() -> None:
    _, live = loaded(stops_at=[5000.0, 20_000.0])
    s1 = STRAIGHT.point(5000.0)
    fixes = drive(STRAIGHT, T0, 0.0, 4800.0) + stay(*s1, T0 + 6 * MIN, 5 * 60)
    fixes += drive(STRAIGHT, T0 + 12 * MIN, 5500.0, 6000.0)  # leaves
    fixes += stay(*s1, T0 + 14 * MIN, 2 * 60)  # comes back
    fixes += drive(STRAIGHT, T0 + 17 * MIN, 5500.0, 6000.0)
    live.feed(fixes)
    assert live.milestones() == [("departed", None), ("arrived", "S1"), ("left", "S1")]
    arrived = next(m for m in live.of("Milestone") if m.kind == "arrived")
    assert arrived.stop_id == "S1" and arrived.lat is not None


def test_milestones_only_while_active() -> None:
    _, live = loaded(planned_start=T0 + 86_400_000, stops_at=[5000.0, 20_000.0])
    live.feed(drive(STRAIGHT, T0, 0.0, 8000.0))
    assert live.milestones() == []


def test_end_trip_by_the_api() -> None:
    engine, live = loaded()
    live.feed(
        path(
            STRAIGHT,
            T0,
            [(1000.0, 0.0)] + [(1500.0 + 500 * k, 900.0) for k in range(4)],
            interval_s=60,
        )
    )
    [alarm] = live.alarms(AlarmType.ROUTE_DEVIATION)
    events = engine.end_trip("T1", TripStatus.COMPLETED, T0 + 10 * MIN, "POST complete")
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["EpisodeEnded", "Milestone", "TripStatusChanged"]
    assert events[0].episode == alarm.episode
    assert events[2].status == "completed" and events[2].reason == "POST complete"
    assert engine.active_trips() == []
    engine2, _ = loaded()
    [cancel] = engine2.end_trip("T1", TripStatus.CANCELLED, T0, "POST cancel")
    assert cancel.status == "cancelled"


def test_restart_restores_progress_from_history() -> None:
    """Milestones emitted before a restart are not emitted again and count as progress."""
    doc = trip_doc(STRAIGHT, stops_at=[5000.0, 10_000.0, 20_000.0], status="active")
    history = [
        {"kind": "status", "status": "active", "ts": T0},
        {"kind": "sealed", "ts": T0 + MIN},
        {"kind": "departed", "ts": T0 + 5 * MIN},
        {"kind": "arrived", "stop_id": "S1", "ts": T0 + 10 * MIN},
        {"kind": "unsealed", "stop_id": "S1", "ts": T0 + 12 * MIN},
        {"kind": "left", "stop_id": "S1", "ts": T0 + 20 * MIN},
        {"kind": "nonsense", "ts": "x"},
    ]
    engine = Engine()
    engine.upsert_trip(doc, history)
    live = Live(engine)
    state = engine.trip_state("T1")
    assert state["status"] == "active" and state["sealed"] and state["departed"]
    assert state["visited_stops"] == ["S1"] and state["next_stop"] == "S2"
    s2 = STRAIGHT.point(10_000.0)
    fixes = stay(*ORIGIN, T0 + 30 * MIN, 60) + drive(STRAIGHT, T0 + 32 * MIN, 200.0, 10_000.0)
    live.feed(
        fixes,
        [
            lock_event("locked", T0 + 30 * MIN, at=ORIGIN),
            lock_event("unlocked", fixes[-1].ts + MIN, at=s2),
        ],
    )
    assert live.alarms() == []
    assert live.milestones() == [("arrived", "S2"), ("unsealed", "S2")]
    assert live.statuses() == []


def test_restart_inside_a_stop_continues_the_visit() -> None:
    doc = trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0], status="active")
    engine = Engine()
    engine.upsert_trip(doc, [{"kind": "arrived", "stop_id": "S1", "ts": T0}])
    live = Live(engine)
    live.feed(stay(*STRAIGHT.point(5000.0), T0 + 119 * MIN, 2 * 60))
    [alarm] = live.alarms(AlarmType.DWELL_OVERTIME)
    assert alarm.episode == f"T1:DWELL_OVERTIME:S1:{T0}"


def test_replanning_keeps_progress_by_stop_id() -> None:
    engine, live = loaded(stops_at=[5000.0, 20_000.0])
    fixes = drive(STRAIGHT, T0, 0.0, 6000.0)
    live.feed(fixes)
    assert ("left", "S1") in live.milestones()
    doc = trip_doc(STRAIGHT, stops_at=[2000.0, 5000.0, 20_000.0])
    doc["stops"][0]["stop_id"] = "S0"
    doc["stops"][1]["stop_id"] = "S1"
    doc["stops"][2]["stop_id"] = "S2"
    engine.upsert_trip(doc)
    state = engine.trip_state("T1")
    assert state["status"] == "active"
    assert state["visited_stops"] == ["S1"] and state["next_stop"] == "S0"
    assert engine.device_trip(GPS) == "T1"
