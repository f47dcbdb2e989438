"""Backtest: replay() equals live processing; overrides change what fires."""

from __future__ import annotations

import pytest

from rules import AlarmType, Engine, PositionUpdate, RuleValueError, replay
from tests.tracks import INCIDENTS, MIN, ROADS, STRAIGHT, T0, Live, circle, normal_trip


def live_events(sc) -> list:
    engine = Engine()
    engine.upsert_trip(sc.doc)
    return Live(engine).feed(sc.fixes, sc.locks).events


def summary(events) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, PositionUpdate):
            continue
        ident = getattr(e, "episode", None) or f"{getattr(e, 'kind', '')}{getattr(e, 'status', '')}"
        out.append((type(e).__name__, ident, getattr(e, "stop_id", None), e.ts))
    return sorted(out)


@pytest.mark.parametrize("rule", list(INCIDENTS))
def test_replay_equals_live(rule: str) -> None:
    sc = INCIDENTS[rule](STRAIGHT)
    live = live_events(sc)
    replayed = replay([sc.doc], sc.fixes, sc.locks)
    assert summary(replayed) == summary(live)
    assert not any(isinstance(e, PositionUpdate) for e in replayed)


def test_replay_resets_the_trip_to_planned_and_keeps_positions_on_request() -> None:
    sc = normal_trip(ROADS["l_shaped"])
    doc = {**sc.doc, "status": "completed"}
    events = replay([doc], sc.fixes, sc.locks, positions=True)
    assert any(isinstance(e, PositionUpdate) for e in events)
    assert [e.status for e in events if type(e).__name__ == "TripStatusChanged"] == [
        "active",
        "completed",
    ]


def test_overrides_change_the_outcome() -> None:
    sc = INCIDENTS["LONG_STOP"](STRAIGHT)
    base = [e for e in replay([sc.doc], sc.fixes, sc.locks) if type(e).__name__ == "AlarmSignal"]
    assert [e.type for e in base] == [AlarmType.LONG_STOP]
    relaxed = replay([sc.doc], sc.fixes, sc.locks, overrides={"stop_max_min": 45})
    assert [e for e in relaxed if type(e).__name__ == "AlarmSignal"] == []
    strict = replay([sc.doc], sc.fixes, sc.locks, overrides={"corridor_m": 5, "stop_max_min": 45})
    assert {e.type for e in strict if type(e).__name__ == "AlarmSignal"} == {
        AlarmType.ROUTE_DEVIATION
    }


def test_shipper_rules_and_geofences() -> None:
    sc = INCIDENTS["LONG_STOP"](STRAIGHT)
    quiet = replay([sc.doc], sc.fixes, sc.locks, shipper_rules={"pg": {"stop_max_min": 60}})
    assert not [e for e in quiet if type(e).__name__ == "AlarmSignal"]
    stop_at = next(f for f in sc.fixes if f.ts >= T0 + 20 * MIN)
    rest = {"geofence_id": "R", "kind": "rest_area", **circle(stop_at.lon, stop_at.lat, 500.0)}
    quiet = replay([sc.doc], sc.fixes, sc.locks, geofences=[rest])
    assert not [e for e in quiet if type(e).__name__ == "AlarmSignal"]


def test_replay_runs_the_clock_on_until_asked() -> None:
    sc = normal_trip(STRAIGHT)
    sc.locks = sc.locks[:1]  # never unlocked: the trip stays active
    events = replay([sc.doc], sc.fixes, sc.locks, until_ms=sc.fixes[-1].ts + 11 * MIN)
    assert [e.type for e in events if type(e).__name__ == "AlarmSignal"] == [AlarmType.SIGNAL_LOST]


def test_bad_overrides() -> None:
    with pytest.raises(RuleValueError, match="valid:"):
        replay([], [], [], overrides={"speed": 1})
