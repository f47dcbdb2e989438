"""Late data: backlogs after a signal loss, out-of-order arrivals, duplicates, the window."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from rules import AlarmType, Engine, Journal
from tests.tracks import GPS, LOCK, MIN, SEC, STRAIGHT, T0, Live, drive, lock_event, path, trip_doc

ROUTE = AlarmType.ROUTE_DEVIATION
LOST = AlarmType.SIGNAL_LOST


def loaded(**engine_kw: object) -> tuple[Engine, Live]:
    engine = Engine(**engine_kw)  # type: ignore[arg-type]
    engine.upsert_trip(trip_doc(STRAIGHT))
    return engine, Live(engine)


def gap_track() -> tuple[list, list, list]:
    """Before the gap (live), during it (the backlog: 1 km off route from 14 to 20 min),
    and the first fix after it. 30 km/h, a fix every 30 s."""
    before = path(STRAIGHT, T0, [(250.0 * k, 0.0) for k in range(21)], interval_s=30)
    t_gap = 10 * MIN + 30 * SEC
    during = path(
        STRAIGHT,
        T0 + t_gap,
        [
            (5250.0 + 250 * k, 1000.0 if 14 * MIN <= t_gap + 30 * SEC * k < 20 * MIN else 0.0)
            for k in range(29)
        ],
        interval_s=30,
    )
    after = path(STRAIGHT, T0 + 25 * MIN, [(12_500.0, 0.0)])
    return before, during, after


def test_backlog_after_signal_loss_finds_the_deviation_late() -> None:
    """The main case: silent > 600 s, the first live fix, then the backlog in one array."""
    engine, live = loaded()
    before, during, after = gap_track()
    live.feed(before)
    live.run_timers(after[0].received_at - 1)
    [lost] = live.alarms(LOST)  # raised live by the clock
    assert "detected_late" not in lost.details
    live.feed(after)  # the live fix ends the signal loss
    assert [e.episode for e in live.ended(LOST)] == [lost.episode]
    backlog = [replace(f, received_at=after[0].received_at + 5 * SEC) for f in during]
    live.feed(backlog, batch=len(backlog))
    [dev] = live.alarms(ROUTE)
    first_off = next(f for f in during if f.ts >= T0 + 14 * MIN)
    assert dev.episode == f"T1:ROUTE_DEVIATION:{first_off.ts}"
    assert dev.details["detected_late"] is True
    [end] = live.ended(ROUTE)
    assert end.episode == dev.episode and end.ts < after[0].ts
    # The live map is not moved back to the backlog's positions.
    assert engine.trip_state("T1")["last_fix"]["ts"] == after[0].ts


def test_backlog_first_is_in_order_and_late_by_arrival() -> None:
    _, live = loaded()
    before, during, after = gap_track()
    live.feed(before)
    arrival = after[0].received_at
    live.feed([replace(f, received_at=arrival) for f in during], batch=100)
    live.feed(after)
    [dev] = live.alarms(ROUTE)
    assert dev.details["detected_late"] is True


def test_late_processing_equals_in_order_processing() -> None:
    before, during, after = gap_track()
    _, ordered = loaded()
    ordered.feed(before + during + after, tick=False)
    _, late = loaded()
    late.feed(before + after, tick=False)
    late.feed([replace(f, received_at=T0 + 30 * MIN) for f in during], batch=7, tick=False)
    strip = lambda live: sorted(  # noqa: E731
        (type(e).__name__, e.episode, e.ts) for e in live.alarms() + live.ended()
    )
    assert strip(late) == strip(ordered) and strip(ordered)


def test_a_delayed_fix_is_re_sorted() -> None:
    """One fix of a run arrives after its successors: same result as in order."""
    pts = [(1000.0, 0.0)] + [(1500.0 + 500 * k, 800.0) for k in range(3)] + [(3500.0, 0.0)] * 0
    fixes = path(STRAIGHT, T0, pts, interval_s=60)
    _, ordered = loaded()
    ordered.feed(fixes)
    delayed = (
        fixes[:2] + fixes[3:] + [replace(fixes[2], received_at=fixes[3].received_at + 90 * SEC)]
    )
    _, late = loaded()
    late.feed(delayed, tick=False)
    assert [a.episode for a in late.alarms(ROUTE)] == [a.episode for a in ordered.alarms(ROUTE)]
    assert late.alarms(ROUTE)[0].details["detected_late"] is True


def test_resent_backlog_is_ignored() -> None:
    _, live = loaded()
    before, during, after = gap_track()
    live.feed(before + during + after)
    n = len(live.events)
    live.feed([replace(f, received_at=T0 + 26 * MIN) for f in during], batch=100, tick=False)
    assert live.events[n:] == [] and live.flagged == []


def test_a_live_episode_superseded_by_late_data_is_ended() -> None:
    """Live fixes after a gap are off route (an episode starting then); the backlog shows
    the deviation began during the gap: one episode, the live one is ended as superseded."""
    _, live = loaded()
    before = path(STRAIGHT, T0, [(500.0 * k, 0.0) for k in range(4)], interval_s=30)
    gap = path(
        STRAIGHT, T0 + 2 * MIN, [(2000.0 + 500 * k, 900.0) for k in range(10)], interval_s=30
    )
    after = path(
        STRAIGHT, T0 + 7 * MIN, [(7000.0 + 500 * k, 900.0) for k in range(5)], interval_s=60
    )
    live.feed(before + after, tick=False)
    [live_alarm] = live.alarms(ROUTE)
    assert live_alarm.episode == f"T1:ROUTE_DEVIATION:{after[0].ts}"
    live.feed([replace(f, received_at=T0 + 12 * MIN) for f in gap], batch=100, tick=False)
    alarms = live.alarms(ROUTE)
    assert [a.episode for a in alarms] == [live_alarm.episode, f"T1:ROUTE_DEVIATION:{gap[0].ts}"]
    [end] = live.ended(ROUTE)
    assert end.episode == live_alarm.episode and end.details["superseded"] is True


def test_late_unlock_takes_its_position_from_the_backlog() -> None:
    _, live = loaded()
    before, during, after = gap_track()
    live.feed(before + after)
    unlock = replace(lock_event("unlocked", during[5].ts + 10 * SEC), received_at=T0 + 26 * MIN)
    live.feed([replace(f, received_at=T0 + 26 * MIN) for f in during], [unlock], batch=1000)
    [alarm] = live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)
    assert alarm.details["detected_late"] is True
    assert alarm.details["position_source"] == "last_fix"
    assert alarm.lon == during[5].lon


def test_late_data_beyond_the_window_is_still_applied(caplog) -> None:
    _, live = loaded(journal=Journal(interval_ms=1, max_checkpoints=1, max_rows=4))
    before, during, after = gap_track()
    live.feed(before + after, tick=False)
    with caplog.at_level(logging.WARNING, logger="rules.rewind"):
        live.feed([replace(f, received_at=T0 + 30 * MIN) for f in during], batch=100, tick=False)
    assert "older than the rewind window" in caplog.text
    [dev] = live.alarms(ROUTE)
    assert dev.details["detected_late"] is True


def test_other_device_skew_is_not_late_data() -> None:
    engine, live = loaded()
    fixes = drive(STRAIGHT, T0, 1000.0, 3000.0, interval_s=10)
    lock_fixes = [
        replace(f, device_id=LOCK, ts=f.ts - 30 * SEC, received_at=f.received_at + 5 * SEC)
        for f in fixes
    ]
    live.feed(fixes + lock_fixes, tick=False)
    assert live.alarms() == []
    assert engine.trip_state("T1")["last_fix"]["device_id"] in (GPS, LOCK)


def test_journal_is_bounded() -> None:
    journal = Journal(interval_ms=1_000, max_checkpoints=3, max_rows=50)
    _, live = loaded(journal=journal)
    fixes = drive(STRAIGHT, T0, 0.0, 19_000.0, interval_s=10)
    live.feed(fixes, batch=5, tick=False)
    assert len(journal.checkpoints) <= 3
    assert sum(len(c.fixes) + len(c.locks) for c in journal.chunks) <= 50 + 5
    assert journal.first_seq >= journal.checkpoints[0].chunk_seq


def test_many_late_trips_in_one_batch_equal_in_order_processing() -> None:
    """Late data for several trips in one batch (rewound together in one run) gives what
    each trip gives in order."""
    before, during, after = gap_track()
    docs = [
        trip_doc(STRAIGHT, trip_id=f"T{k}", devices=[f"gps-{k}", f"lock-{k}"]) for k in range(4)
    ]

    def mine(fixes: list, k: int) -> list:
        return [replace(f, device_id=f"gps-{k}") for f in fixes]

    def engine() -> Live:
        e = Engine()
        for doc in docs:
            e.upsert_trip(doc)
        return Live(e)

    ordered = engine()
    ordered.feed([f for k in range(4) for f in mine(before + during + after, k)], tick=False)
    late = engine()
    late.feed([f for k in range(4) for f in mine(before + after, k)], tick=False)
    backlog = [replace(f, received_at=T0 + 30 * MIN) for k in range(3) for f in mine(during, k)]
    late.feed(backlog, batch=len(backlog), tick=False)
    late.feed(mine(during, 3), batch=len(during), tick=False)  # another batch, later
    strip = lambda live: sorted(  # noqa: E731
        (type(e).__name__, e.episode, e.ts) for e in live.alarms() + live.ended()
    )
    assert strip(late) == strip(ordered) and len(ordered.alarms(ROUTE)) == 4
    assert all(a.details["detected_late"] for a in late.alarms(ROUTE))


def test_a_late_tamper_needs_no_rewind() -> None:
    """A tamper older than its device's data changes no event-time state: applied directly
    (found late), with the same result as a rewind."""
    engine, live = loaded()
    fixes = drive(STRAIGHT, T0, 0.0, 8000.0, interval_s=30)
    live.feed([*fixes, lock_event("heartbeat", fixes[-1].ts, device=GPS)], tick=False)
    tamper = replace(
        lock_event("tamper", fixes[-1].ts - 40 * SEC, device=GPS), received_at=fixes[-1].ts
    )
    state = engine.trips.m.copy()
    called = []
    real = engine.journal.snapshots_for
    engine.journal.snapshots_for = lambda *a: called.append(a) or real(*a)  # type: ignore[method-assign]
    live.feed([], [tamper], tick=False)
    assert called == []
    [alarm] = live.alarms(AlarmType.LOCK_TAMPER)
    assert alarm.ts == tamper.ts and alarm.details["detected_late"] is True
    assert alarm.lon is not None
    assert np.array_equal(engine.trips.m, state, equal_nan=True)
    # A late unlock does change state: its trip is rewound.
    unlock = replace(lock_event("unlocked", fixes[-1].ts - 50 * SEC, device=GPS), received_at=0)
    live.feed([], [unlock], tick=False)
    assert len(called) == 1 and len(live.alarms(AlarmType.UNAUTHORIZED_UNLOCK)) == 1
