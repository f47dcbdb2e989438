"""Episode keys, suppression of repeats and the detected_late mark."""

from __future__ import annotations

import numpy as np

from rules import AlarmType, MilestoneKind, TripStatus, parse_trip
from rules.emit import Emitter, episode_key, plain
from rules.state import TripInfo
from tests.tracks import STRAIGHT, T0, trip_doc


def info() -> TripInfo:
    return TripInfo(slot=0, gen=1, plan=parse_trip(trip_doc(STRAIGHT)), device_slots=(0, 1))


def test_keys_are_deterministic() -> None:
    assert episode_key("T1", AlarmType.LONG_STOP, 1.795e12) == "T1:LONG_STOP:1795000000000"
    assert episode_key("T1", AlarmType.DWELL_OVERTIME, "S1", 5) == "T1:DWELL_OVERTIME:S1:5"


def test_repeats_are_suppressed() -> None:
    trip = info()
    em = Emitter(now_ms=T0)
    for _ in range(2):
        em.alarm(trip, AlarmType.LOCK_TAMPER, "lock-1", T0, "k1")
        em.ended(trip, AlarmType.LOCK_TAMPER, "k1", T0)
        em.milestone(trip, MilestoneKind.ARRIVED, T0, stop_index=0)
        em.status(trip, TripStatus.ACTIVE, T0, "x")
    assert [type(e).__name__ for e in em.events] == [
        "AlarmSignal",
        "EpisodeEnded",
        "Milestone",
        "TripStatusChanged",
    ]
    assert em.events[2].stop_id == "S1"


def test_detected_late() -> None:
    trip = info()
    em = Emitter(now_ms=T0)
    em.alarm(trip, AlarmType.SPEEDING, "gps-1", T0 - 60_000, "a")
    em.alarm(trip, AlarmType.SPEEDING, "gps-1", T0 - 60_001, "b")
    em.alarm(trip, AlarmType.SPEEDING, "gps-1", T0, "c", arrival_ms=T0 + 60_001)
    assert ["detected_late" in e.details for e in em.events] == [False, True, True]
    em = Emitter(now_ms=T0, rewind=True)
    em.alarm(trip, AlarmType.SPEEDING, "gps-1", T0, "d")
    assert em.events[0].details["detected_late"] is True


def test_details_are_plain_python() -> None:
    out = plain({"a": np.float64(1.5), "b": np.int64(2), "c": "x"})
    assert out == {"a": 1.5, "b": 2, "c": "x"}
    assert type(out["a"]) is float and type(out["b"]) is int
