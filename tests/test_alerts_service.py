from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from alerts import (
    AlarmNotFound,
    AlarmService,
    ConflictError,
    CountingAlertMetrics,
    LiveHub,
    TransitionError,
    ValidationError,
    iso,
)
from core.clock import ManualClock
from rules.events import (
    AlarmType,
    AlarmWithdrawn,
    EpisodeEnded,
    GeofenceChange,
    GeofenceTransition,
    Milestone,
    MilestoneKind,
    PositionUpdate,
    TripStatus,
    TripStatusChanged,
)
from tests.alerts_support import T0, make_store, put_trip, signal

MIN = 60_000


@pytest.fixture
def store(tmp_path: Path):
    store = make_store(tmp_path)
    put_trip(store, "T1", "pg")
    put_trip(store, "T2", "acme")
    store.put_webhook({"webhook_id": "wh-pg", "shipper": "pg", "url": "http://x/", "secret": "s",
                       "events": ["alarm.raised", "alarm.acknowledged", "alarm.resolved",
                                  "alarm.escalated", "trip.milestone"]})  # fmt: skip
    yield store
    store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def hub() -> LiveHub:
    return LiveHub()


@pytest.fixture
def service(store, clock, hub) -> AlarmService:
    return AlarmService(store, clock, hub, metrics=CountingAlertMetrics())


def webhook_types(store, alarm_id: str | None = None) -> list[str]:
    rows = sorted(store.list_deliveries(limit=1000), key=lambda r: r["seq"])
    bodies = [json.loads(r["body"]) for r in rows]
    return [b["type"] for b in bodies if alarm_id is None or b["data"].get("alarm_id") == alarm_id]


def test_signal_raises_one_alarm_per_episode(service, store, clock, hub) -> None:
    sub = hub.subscribe()
    created = service.handle([signal(details={"cut": True})])
    assert len(created) == 1
    doc = created[0]
    assert doc["status"] == "open" and doc["raised_at"] == T0 and doc["escalation_level"] == 0
    assert store.get_alarm(doc["alarm_id"])["details"] == {"cut": True}
    clock.advance(60)
    # re-emitted after a restart of the engine, and twice in one batch
    again = AlarmService(store, clock, hub).handle([signal(), signal()])
    assert again == []
    assert len(store.list_alarms()) == 1
    assert [h["action"] for h in store.alarm_history(doc["alarm_id"])] == ["raised"]
    assert webhook_types(store) == ["alarm.raised"]
    events = sub.drain()
    assert [e["type"] for e in events] == ["alarm.raised"]
    assert events[0]["shipper"] == "pg" and events[0]["data"]["alarm_id"] == doc["alarm_id"]
    assert service.metrics.count("alarm_raised", "LOCK_TAMPER") == 1


def test_raised_alarm_view_and_webhook_body(service, store) -> None:
    (doc,) = service.handle([signal(AlarmType.ROUTE_DEVIATION, details={"distance_m": 640})])
    view = service.get(doc["alarm_id"])
    assert view["type"] == "ROUTE_DEVIATION" and view["severity"] == "major"
    assert view["trip_id"] == "T1" and view["device_id"] == "lock-T1" and view["shipper"] == "pg"
    assert view["ts"] == iso(T0 - 5000) and view["raised_at"] == iso(T0)
    assert view["lat"] == 31.23 and view["lon"] == 121.47
    assert view["ack_due"] == iso(T0 + 30 * MIN) and view["resolve_due"] == iso(T0 + 240 * MIN)
    (row,) = store.list_deliveries()
    body = json.loads(row["body"])
    assert body["type"] == "alarm.raised" and body["shipper"] == "pg"
    assert body["data"] == view
    assert row["order_key"] == f"alarm:{doc['alarm_id']}"


@pytest.mark.parametrize(
    ("alarm_type", "ack_min", "resolve_min"),
    [
        (AlarmType.LOCK_TAMPER, 10, 240),
        (AlarmType.LONG_STOP, 30, 240),
        (AlarmType.SPEEDING, 12 * 60, 24 * 60),
    ],
)
def test_deadlines_per_severity(service, alarm_type, ack_min, resolve_min) -> None:
    (doc,) = service.handle([signal(alarm_type)])
    assert doc["ack_due"] == T0 + ack_min * MIN
    assert doc["resolve_due"] == T0 + resolve_min * MIN


def test_deadlines_per_shipper_and_trip_sla(store, clock, hub) -> None:
    store.put_shipper({"shipper": "pg", "sla": {"critical": {"ack_min": 5, "resolve_min": 120}},
                       "rules": {}})  # fmt: skip
    put_trip(store, "T3", "pg", sla={"minor": {"ack_min": 1}})
    service = AlarmService(store, clock, hub, default_sla={"major": {"ack_min": 20}})
    critical, major, minor_t3, critical_acme = service.handle(
        [
            signal(AlarmType.LOCK_TAMPER),
            signal(AlarmType.LONG_STOP),
            signal(AlarmType.LOW_BATTERY, trip_id="T3"),
            signal(AlarmType.LOCK_TAMPER, trip_id="T2", shipper="acme"),
        ]
    )
    assert (critical["ack_due"], critical["resolve_due"]) == (T0 + 5 * MIN, T0 + 120 * MIN)
    assert (major["ack_due"], major["resolve_due"]) == (T0 + 20 * MIN, T0 + 240 * MIN)
    assert (minor_t3["ack_due"], minor_t3["resolve_due"]) == (T0 + 1 * MIN, T0 + 24 * 60 * MIN)
    assert critical_acme["ack_due"] == T0 + 10 * MIN


def test_ack_then_resolve_history_and_events(service, store, clock, hub) -> None:
    (doc,) = service.handle([signal()])
    aid = doc["alarm_id"]
    sub = hub.subscribe()
    clock.advance(120)
    view = service.ack(aid, by="desk-07", note="called driver")
    assert view["status"] == "acknowledged"
    assert view["acknowledged_by"] == "desk-07" and view["acknowledged_at"] == iso(T0 + 120_000)
    clock.advance(600)
    view = service.resolve(
        aid, by="desk-08", cause="police_check", action="confirmed", feedback="all fine"
    )
    assert view["status"] == "resolved" and view["resolved_at"] == iso(T0 + 720_000)
    assert view["resolution"] == {
        "cause": "police_check", "action": "confirmed", "feedback": "all fine"
    }  # fmt: skip
    hist = view["history"]
    assert [(h["action"], h["from"], h["to"], h["by"]) for h in hist] == [
        ("raised", None, "open", "engine"),
        ("acknowledged", "open", "acknowledged", "desk-07"),
        ("resolved", "acknowledged", "resolved", "desk-08"),
    ]
    assert [h["at"] for h in hist] == [iso(T0), iso(T0 + 120_000), iso(T0 + 720_000)]
    assert hist[1]["note"] == "called driver"
    assert hist[2]["resolution"]["cause"] == "police_check"
    assert service.get(aid) == view
    assert [e["type"] for e in sub.drain()] == ["alarm.acknowledged", "alarm.resolved"]
    assert webhook_types(store, aid) == ["alarm.raised", "alarm.acknowledged", "alarm.resolved"]


def test_resolve_an_open_alarm_implies_acknowledge(service, store, clock) -> None:
    (doc,) = service.handle([signal()])
    clock.advance(30)
    view = service.resolve(doc["alarm_id"], by="desk-1", cause="false_alarm")
    assert [h["action"] for h in view["history"]] == ["raised", "acknowledged", "resolved"]
    assert view["acknowledged_by"] == "desk-1"
    assert view["acknowledged_at"] == view["resolved_at"] == iso(T0 + 30_000)
    rows = sorted(store.list_deliveries(), key=lambda r: r["seq"])
    bodies = [json.loads(r["body"]) for r in rows]
    assert [b["type"] for b in bodies] == ["alarm.raised", "alarm.acknowledged", "alarm.resolved"]
    # the implied acknowledge is shown as the state it was in, not the final one
    assert bodies[1]["data"]["status"] == "acknowledged"
    assert bodies[1]["data"]["resolution"] is None
    assert len({b["id"] for b in bodies}) == 3


def test_refusals(service, store) -> None:
    (doc,) = service.handle([signal()])
    aid = doc["alarm_id"]
    with pytest.raises(AlarmNotFound):
        service.ack("alm_missing", by="d")
    with pytest.raises(AlarmNotFound):
        service.get("alm_missing")
    with pytest.raises(ValidationError):
        service.resolve(aid, by="d", cause="bored")
    with pytest.raises(ValidationError):
        service.ack(aid, by="")
    service.ack(aid, by="d")
    with pytest.raises(TransitionError):
        service.ack(aid, by="d")
    service.resolve(aid, by="d", cause="other")
    with pytest.raises(TransitionError):
        service.resolve(aid, by="d", cause="other")
    with pytest.raises(TransitionError):
        service.ack(aid, by="d")
    # refusals leave no trace
    assert [h["action"] for h in store.alarm_history(aid)] == ["raised", "acknowledged", "resolved"]
    assert store.get_alarm(aid)["version"] == 3


class RacingStore:
    """Wraps a store so that another writer changes the alarm just before our writes."""

    def __init__(self, store, races: int) -> None:
        self._store = store
        self.races = races

    def __getattr__(self, name):
        return getattr(self._store, name)

    def update_alarm(self, alarm, expected_version):
        if self.races > 0:
            self.races -= 1
            current = self._store.get_alarm(alarm["alarm_id"])
            current["version"] += 1
            current["details"] = {**current["details"], "touched": self.races}
            assert self._store.update_alarm(current, current["version"] - 1)
        return self._store.update_alarm(alarm, expected_version)


def test_concurrent_change_retried_once_then_conflict(store, clock, hub) -> None:
    (doc,) = AlarmService(store, clock, hub).handle([signal()])
    racing = RacingStore(store, races=1)
    view = AlarmService(racing, clock, hub).ack(doc["alarm_id"], by="d")  # type: ignore[arg-type]
    assert view["status"] == "acknowledged"
    assert view["details"]["touched"] == 0  # the retry started from the re-read document
    racing.races = 2
    with pytest.raises(ConflictError):
        AlarmService(racing, clock, hub).resolve(doc["alarm_id"], by="d", cause="other")  # type: ignore[arg-type]
    assert store.get_alarm(doc["alarm_id"])["status"] == "acknowledged"


def test_escalation_once_per_deadline_at_the_right_time(service, store, clock, hub) -> None:
    (doc,) = service.handle([signal()])  # critical: ack 10 min, resolve 4 h
    aid = doc["alarm_id"]
    sub = hub.subscribe()
    clock.advance(10 * 60 - 1)
    assert service.escalate_due() == []
    clock.advance(1)
    (esc,) = service.escalate_due()
    assert esc["escalation_level"] == 1 and esc["ack_escalated"]
    clock.advance(60)
    assert service.escalate_due() == []  # once per deadline
    service.ack(aid, by="desk")
    clock.set(T0 + 4 * 3_600_000 - 1)
    assert service.escalate_due() == []
    # restart: new objects on the same store pick the state up
    service2 = AlarmService(store, clock, hub)
    clock.advance(0.001)
    (esc,) = service2.escalate_due()
    assert esc["escalation_level"] == 2 and esc["resolve_escalated"]
    clock.advance(3600)
    assert AlarmService(store, clock, hub).escalate_due() == []
    hist = service2.get(aid)["history"]
    assert [(h["action"], h.get("deadline")) for h in hist] == [
        ("raised", None), ("escalated", "ack"), ("acknowledged", None), ("escalated", "resolve"),
    ]  # fmt: skip
    assert hist[1]["at"] == iso(T0 + 10 * MIN)
    bodies = [
        json.loads(r["body"]) for r in sorted(store.list_deliveries(), key=lambda r: r["seq"])
    ]
    escalated = [b for b in bodies if b["type"] == "alarm.escalated"]
    assert [b["data"]["deadline"] for b in escalated] == ["ack", "resolve"]
    assert [b["data"]["escalation_level"] for b in escalated] == [1, 2]
    types = [e["type"] for e in sub.drain()]
    assert types == ["alarm.escalated", "alarm.acknowledged", "alarm.escalated"]


def test_both_deadlines_missed_during_a_long_outage(service, store, clock) -> None:
    (doc,) = service.handle([signal(AlarmType.SPEEDING)])  # minor: 12 h / 24 h
    clock.advance(30 * 3600)
    (esc,) = service.escalate_due()
    assert esc["escalation_level"] == 2
    assert webhook_types(store, doc["alarm_id"]) == [
        "alarm.raised", "alarm.escalated", "alarm.escalated"
    ]  # fmt: skip


def test_resolved_alarm_never_escalates(service, clock) -> None:
    (doc,) = service.handle([signal()])
    service.resolve(doc["alarm_id"], by="d", cause="device_fault")
    clock.advance(48 * 3600)
    assert service.escalate_due() == []


async def test_run_loop_escalates_on_the_injected_clock(service, store, clock) -> None:
    (doc,) = service.handle([signal()])
    task = asyncio.ensure_future(service.run(interval_s=1.0))
    try:
        await asyncio.sleep(0.05)
        assert store.get_alarm(doc["alarm_id"])["escalation_level"] == 0
        clock.advance(10 * 60)
        for _ in range(200):
            if store.get_alarm(doc["alarm_id"])["escalation_level"] == 1:
                break
            await asyncio.sleep(0.01)
        assert store.get_alarm(doc["alarm_id"])["escalation_level"] == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_loop_survives_store_errors(store, clock, hub) -> None:
    class Flaky:
        def __init__(self, inner) -> None:
            self.inner, self.failures = inner, 3

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def alarms_due(self, now_ms):
            if self.failures:
                self.failures -= 1
                raise OSError("database is locked")
            return self.inner.alarms_due(now_ms)

    flaky = Flaky(store)
    counted = CountingAlertMetrics()
    service = AlarmService(flaky, clock, hub, metrics=counted)  # type: ignore[arg-type]
    (doc,) = service.handle([signal()])
    clock.advance(10 * 60)
    task = asyncio.ensure_future(service.run(interval_s=0.01))
    try:
        for _ in range(300):
            if store.get_alarm(doc["alarm_id"])["escalation_level"] == 1:
                break
            await asyncio.sleep(0.01)
        assert store.get_alarm(doc["alarm_id"])["escalation_level"] == 1
        assert counted.count("alerts_error", "escalation_loop") == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_episode_end_recorded_status_unchanged(service, store, clock, hub) -> None:
    (doc,) = service.handle([signal(AlarmType.ROUTE_DEVIATION, episode="dev-1")])
    sub = hub.subscribe()
    clock.advance(300)
    end = EpisodeEnded(AlarmType.ROUTE_DEVIATION, "T1", "pg", "dev-1", T0 + 250_000,
                       {"back_on_route_m": 80})  # fmt: skip
    assert service.handle([end, end]) == []
    stored = store.get_alarm(doc["alarm_id"])
    assert stored["status"] == "open"
    assert stored["details"]["episode_ended_at"] == T0 + 250_000
    assert stored["details"]["episode_end"] == {"back_on_route_m": 80}
    assert [h["action"] for h in store.alarm_history(doc["alarm_id"])] == [
        "raised", "episode_ended"
    ]  # fmt: skip
    assert [e["type"] for e in sub.drain()] == ["alarm.episode_ended"]
    assert webhook_types(store) == ["alarm.raised"]  # not a webhook event
    # an end without an alarm is counted, not an error
    service.handle([EpisodeEnded(AlarmType.SPEEDING, "T1", "pg", "nope", T0)])
    assert service.metrics.count("alarm_event_skipped", "unmatched_episode_end") == 1
    assert service.metrics.count("alerts_error", "event") == 0


def test_milestones_and_status_changes_are_stored(service, store, clock, hub) -> None:
    sub = hub.subscribe(shipper="pg")
    store.put_trip({**store.get_trip("T1"), "status": "planned"})
    events = [
        TripStatusChanged("T1", "pg", TripStatus.ACTIVE, T0 - 10_000, "sealed at origin"),
        Milestone("T1", "pg", MilestoneKind.SEALED, T0 - 10_000, device_id="lock-T1",
                  lat=31.2, lon=121.4),
        Milestone("T1", "pg", MilestoneKind.ARRIVED, T0 - 5_000, stop_id="S1"),
        TripStatusChanged("T1", "pg", TripStatus.ACTIVE, T0 - 4_000, "re-emitted"),
        TripStatusChanged("T1", "pg", TripStatus.COMPLETED, T0 - 1_000, "unlocked at S1"),
    ]  # fmt: skip
    service.handle(events)
    service.handle(events[1:3])  # milestones re-emitted after an engine restart
    assert service.metrics.count("alarm_event_skipped", "duplicate_milestone") == 2
    trip = store.get_trip("T1")
    assert trip["status"] == "completed"
    assert trip["activated_at"] == T0 - 10_000 and trip["completed_at"] == T0 - 1_000
    stored = store.trip_events("T1")
    assert [(e["kind"], e.get("milestone") or e.get("status")) for e in stored] == [
        ("status", "active"), ("milestone", "sealed"), ("milestone", "arrived"),
        ("status", "completed"),
    ]  # fmt: skip
    assert stored[2]["stop_id"] == "S1" and stored[0]["from"] == "planned"
    types = [e["type"] for e in sub.drain()]
    assert types == ["trip.status", "trip.milestone", "trip.milestone", "trip.status"]
    bodies = [
        json.loads(r["body"]) for r in sorted(store.list_deliveries(), key=lambda r: r["seq"])
    ]
    assert [(b["type"], b["data"]["milestone"]) for b in bodies] == [
        ("trip.milestone", "sealed"), ("trip.milestone", "arrived")
    ]  # fmt: skip
    assert bodies[0]["data"]["ts"] == iso(T0 - 10_000)
    # a completed trip is not re-activated by a late engine event
    service.handle([TripStatusChanged("T1", "pg", TripStatus.ACTIVE, T0, "late")])
    assert store.get_trip("T1")["status"] == "completed"
    assert service.metrics.count("alarm_event_skipped", "trip_already_ended") == 1


def test_positions_go_to_the_live_feed_only(service, store, hub) -> None:
    pos = PositionUpdate("gps-1", "T1", "pg", T0, 31.2, 121.4, 55.0, "on_route", 12.5)
    idle = PositionUpdate("gps-9", None, None, T0, 30.0, 120.0, None, "idle")
    service.handle([pos, idle])  # no subscriber: nothing rendered, nothing stored
    pg, everyone = hub.subscribe(shipper="pg"), hub.subscribe()
    service.handle([pos, idle])
    assert [e["data"]["device_id"] for e in pg.drain()] == ["gps-1"]
    got = everyone.drain()
    assert [e["data"]["device_id"] for e in got] == ["gps-1", "gps-9"]
    assert got[0] == {
        "type": "position", "shipper": "pg",
        "data": {"device_id": "gps-1", "trip_id": "T1", "ts": iso(T0), "lat": 31.2, "lon": 121.4,
                 "speed_kmh": 55.0, "state": "on_route", "distance_to_route_m": 12.5},
    }  # fmt: skip
    assert store.list_deliveries() == [] and store.list_alarms() == []


def test_one_bad_event_does_not_stop_the_batch(service, store) -> None:
    bad = signal(AlarmType.LOCK_TAMPER, episode="x")
    object.__setattr__(bad, "details", {"oops": object()})  # not JSON: rendered as a string
    weird = "not an event"
    created = service.handle([weird, signal(episode="ok"), bad])  # type: ignore[list-item]
    assert len(created) == 2
    assert service.metrics.count("alerts_error", "event") == 1


def _geofence_event(change: GeofenceChange, ts: int) -> GeofenceTransition:
    return GeofenceTransition(
        "T1", "pg", change, ts, "gps-T1", "dc-7", "Kunshan depot", "depot", lat=31.3, lon=121.0
    )


def test_geofence_events_are_trip_events_live_events_and_webhooks(
    service, store, clock, hub
) -> None:
    store.put_webhook({"webhook_id": "wh-geo", "shipper": "pg", "url": "http://y/", "secret": "s",
                       "events": ["geofence.entered", "geofence.exited"]})  # fmt: skip
    store.put_webhook({"webhook_id": "wh-acme", "shipper": "acme", "url": "http://z/",
                       "secret": "s"})  # fmt: skip
    sub = hub.subscribe(shipper="pg")
    entered = _geofence_event(GeofenceChange.ENTERED, T0 - 60_000)
    exited = _geofence_event(GeofenceChange.EXITED, T0 - 1_000)
    service.handle([entered, exited])
    # Re-emitted after an engine restart or a rewind: recognised by its id, sent once.
    AlarmService(store, clock, hub, metrics=CountingAlertMetrics()).handle([entered, exited])
    stored = [e for e in store.trip_events("T1") if e["kind"] == "geofence"]
    assert [(e["change"], e["ts"], e["geofence_id"]) for e in stored] == [
        ("entered", T0 - 60_000, "dc-7"), ("exited", T0 - 1_000, "dc-7")
    ]  # fmt: skip
    assert stored[0]["name"] == "Kunshan depot" and stored[0]["geofence_kind"] == "depot"
    live = sub.drain()
    assert [e["type"] for e in live] == ["geofence.entered", "geofence.exited"]
    rows = sorted(store.list_deliveries(limit=100), key=lambda r: r["seq"])
    assert [r["webhook_id"] for r in rows] == ["wh-geo", "wh-geo"]  # wh-pg did not ask
    bodies = [json.loads(r["body"]) for r in rows]
    assert [b["type"] for b in bodies] == ["geofence.entered", "geofence.exited"]
    assert bodies[0]["shipper"] == "pg" and bodies[0]["id"] != bodies[1]["id"]
    assert bodies[0]["data"] == {
        "trip_id": "T1", "device_id": "gps-T1", "ts": iso(T0 - 60_000), "lat": 31.3, "lon": 121.0,
        "geofence": {"geofence_id": "dc-7", "name": "Kunshan depot", "kind": "depot"},
    }  # fmt: skip
    assert all(r["order_key"] == "trip:T1" for r in rows)


@pytest.mark.parametrize("acknowledged", [False, True])
def test_withdrawn_alarm_is_resolved_by_the_engine(
    service, store, clock, hub, acknowledged: bool
) -> None:
    (doc,) = service.handle([signal(AlarmType.LATE_ARRIVAL, episode="T1:LATE_ARRIVAL:S1")])
    if acknowledged:
        service.ack(doc["alarm_id"], by="desk-07")
    sub = hub.subscribe()
    clock.advance(120)
    withdrawn = AlarmWithdrawn(
        AlarmType.LATE_ARRIVAL,
        "T1",
        "pg",
        "T1:LATE_ARRIVAL:S1",
        T0 - 30 * MIN,
        {"stop_id": "S1", "arrived_at": T0 - 30 * MIN},
    )
    service.handle([withdrawn, withdrawn])  # fmt: skip
    view = service.get(doc["alarm_id"])
    assert view["status"] == "resolved" and view["resolved_by"] == "engine"
    assert view["resolution"]["cause"] == "false_alarm"
    assert view["details"]["withdrawn"] is True
    assert view["details"]["withdrawal"]["stop_id"] == "S1"
    actions = [h["action"] for h in store.alarm_history(doc["alarm_id"])]
    assert actions == ["raised", "acknowledged", "resolved"]
    assert store.alarm_history(doc["alarm_id"])[-1]["by"] == "engine"
    hooks = webhook_types(store, doc["alarm_id"])
    assert hooks == ["alarm.raised", "alarm.acknowledged", "alarm.resolved"]
    assert [e["type"] for e in sub.drain()][-1] == "alarm.resolved"
    # a withdrawal of an alarm that was never raised is counted, not an error
    service.handle([AlarmWithdrawn(AlarmType.LATE_ARRIVAL, "T1", "pg", "nope", T0)])
    assert service.metrics.count("alarm_event_skipped", "unmatched_withdrawal") == 1
    assert service.metrics.count("alerts_error", "event") == 0


def test_a_withdrawal_leaves_an_alarm_the_desk_resolved(service, store) -> None:
    (doc,) = service.handle([signal(AlarmType.LATE_ARRIVAL, episode="late-S1")])
    service.resolve(doc["alarm_id"], by="desk-07", cause="traffic_detour")
    service.handle([AlarmWithdrawn(AlarmType.LATE_ARRIVAL, "T1", "pg", "late-S1", T0)])
    view = service.get(doc["alarm_id"])
    assert view["resolved_by"] == "desk-07" and "withdrawn" not in view["details"]
