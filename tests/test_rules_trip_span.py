"""A device serves trips one after another: its data belongs to the trip whose span
(activation .. end, in event time) holds its ts. A backlog from the device's previous, ended
trip that arrives once its next trip (maybe another shipper's) has begun is stored, and
judged by no trip; the next trip's own late data is re-run as any late data is."""

from __future__ import annotations

from rules import AlarmType, Engine, PositionUpdate, TripStatus
from rules.events import AlarmSignal, TripStatusChanged
from tests.tracks import GPS, LOCK, MIN, STRAIGHT, T0, drive, lock_event, trip_doc


def _two_trips(b_start: int = T0 + 60 * MIN, tick_at: int | None = None) -> Engine:
    """acme's trip A (the GPS on it from T0, silent after 5 min, completed at T0+30min by the
    desk), then pg's trip B with the same GPS, planned from ``b_start``; ``tick_at``: a tick
    while A still runs."""
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, trip_id="A", shipper="acme", devices=[GPS, LOCK]))
    engine.upsert_trip(
        trip_doc(STRAIGHT, trip_id="B", shipper="pg", devices=[GPS, LOCK], planned_start=b_start)
    )
    engine.tick(T0)
    engine.process(drive(STRAIGHT, T0, 0.0, 5000.0), [], T0 + 5 * MIN)
    if tick_at is not None:
        engine.tick(tick_at)
    engine.end_trip("A", TripStatus.COMPLETED, T0 + 30 * MIN, "desk")
    return engine


def _about(events: list, trip_id: str) -> list:
    return [e for e in events if getattr(e, "trip_id", None) == trip_id]


def test_a_backlog_of_the_previous_trip_is_not_judged_by_the_next() -> None:
    engine = _two_trips()
    engine.tick(T0 + 60 * MIN)
    assert engine.device_trip(GPS) == "B" and engine.active_trips() == ["B"]
    # 20 minutes of A's time, 5 km off the road: off route for B, if judged by it
    backlog = drive(STRAIGHT, T0 + 6 * MIN, 5000.0, 20000.0, offset_m=5000.0)
    assert all(T0 + 5 * MIN < f.ts <= T0 + 30 * MIN for f in backlog)
    res = engine.process(backlog, [], T0 + 61 * MIN)
    # history, not where the truck is now: no position at all (pg would see acme's track)
    assert [e for e in res.events if isinstance(e, PositionUpdate)] == []
    assert len(res.positions) == 0
    assert _about(res.events, "B") == []
    assert engine.trip_state("B")["last_fix"] is None
    for t in range(62, 80, 2):  # nor later (B heard nothing of its own: SIGNAL_LOST is right)
        kinds = {e.type for e in _about(engine.tick(T0 + t * MIN), "B")}
        assert kinds <= {AlarmType.SIGNAL_LOST}
    # B's own data is B's
    res = engine.process(drive(STRAIGHT, T0 + 82 * MIN, 0.0, 1000.0), [], T0 + 83 * MIN)
    assert {u.trip_id for u in res.events if isinstance(u, PositionUpdate)} == {"B"}


def test_a_lock_event_of_the_previous_trip_raises_nothing_on_the_next() -> None:
    engine = _two_trips()
    engine.tick(T0 + 60 * MIN)
    engine.process(drive(STRAIGHT, T0 + 61 * MIN, 0.0, 500.0), [], T0 + 62 * MIN)
    late = [lock_event("forced_open", T0 + 20 * MIN), lock_event("unlocked", T0 + 21 * MIN)]
    res = engine.process([], late, T0 + 63 * MIN)
    assert _about(res.events, "B") == []


def test_a_backlog_of_the_previous_trip_does_not_start_the_next() -> None:
    # A overran B's planned start: A's backlog from after it must not activate B
    engine = _two_trips(b_start=T0 + 20 * MIN)
    assert engine.device_trip(GPS) == "B"
    assert engine.trip_state("B")["status"] == "planned"
    res = engine.process(drive(STRAIGHT, T0 + 21 * MIN, 5000.0, 9000.0), [], T0 + 31 * MIN)
    assert _about(res.events, "B") == []
    assert engine.trip_state("B")["status"] == "planned"
    # the clock starts B (at its planned start), as it would have without the backlog
    events = engine.tick(T0 + 32 * MIN)
    assert [(e.trip_id, e.status) for e in events if isinstance(e, TripStatusChanged)] == [
        ("B", TripStatus.ACTIVE)
    ]


def test_data_after_the_previous_trip_ended_is_the_next_trips() -> None:
    # not in A's span: B's as before (here: sealed at B's origin before its planned start)
    engine = _two_trips()
    sealed = lock_event("locked", T0 + 45 * MIN, at=STRAIGHT.point(0.0))
    res = engine.process([], [sealed], T0 + 45 * MIN)
    assert engine.trip_state("B")["status"] == "active"
    assert any(isinstance(e, TripStatusChanged) and e.trip_id == "B" for e in res.events)


def test_a_trip_that_started_before_the_previous_one_ended_keeps_its_late_data() -> None:
    engine = _two_trips(b_start=T0 + 10 * MIN, tick_at=T0 + 10 * MIN)
    # (B started while A still ran: the device reported for B from then)
    res = engine.process(drive(STRAIGHT, T0 + 12 * MIN, 0.0, 2000.0), [], T0 + 31 * MIN)
    assert {u.trip_id for u in res.events if isinstance(u, PositionUpdate)} == {"B"}


def test_the_next_trips_own_backlog_is_re_run() -> None:
    """B's unit falls silent on B, drives off route in the gap; the backlog (B's own time,
    after A's end) raises ROUTE_DEVIATION on B, found late, as for any trip."""
    engine = _two_trips()
    engine.tick(T0 + 60 * MIN)
    engine.process(drive(STRAIGHT, T0 + 61 * MIN, 0.0, 3000.0), [], T0 + 65 * MIN)
    engine.process(drive(STRAIGHT, T0 + 75 * MIN, 14_000.0, 15_000.0), [], T0 + 76 * MIN)
    gap = drive(STRAIGHT, T0 + 65 * MIN, 3000.0, 13_000.0, offset_m=2000.0)
    res = engine.process(gap, [], T0 + 77 * MIN)
    alarms = [e for e in _about(res.events, "B") if isinstance(e, AlarmSignal)]
    assert [a.type for a in alarms] == [AlarmType.ROUTE_DEVIATION]
    assert alarms[0].details.get("detected_late") is True


def test_spans_of_ended_trips_are_taken_from_documents_and_from_the_store() -> None:
    # completed through the store's document (its completed_at), not through end_trip
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, trip_id="A", shipper="acme", devices=[GPS]))
    engine.tick(T0)
    engine.process(drive(STRAIGHT, T0, 0.0, 2000.0), [], T0 + 2 * MIN)
    done = {**trip_doc(STRAIGHT, trip_id="A", shipper="acme", devices=[GPS])}
    engine.upsert_trip({**done, "status": "completed", "completed_at": "2026-11-22T08:30:00Z"})
    # a restart: the span comes from the store
    fresh = Engine()
    fresh.note_ended_trip(GPS, T0, T0 + 30 * MIN)
    for e in (engine, fresh):
        e.upsert_trip(trip_doc(STRAIGHT, trip_id="B", devices=[GPS], planned_start=T0 + 60 * MIN))
        e.tick(T0 + 60 * MIN)
        res = e.process(
            drive(STRAIGHT, T0 + 6 * MIN, 5000.0, 9000.0, offset_m=5000.0), [], T0 + 61 * MIN
        )
        assert _about(res.events, "B") == []
        assert len(res.positions) == 0
