"""Wall-clock rules: SIGNAL_LOST and LATE_ARRIVAL, and the next-timer hint."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rules import AlarmType, Engine
from tests.tracks import GPS, LOCK, MIN, SEC, STRAIGHT, T0, Live, drive, lock_event, path, trip_doc

LOST = AlarmType.SIGNAL_LOST
LATE = AlarmType.LATE_ARRIVAL


def loaded(**kw: object) -> tuple[Engine, Live]:
    engine = Engine()
    engine.upsert_trip(trip_doc(STRAIGHT, **kw))  # type: ignore[arg-type]
    return engine, Live(engine)


def test_signal_lost_at_600_s_of_arrival_time() -> None:
    engine, live = loaded()
    [fix] = path(STRAIGHT, T0, [(1000.0, 0.0)])
    live.feed([fix])
    heard = fix.received_at
    live.tick(heard + 599_999)
    assert live.alarms() == []
    assert engine.next_timer_ms() == heard + 600_000
    live.tick(heard + 600_000)
    [alarm] = live.alarms(LOST)
    assert alarm.episode == f"T1:SIGNAL_LOST:{fix.ts}"
    assert alarm.ts == fix.ts + 600_000 and "detected_late" not in alarm.details
    assert alarm.details["last_message_ts"] == fix.ts and alarm.lat == pytest.approx(fix.lat)
    assert engine.trip_state("T1")["state"] == "signal_lost"
    live.tick(heard + 700_000)
    assert len(live.alarms(LOST)) == 1
    # The next message of any of the trip's devices ends the episode.
    live.feed(locks=[lock_event("heartbeat", T0 + 12 * MIN)])
    [end] = live.ended(LOST)
    assert end.episode == alarm.episode


def test_signal_lost_counts_from_activation_when_never_heard() -> None:
    _, live = loaded()
    live.tick(T0)
    live.tick(T0 + 600 * SEC - 1)
    assert live.alarms() == []
    live.tick(T0 + 600 * SEC)
    [alarm] = live.alarms(LOST)
    assert alarm.details["last_message_ts"] is None and alarm.device_id == GPS


def test_any_device_keeps_the_trip_heard() -> None:
    _, live = loaded()
    live.feed(path(STRAIGHT, T0, [(1000.0, 0.0)]))
    live.feed(locks=[lock_event("heartbeat", T0 + k * 5 * MIN, device=LOCK) for k in range(1, 5)])
    live.tick(T0 + 20 * MIN + 599 * SEC)
    assert live.alarms() == []


def test_signal_lost_threshold_override_and_planned_trips() -> None:
    _, live = loaded(rules={"signal_lost_s": 120})
    live.tick(T0)
    live.tick(T0 + 120 * SEC)
    assert len(live.alarms(LOST)) == 1
    _, live = loaded(planned_start=T0 + 86_400_000)
    live.tick(T0 + 3_600_000)
    assert live.alarms() == []


def test_signal_lost_again_after_a_stale_message() -> None:
    _, live = loaded()
    [fix] = path(STRAIGHT, T0, [(1000.0, 0.0)])
    live.feed([fix])
    live.tick(fix.received_at + 600_000)
    # A duplicate-ts heartbeat ends the episode without newer event time...
    live.feed(locks=[lock_event("heartbeat", fix.ts)], now=fix.received_at + 601_000)
    live.tick(fix.received_at + 1_201_000)
    alarms = live.alarms(LOST)
    assert len(alarms) == 2 and alarms[0].episode != alarms[1].episode


def test_late_arrival_at_eta_plus_tolerance_once_per_stop() -> None:
    eta = T0 + 60 * MIN
    engine, live = loaded(stops_at=[5000.0, 20_000.0], etas=[eta, None])
    live.tick(T0)
    live.tick(eta + 30 * MIN - 1)
    assert live.alarms(LATE) == []
    assert engine.next_timer_ms() is not None
    live.tick(eta + 30 * MIN)
    [alarm] = live.alarms(LATE)
    assert alarm.episode == "T1:LATE_ARRIVAL:S1" and alarm.ts == eta + 30 * MIN
    assert alarm.details["stop_id"] == "S1" and alarm.details["eta"] == eta
    live.tick(eta + 90 * MIN)
    assert len(live.alarms(LATE)) == 1


def test_no_late_arrival_once_entered() -> None:
    eta = T0 + 10 * MIN
    _, live = loaded(stops_at=[5000.0, 20_000.0], etas=[eta, None])
    live.feed(drive(STRAIGHT, T0, 0.0, 5000.0))
    live.tick(eta + 31 * MIN)
    assert live.alarms(LATE) == []


def test_late_tolerance_override_from_shipper() -> None:
    engine = Engine()
    engine.put_shipper_rules("pg", {"late_tolerance_min": 5})
    engine.upsert_trip(trip_doc(STRAIGHT, etas=[T0 + 10 * MIN]))
    live = Live(engine)
    live.tick(T0)
    live.tick(T0 + 15 * MIN)
    assert len(live.alarms(LATE)) == 1


def test_next_timer_hint() -> None:
    engine = Engine()
    assert engine.next_timer_ms() is None
    engine.upsert_trip(trip_doc(STRAIGHT, planned_start=T0 + MIN))
    assert engine.next_timer_ms() == T0 + MIN
    engine.tick(T0 + MIN)
    assert engine.next_timer_ms() == T0 + MIN + 600_000


def test_backlog_messages_count_as_heard() -> None:
    engine, live = loaded()
    fixes = drive(STRAIGHT, T0, 1000.0, 3000.0)
    late = [replace(f, received_at=T0 + 20 * MIN) for f in fixes]
    live.tick(T0)
    live.feed(late, now=T0 + 9 * MIN)
    live.tick(T0 + 9 * MIN + 599 * SEC)
    assert live.alarms(LOST) == []
    assert engine.trip_state("T1")["state"] != "signal_lost"
