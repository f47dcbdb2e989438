"""Durable engine state: export -> new engine -> upsert -> import continues exactly; dirty
tracking; a backlog older than the restored state re-run from stored history."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import AlarmType, Engine, PositionUpdate, RulesError, TripStatus
from rules.checkpoint import VERSION
from rules.state import DC, TC
from telemetry.models import Fix, LockEvent
from tests.tracks import (
    GPS,
    INCIDENTS,
    LOCK,
    MIN,
    SEC,
    STRAIGHT,
    T0,
    Live,
    Scenario,
    drive,
    lock_event,
    path,
    stay,
    trip_doc,
)

Msg = Fix | LockEvent


def _arrival_order(sc: Scenario) -> list[Msg]:
    return sorted(
        [*sc.fixes, *sc.locks], key=lambda m: (m.received_at, m.ts, isinstance(m, LockEvent))
    )


def _feed(live: Live, msgs: Sequence[Msg], batch: int) -> None:
    live.feed(
        [m for m in msgs if isinstance(m, Fix)],
        [m for m in msgs if isinstance(m, LockEvent)],
        batch=batch,
    )


def restart(live: Live, docs: Sequence[dict[str, Any]], **engine_kw: Any) -> Live:
    """Export every loaded trip, start a new engine, load the documents (with the status the
    store would hold) and import the blobs; the Live keeps its events and clock."""
    old: Engine = live.engine
    blobs = {}
    statuses = {}
    for doc in docs:
        tid = doc["trip_id"]
        try:
            blobs[tid] = old.export_trip_state(tid)
        except RulesError:
            continue  # finished: the store has it completed
        statuses[tid] = old.trip_state(tid)["status"]
    new = Engine(**engine_kw)
    for doc in docs:
        if doc["trip_id"] in blobs:
            new.upsert_trip({**doc, "status": statuses[doc["trip_id"]]})
    for tid, blob in blobs.items():
        new.import_trip_state(tid, blob)
    live.engine = new
    return live


def run_split(sc: Scenario, split: int, batch: int = 1) -> tuple[Live, Live]:
    """The scenario fed to one engine, and to one restarted after ``split`` messages."""
    msgs = _arrival_order(sc)
    one = Live(Engine())
    one.engine.upsert_trip(sc.doc)
    _feed(one, msgs, batch)
    two = Live(Engine())
    two.engine.upsert_trip(sc.doc)
    _feed(two, msgs[:split], batch)
    restart(two, [sc.doc])
    _feed(two, msgs[split:], batch)
    return one, two


def _split_at(sc: Scenario, ts: int) -> int:
    return sum(1 for m in _arrival_order(sc) if m.ts < ts)


def _assert_same(one: Live, two: Live) -> None:
    assert two.events == one.events
    assert two.flagged == one.flagged


def test_restart_in_a_long_stop_raises_it_once_at_its_threshold() -> None:
    sc = INCIDENTS["LONG_STOP"](STRAIGHT)
    one, two = run_split(sc, _split_at(sc, T0 + 14 * MIN + 20 * MIN))  # 20 min into it
    [alarm] = two.alarms(AlarmType.LONG_STOP)
    assert alarm.details["duration_min"] == pytest.approx(30.0, abs=1.0)
    assert "detected_late" not in alarm.details
    _assert_same(one, two)
    # Restarted after it was raised: not raised again, ended once.
    one, two = run_split(sc, _split_at(sc, T0 + 14 * MIN + 35 * MIN))
    assert len(two.alarms(AlarmType.LONG_STOP)) == 1
    assert [e.episode for e in two.ended(AlarmType.LONG_STOP)] == [alarm.episode]
    _assert_same(one, two)


def test_restart_in_a_route_deviation_keeps_the_episode() -> None:
    sc = INCIDENTS["ROUTE_DEVIATION"](STRAIGHT)
    one, two = run_split(sc, _split_at(sc, T0 + 14 * MIN))
    [alarm] = two.alarms(AlarmType.ROUTE_DEVIATION)
    assert [e.episode for e in two.ended(AlarmType.ROUTE_DEVIATION)] == [alarm.episode]
    _assert_same(one, two)


def test_restart_in_a_dwell() -> None:
    sc = INCIDENTS["DWELL_OVERTIME"](STRAIGHT)
    t_in = sc.fixes[-1].ts - 60 * MIN  # inside the final stop, before max_dwell_min
    one, two = run_split(sc, _split_at(sc, t_in))
    assert len(two.alarms(AlarmType.DWELL_OVERTIME)) == 1
    assert ("arrived", "S1") in two.milestones() and two.statuses()[-1] == "completed"
    _assert_same(one, two)


def test_restart_keeps_the_gps_jump_filter() -> None:
    doc = trip_doc(STRAIGHT, status="active")
    fixes = path(STRAIGHT, T0, [(500.0 * k, 0.0) for k in range(6)], interval_s=30)
    # Six fixes 10 km off and consistent with each other: five are rejected, then accepted.
    jumped = path(
        STRAIGHT, T0 + 3 * MIN, [(3000.0 + 500 * k, 10_000.0) for k in range(8)], interval_s=30
    )
    sc = Scenario(doc, fixes + jumped, [])
    for split in (len(fixes) + 2, len(fixes) + 4):
        one, two = run_split(sc, split)
        assert [flag for _, flag in two.flagged] == ["gps_jump"] * 4
        _assert_same(one, two)


def test_restart_during_a_signal_loss() -> None:
    sc = INCIDENTS["SIGNAL_LOST"](STRAIGHT)
    one, two = run_split(sc, _split_at(sc, T0 + 12 * MIN))  # silent when restarted
    [lost] = two.alarms(AlarmType.SIGNAL_LOST)
    assert [e.episode for e in two.ended(AlarmType.SIGNAL_LOST)] == [lost.episode]
    _assert_same(one, two)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(sorted(INCIDENTS)),
    st.floats(0.0, 1.0),
    st.sampled_from([1, 9]),
)
def test_a_restart_anywhere_changes_nothing(kind: str, where: float, batch: int) -> None:
    sc = INCIDENTS[kind](STRAIGHT)
    split = round(where * len(_arrival_order(sc)))
    split -= split % batch  # restart between two batches
    one, two = run_split(sc, split, batch)
    _assert_same(one, two)


WAITING = [LOCK, T0, "unlocked", None, None, None, None, None, T0 + 1, None, T0 + 2]


def _driven() -> tuple[Engine, dict[str, Any]]:
    """An engine with trip T1 driven 3 km along the straight road, and T1's document."""
    engine = Engine()
    doc = trip_doc(STRAIGHT)
    engine.upsert_trip(doc)
    Live(engine).feed(drive(STRAIGHT, T0, 0.0, 3000.0))
    return engine, doc


def test_blob_format_and_refusals() -> None:
    engine, doc = _driven()
    blob = engine.export_trip_state("T1")
    body = json.loads(blob)
    assert body["version"] == VERSION == 3 and body["trip"]["VALID_DEV"] == GPS
    assert set(body["devices"]) == {GPS, LOCK} and "status:active" in body["emitted"]
    assert all(len(row) == len(body["device_columns"]) for row in body["devices"].values())
    fresh = Engine()
    fresh.upsert_trip(doc)
    before = fresh.trip_state("T1")
    for bad in (
        json.dumps({**body, "version": 1}).encode(),  # before fence membership
        json.dumps({**body, "version": 4}).encode(),
        # device arrays: a column renamed, a row one short, no column list
        json.dumps({**body, "device_columns": ["X", *body["device_columns"][1:]]}).encode(),
        json.dumps({**body, "devices": {GPS: body["devices"][GPS][1:]}}).encode(),
        json.dumps({k: v for k, v in body.items() if k != "device_columns"}).encode(),
        json.dumps({**body, "plan": "0" * 32}).encode(),
        json.dumps({**body, "trip": {**body["trip"], "NEW_COLUMN": 1}}).encode(),
        json.dumps({**body, "progress": {"arrived": [], "unsealed": [], "left": []}}).encode(),
        # waiting lock events: of another device, of an unknown kind, a short row
        json.dumps({**body, "waiting": [["other", *WAITING[1:]]]}).encode(),
        json.dumps({**body, "waiting": [[*WAITING[:2], "opened", *WAITING[3:]]]}).encode(),
        json.dumps({**body, "waiting": [WAITING[:10]]}).encode(),
        b"\x80pickle",
    ):
        with pytest.raises(RulesError):
            fresh.import_trip_state("T1", bad)
        assert fresh.trip_state("T1") == before
    assert fresh.waiting_unlocks() == []
    fresh.import_trip_state("T1", json.dumps({**body, "waiting": [WAITING]}).encode())
    [held] = fresh.waiting_unlocks()
    assert (held.device_id, held.ts, held.event, held.received_at) == (LOCK, T0, "unlocked", T0 + 1)
    with pytest.raises(RulesError):
        fresh.import_trip_state("nope", blob)
    other = Engine()
    other.upsert_trip(trip_doc(STRAIGHT, stops_at=[5000.0, 20_000.0]))
    with pytest.raises(RulesError, match="plan"):
        other.import_trip_state("T1", blob)
    # Thresholds and ETAs may change: the state still fits.
    replanned = Engine()
    replanned.upsert_trip({**doc, "rules": {"corridor_m": 800}, "planned_start": T0 - MIN})
    replanned.import_trip_state("T1", blob)
    assert replanned.trip_state("T1")["last_fix"]["ts"] == engine.trip_state("T1")["last_fix"]["ts"]


def _as_version_2(blob: bytes) -> bytes:
    """A version 3 blob as version 2 wrote it: an object per device."""
    body = json.loads(blob)
    columns = body.pop("device_columns")
    body["devices"] = {
        d: dict(zip(columns, row, strict=True)) for d, row in body["devices"].items()
    }
    return json.dumps({**body, "version": 2}).encode()


def test_version_2_blobs_are_still_read() -> None:
    engine, doc = _driven()
    blob = engine.export_trip_state("T1")
    for stored in (blob, _as_version_2(blob)):
        fresh = Engine()
        fresh.upsert_trip(doc)
        fresh.import_trip_state("T1", stored)
        assert fresh.trip_state("T1") == engine.trip_state("T1")
        assert fresh.export_trip_state("T1") == blob


def test_infinities_and_nan_round_trip() -> None:
    """orjson writes NaN as null; a row holding an infinity is written with "inf" strings."""
    engine, doc = _driven()
    trips, devices = engine.trips, engine.devices
    slot, gps = engine._slots["T1"], devices.slot(GPS)
    trips.m[slot, TC.OFF_MAX] = math.inf
    devices.m[gps, DC.JUMP_TS] = -math.inf
    devices.m[gps, DC.LAST_SEQ] = math.nan
    body = json.loads(engine.export_trip_state("T1"))
    assert body["trip"]["OFF_MAX"] == "inf"
    row = dict(zip(body["device_columns"], body["devices"][GPS], strict=True))
    assert (row["JUMP_TS"], row["LAST_SEQ"]) == ("-inf", None)
    fresh = Engine()
    fresh.upsert_trip(doc)
    fresh.import_trip_state("T1", engine.export_trip_state("T1"))
    got, want = fresh.trips.m[fresh._slots["T1"]], trips.m[slot]
    assert np.array_equal(got, want, equal_nan=True)
    got_d = fresh.devices.m[fresh.devices.slot(GPS)]
    assert np.array_equal(got_d, devices.m[gps], equal_nan=True)


def test_take_dirty_reports_exactly_the_touched_trips() -> None:
    engine = Engine()
    for tid, dev in (("A", "a-gps"), ("B", "b-gps"), ("C", "c-gps")):
        engine.upsert_trip(trip_doc(STRAIGHT, trip_id=tid, devices=[dev]))
    assert engine.take_dirty() == ({"A", "B", "C"}, set())
    assert engine.take_dirty() == (set(), set())
    engine.upsert_trip(trip_doc(STRAIGHT, trip_id="A", devices=["a-gps"]))  # same doc
    assert engine.take_dirty() == (set(), set())
    engine.tick(T0)  # all three activate
    assert engine.take_dirty() == ({"A", "B", "C"}, set())
    engine.tick(T0 + SEC)  # nothing changes
    assert engine.take_dirty() == (set(), set())
    fix = drive(STRAIGHT, T0, 0.0, 10.0, device="b-gps")[0]
    engine.process([fix, replace(fix, device_id="stranger")], [], T0 + SEC)
    assert engine.take_dirty() == ({"B"}, set())
    engine.tick(T0 + 600_200)  # A and C silent for 600 s -> SIGNAL_LOST; B was heard
    assert engine.take_dirty() == ({"A", "C"}, set())
    engine.put_shipper_rules("pg", {"corridor_m": 900})
    assert engine.take_dirty()[0] == {"A", "B", "C"}
    engine.end_trip("C", TripStatus.CANCELLED, T0 + 11 * MIN, "desk")
    engine.upsert_trip(
        {**trip_doc(STRAIGHT, trip_id="A", devices=["a-gps"]), "status": "completed"}
    )
    assert engine.take_dirty() == (set(), {"A", "C"})
    lock = lock_event("tamper", T0 + 12 * MIN, device="b-gps")
    engine.process([], [lock], T0 + 12 * MIN)
    assert engine.take_dirty() == ({"B"}, set())
    engine.import_trip_state("B", engine.export_trip_state("B"))
    assert engine.take_dirty() == (set(), set())


class Store:
    """Stored messages, as the history callback sees them (any order)."""

    def __init__(self) -> None:
        self.fixes: list[Fix] = []
        self.locks: list[LockEvent] = []
        self.calls: list[tuple[tuple[str, ...], int, int]] = []

    def history(
        self, device_ids: Sequence[str], since_ms: int, until_ms: int
    ) -> tuple[list[Fix], list[LockEvent]]:
        self.calls.append((tuple(device_ids), since_ms, until_ms))
        ids = set(device_ids)
        pick = lambda ms: [m for m in ms if m.device_id in ids and since_ms <= m.ts <= until_ms]  # noqa: E731
        return pick(self.fixes[::-1]), pick(self.locks)


def backlog_track() -> tuple[list[Fix], list[Fix], list[Fix], list[Fix]]:
    """Live for 30 min; a 3-hour gap the GPS kept in its memory (a 2.5-hour stop, then 30 min
    1 km off route); live again after it (the first 5 min before a restart, then more)."""
    live1 = drive(STRAIGHT, T0, 0.0, 5000.0, speed_kmh=10.0, interval_s=60)
    t_gap = live1[-1].ts + MIN
    parked = stay(*STRAIGHT.point(5000.0), t_gap, 150 * 60, interval_s=120, noise_m=5.0)
    t_off = parked[-1].ts + 2 * MIN
    off = drive(STRAIGHT, t_off, 5000.0, 9000.0, speed_kmh=8.0, interval_s=120, offset_m=1000.0)
    t_back = off[-1].ts + 2 * MIN
    back = drive(STRAIGHT, t_back, 9000.0, 11_000.0, speed_kmh=10.0, interval_s=120)
    backlog = parked + off + back
    t_live = backlog[-1].ts + 2 * MIN
    live2 = drive(STRAIGHT, t_live, 11_000.0, 13_000.0, speed_kmh=20.0, interval_s=60)
    return live1, backlog, live2[:5], live2[5:]


def test_a_three_hour_backlog_after_a_restart_is_evaluated_from_stored_history() -> None:
    doc = trip_doc(STRAIGHT)
    live1, backlog, live2a, live2b = backlog_track()
    assert backlog[-1].ts - backlog[0].ts >= 3 * 3600 * SEC - 10 * MIN
    # What the rules find with every message in order.
    ordered = Live(Engine())
    ordered.engine.upsert_trip(doc)
    ordered.feed(live1 + backlog + live2a + live2b, tick=False)
    expected = {
        (a.type, a.episode)
        for a in ordered.alarms()
        if a.type in (AlarmType.LONG_STOP, AlarmType.ROUTE_DEVIATION)
    }
    assert {t for t, _ in expected} == {AlarmType.LONG_STOP, AlarmType.ROUTE_DEVIATION}
    # Live: the gap, a restart, then the backlog arrives (stored before it is evaluated).
    store = Store()
    live = Live(Engine(history=store.history))
    live.engine.upsert_trip(doc)
    live.feed(live1)
    live.run_timers(live2a[0].received_at - 1)
    live.feed(live2a)
    store.fixes += live1 + live2a
    restart(live, [doc], history=store.history)
    n = len(live.events)
    arrival = live2a[-1].received_at + 30 * SEC
    late = [replace(f, received_at=arrival) for f in backlog]
    store.fixes += late
    live.feed(late, batch=len(late), tick=False)
    live.feed(live2b)
    after = live.events[n:]
    found = {
        (e.type, e.episode)
        for e in after
        if type(e).__name__ == "AlarmSignal"
        and e.type in (AlarmType.LONG_STOP, AlarmType.ROUTE_DEVIATION)
    }
    assert found == expected
    assert all(e.details["detected_late"] for e in after if type(e).__name__ == "AlarmSignal")
    assert [e for e in after if type(e).__name__ == "Milestone"] == []  # none repeated
    ends = {e.episode for e in after if type(e).__name__ == "EpisodeEnded"}
    assert {ep for _, ep in expected} <= ends
    [(devices, since, until)] = store.calls
    assert set(devices) == {GPS, LOCK} and since == T0 and until == live2a[-1].ts
    keys = [e.episode for e in live.events if type(e).__name__ == "AlarmSignal"]
    assert len(keys) == len(set(keys))
    assert not any(isinstance(e, PositionUpdate) and e.ts < live2a[-1].ts for e in after)


def test_without_a_history_callback_old_backlogs_are_applied_as_before(caplog) -> None:
    doc = trip_doc(STRAIGHT)
    live1, backlog, live2a, _ = backlog_track()
    live = Live(Engine())
    live.engine.upsert_trip(doc)
    live.feed(live1 + live2a, tick=False)
    restart(live, [doc])
    with caplog.at_level("WARNING", logger="rules.rewind"):
        live.feed([replace(f, received_at=live2a[-1].received_at) for f in backlog], batch=500)
    assert "older than the rewind window" in caplog.text
