"""simulators.verify: matching raised alarms with the trips' expectations, and detection lag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.render import iso
from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from core.clock import ManualClock
from simulators import (
    GNSS_INCIDENTS,
    SimMessage,
    SimTrip,
    build_fleet,
    build_scenario,
    iter_fleet_messages,
    scenario_names,
)
from simulators.verify import (
    detection_lag_ms,
    due_ms,
    match_alarms,
    to_ms,
    trigger_times,
)
from telemetry.ingest import RawMessage

T = 1_795_334_400_000  # 2026-11-22T08:00:00Z


def _trip(
    trip_id: str,
    expected: list[dict[str, Any]] | None = None,
    messages: list[SimMessage] | None = None,
    scenario: str = "hand",
) -> SimTrip:
    sim = SimTrip(
        trip={"trip_id": trip_id},
        devices=[],
        expected=expected or [],
        geofences=[],
        scenario=scenario,
    )
    if messages is not None:
        # SimTrip.iter_messages serves an already materialised ``messages`` list.
        sim.messages = messages
    return sim


def _exp(kind: str, trip_id: str, device_id: str | None = None, **details: Any) -> dict:
    e: dict[str, Any] = {"type": kind, "trip_id": trip_id, "details": details}
    if device_id is not None:
        e["device_id"] = device_id
    return e


def _alarm(kind: str, trip_id: str, device_id: str | None = None, **details: Any) -> dict:
    return {"type": kind, "trip_id": trip_id, "device_id": device_id, "details": details}


def _fix(ts: Any) -> dict[str, Any]:
    return {"ts": ts, "lat": -16.9, "lon": 145.7}


def _msg(body: Any, at_ms: int, device_id: str = "gps-1") -> SimMessage:
    return SimMessage("position", device_id, orjson.dumps(body), at_ms)


# -- match_alarms -------------------------------------------------------------------------------


def test_exact_match_is_ok() -> None:
    trips = [
        _trip("A", [_exp("LOCK_TAMPER", "A", "lock-1", event="tamper")]),
        _trip("B"),
    ]
    raised = _alarm("LOCK_TAMPER", "A", "lock-1", event="tamper", method=None)
    v = match_alarms(trips, [raised])
    assert v.ok, v.explain()
    assert v.missing == [] and v.unexpected == []
    assert v.matched == [(trips[0].expected[0], raised)]


def test_missing_alarm_is_listed_with_its_scenario() -> None:
    exp = _exp("SIGNAL_LOST", "A", "gps-1")
    v = match_alarms([_trip("A", [exp], scenario="signal_loss_backlog")], [])
    assert not v.ok
    assert v.missing == [{**exp, "scenario": "signal_loss_backlog"}]
    assert v.unexpected == [] and v.matched == []
    assert "SIGNAL_LOST" in v.explain() and "signal_loss_backlog" in v.explain()


def test_extra_alarm_is_unexpected() -> None:
    exp = _exp("SPEEDING", "A", "gps-1")
    extra = _alarm("LONG_STOP", "A", "gps-1")
    v = match_alarms([_trip("A", [exp])], [_alarm("SPEEDING", "A", "gps-1"), extra])
    assert not v.ok
    assert v.missing == [] and v.unexpected == [extra] and len(v.matched) == 1
    assert "LONG_STOP" in v.explain()


def test_alarm_on_a_clean_trip_is_unexpected() -> None:
    extra = _alarm("SPEEDING", "A", "gps-1")
    v = match_alarms([_trip("A")], [extra])
    assert not v.ok and v.unexpected == [extra] and v.missing == []


def test_two_expected_of_a_type_need_two_alarms() -> None:
    exps = [_exp("LOCK_TAMPER", "A", "lock-1"), _exp("LOCK_TAMPER", "A", "lock-1")]
    one = _alarm("LOCK_TAMPER", "A", "lock-1", event="tamper")
    two = _alarm("LOCK_TAMPER", "A", "lock-1", event="rope_cut")
    short = match_alarms([_trip("A", exps)], [one])
    assert not short.ok and len(short.missing) == 1 and len(short.matched) == 1
    full = match_alarms([_trip("A", exps)], [one, two])
    assert full.ok, full.explain()
    assert sorted(a["details"]["event"] for _, a in full.matched) == ["rope_cut", "tamper"]
    # ... and a third of the kind is one too many
    three = match_alarms([_trip("A", exps)], [one, two, dict(one)])
    assert not three.ok and len(three.unexpected) == 1 and three.missing == []


def test_device_mismatch_does_not_match() -> None:
    exp = _exp("UNAUTHORIZED_UNLOCK", "A", "lock-1")
    wrong = _alarm("UNAUTHORIZED_UNLOCK", "A", "lock-2")
    v = match_alarms([_trip("A", [exp])], [wrong])
    assert not v.ok and len(v.missing) == 1 and v.unexpected == [wrong]


def test_expectation_without_device_matches_any_device() -> None:
    exp = _exp("LATE_ARRIVAL", "A", stop_id="S1")
    v = match_alarms([_trip("A", [exp])], [_alarm("LATE_ARRIVAL", "A", "unit-9", stop_id="S1")])
    assert v.ok, v.explain()


def test_details_subset_mismatch_does_not_match() -> None:
    exp = _exp("UNLOCK_OUT_OF_SEQUENCE", "A", "unit-1", stop_id="S2", expected_stop_id="S1")
    wrong = _alarm("UNLOCK_OUT_OF_SEQUENCE", "A", "unit-1", stop_id="S2", expected_stop_id="S3")
    lacking = _alarm("UNLOCK_OUT_OF_SEQUENCE", "A", "unit-1", stop_id="S2")
    no_details = {"type": "UNLOCK_OUT_OF_SEQUENCE", "trip_id": "A", "device_id": "unit-1"}
    for alarm in (wrong, lacking, no_details):
        v = match_alarms([_trip("A", [exp])], [alarm])
        assert not v.ok and len(v.missing) == 1 and v.unexpected == [alarm]


def test_details_superset_in_the_alarm_matches() -> None:
    exp = _exp("LOCK_TAMPER", "A", "lock-1", event="rope_cut")
    alarm = _alarm("LOCK_TAMPER", "A", "lock-1", event="rope_cut", method=None, episode_ended_at=T)
    v = match_alarms([_trip("A", [exp])], [alarm])
    assert v.ok, v.explain()


def test_alarms_of_unlisted_trips_are_unexpected() -> None:
    stray = _alarm("SPEEDING", "Z", "gps-9")
    no_trip = {"type": "SPEEDING", "device_id": "gps-9", "details": {}}
    v = match_alarms(
        [_trip("A", [_exp("SPEEDING", "A")])], [_alarm("SPEEDING", "A"), stray, no_trip]
    )
    assert not v.ok and v.missing == []
    assert v.unexpected == [stray, no_trip]
    assert "Z" in v.explain() and "SPEEDING" in v.explain()


def test_alarm_of_another_listed_trip_does_not_match() -> None:
    trips = [_trip("A", [_exp("SPEEDING", "A")]), _trip("B")]
    alarm = _alarm("SPEEDING", "B")
    v = match_alarms(trips, [alarm])
    assert not v.ok and len(v.missing) == 1 and v.unexpected == [alarm]


def test_explain_of_a_clean_verdict() -> None:
    v = match_alarms([_trip("A")], [])
    assert v.ok and v.explain() == "missing 0, unexpected 0"


def test_matches_real_scenario_expectations() -> None:
    sim = build_scenario("tamper", seed=2, start_ms=T)
    assert sim.expected, "the tamper scenario must expect an alarm"
    alarms = [
        {
            "type": e["type"],
            "trip_id": sim.trip_id,
            "device_id": e.get("device_id"),
            "details": {**e.get("details", {}), "extra": 1},
        }
        for e in sim.expected
    ]
    assert match_alarms([sim], alarms).ok
    assert not match_alarms([sim], alarms[1:]).ok


# -- to_ms --------------------------------------------------------------------------------------


def test_to_ms_reads_rfc3339_and_ints() -> None:
    assert to_ms("2026-11-22T08:00:00Z") == T
    assert to_ms("2026-11-22T08:00:05.123Z") == T + 5_123
    assert to_ms("2026-11-22T10:00:05.123+02:00") == T + 5_123
    assert to_ms("2026-11-22T03:00:00-05:00") == T
    assert to_ms(T) == T and to_ms(0) == 0
    assert to_ms(float(T) + 0.4) == T


def test_to_ms_none_for_absent_or_unreadable() -> None:
    assert to_ms(None) is None
    assert to_ms("yesterday") is None
    assert to_ms("") is None
    assert to_ms(True) is None and to_ms(False) is None
    assert to_ms([T]) is None and to_ms({"ts": T}) is None
    # a naive time: the offset is unknown, so it is not guessed
    assert to_ms("2026-11-22T08:00:00") is None
    assert to_ms("2026-11-22T08:00:00.500") is None


@given(st.integers(min_value=-2_208_988_800_000, max_value=4_102_444_800_000))
def test_to_ms_inverts_alerts_iso(ms: int) -> None:
    assert to_ms(iso(ms)) == ms


# -- trigger_times ------------------------------------------------------------------------------


def test_duplicate_ts_maps_to_the_earliest_send() -> None:
    sim = _trip(
        "A",
        messages=[
            _msg(_fix("2026-11-22T08:00:10Z"), T + 10_000),
            _msg(_fix(T + 20_000), T + 20_000),
            _msg(_fix(T + 10_000), T + 30_000),  # the 08:00:10 fix again, as epoch ms
            _msg(_fix("2026-11-22T08:00:20Z"), T + 40_000),  # and the 08:00:20 one
        ],
    )
    assert trigger_times([sim]) == {("A", T + 10_000): T + 10_000, ("A", T + 20_000): T + 20_000}


def test_earliest_send_wins_even_out_of_order() -> None:
    # iter_messages is at_ms-sorted in practice; the earliest send wins regardless.
    sim = _trip("A", messages=[_msg(_fix(T), T + 9_000), _msg(_fix(T), T + 2_000)])
    assert trigger_times([sim]) == {("A", T): T + 2_000}


def test_backlog_elements_map_to_the_backlog_send() -> None:
    backlog = [_fix(T + 1_000), _fix("2026-11-22T08:00:02Z"), _fix(T + 3_000)]
    lock = {"ts": "2026-11-22T08:00:04Z", "event": "locked", "method": "rfid"}
    sim = _trip(
        "A",
        messages=[
            _msg(_fix(T), T),
            _msg(backlog, T + 600_000),
            SimMessage("lock", "lock-1", orjson.dumps(lock), T + 4_000),
        ],
    )
    assert trigger_times([sim]) == {
        ("A", T): T,
        ("A", T + 1_000): T + 600_000,
        ("A", T + 2_000): T + 600_000,
        ("A", T + 3_000): T + 600_000,
        ("A", T + 4_000): T + 4_000,
    }


def test_trips_are_kept_apart() -> None:
    a = _trip("A", messages=[_msg(_fix(T), T + 1_000)])
    b = _trip("B", messages=[_msg(_fix(T), T + 5_000)])
    assert trigger_times([a, b]) == {("A", T): T + 1_000, ("B", T): T + 5_000}


def test_unreadable_payloads_are_skipped() -> None:
    sim = _trip(
        "A",
        messages=[
            SimMessage("position", "gps-1", b'{"ts": "2026-11-22T08:', T),
            SimMessage("lock", "lock-1", b"\xff\xfe\x00garbage\x81", T),
            _msg({"lat": 1.0}, T),
            _msg({"ts": "2026-11-22T08:00:00"}, T),  # naive
            _msg({"ts": True}, T),
            _msg({"ts": None}, T),
            _msg(42, T),
            _msg("text", T),
            _msg([1, "x", None, _fix(T + 7_000)], T + 8_000),
        ],
    )
    assert trigger_times([sim]) == {("A", T + 7_000): T + 8_000}


def test_malformed_scenario_does_not_raise() -> None:
    sim = build_scenario("malformed", seed=4, start_ms=T)
    out = trigger_times([sim])
    assert out
    for (trip_id, ts), at_ms in out.items():
        assert trip_id == sim.trip_id
        assert type(ts) is int and type(at_ms) is int


def test_real_backlog_maps_to_its_send_time() -> None:
    sim = build_scenario("signal_loss_backlog", seed=1, start_ms=T)
    out = trigger_times([sim])
    first_send: dict[int, int] = {}
    backlogs = 0
    for m in sim.iter_messages():
        body = orjson.loads(m.payload)
        backlogs += isinstance(body, list)
        for el in body if isinstance(body, list) else [body]:
            first_send.setdefault(to_ms(el["ts"]), m.at_ms)  # sorted by at_ms: first is min
    assert backlogs >= 1
    assert out == {(sim.trip_id, ts): at for ts, at in first_send.items()}
    # a backlog fix was sent (much) later than it was taken
    assert any(at - ts >= 600_000 for (_, ts), at in out.items())


# -- due_ms / detection_lag_ms ------------------------------------------------------------------


def test_signal_lost_is_due_at_its_threshold() -> None:
    alarm = {
        "type": "SIGNAL_LOST",
        "trip_id": "A",
        "ts": T,
        "raised_at": T + 603_000,
        "details": {"last_heard_at": T, "signal_lost_s": 600.0},
    }
    assert due_ms(alarm, {}) == T + 600_000
    assert detection_lag_ms(alarm, {}) == 3_000
    shorter = {**alarm, "details": {"last_heard_at": T, "signal_lost_s": 120}}
    assert due_ms(shorter, {}) == T + 120_000
    # without signal_lost_s: the contract default (600 s)
    default = {**alarm, "details": {"last_heard_at": T}}
    assert due_ms(default, {}) == T + 600_000


def test_late_arrival_is_due_at_its_deadline() -> None:
    alarm = {
        "type": "LATE_ARRIVAL",
        "trip_id": "A",
        "ts": T,
        "raised_at": iso(T + 1_802_000),
        "details": {"stop_id": "S1", "eta": T, "deadline": T + 1_800_000},
    }
    assert due_ms(alarm, {("A", T): T + 5}) == T + 1_800_000
    assert detection_lag_ms(alarm, {}) == 2_000


def test_timer_alarm_without_its_detail_falls_back_to_the_trigger() -> None:
    alarm = {"type": "SIGNAL_LOST", "trip_id": "A", "ts": T, "raised_at": T + 9, "details": {}}
    assert due_ms(alarm, {("A", T): T + 4}) == T + 4
    assert detection_lag_ms(alarm, {("A", T): T + 4}) == 5
    assert due_ms({**alarm, "type": "LATE_ARRIVAL", "details": None}, {}) is None


def test_other_alarms_are_due_when_their_trigger_was_sent() -> None:
    triggers = {("A", T + 10_000): T + 600_000, ("B", T + 10_000): T + 11_000}
    rfc = {
        "type": "ROUTE_DEVIATION",
        "trip_id": "A",
        "ts": "2026-11-22T08:00:10.000Z",
        "raised_at": "2026-11-22T08:10:00.250Z",
        "details": {"distance_m": 1200.0},
    }
    assert due_ms(rfc, triggers) == T + 600_000
    assert detection_lag_ms(rfc, triggers) == 250
    as_int = {**rfc, "trip_id": "B", "ts": T + 10_000, "raised_at": T + 11_000}
    assert due_ms(as_int, triggers) == T + 11_000
    assert detection_lag_ms(as_int, triggers) == 0
    with_offset = {**as_int, "ts": "2026-11-22T09:00:10+01:00"}
    assert due_ms(with_offset, triggers) == T + 11_000


def test_unknown_trigger_or_times_give_none() -> None:
    triggers = {("A", T): T}
    base = {"type": "SPEEDING", "trip_id": "A", "ts": T, "raised_at": T + 1, "details": {}}
    assert detection_lag_ms(base, triggers) == 1
    for alarm in (
        {**base, "ts": T + 1},  # no message carried that time
        {**base, "trip_id": "B"},  # nor for that trip
        {**base, "ts": None},
        {**base, "ts": "garbage"},
        {k: v for k, v in base.items() if k != "ts"},
    ):
        assert due_ms(alarm, triggers) is None
        assert detection_lag_ms(alarm, triggers) is None
    no_raise = {k: v for k, v in base.items() if k != "raised_at"}
    assert due_ms(no_raise, triggers) == T
    assert detection_lag_ms(no_raise, triggers) is None
    assert detection_lag_ms({**base, "raised_at": "2026-11-22T08:00:00"}, triggers) is None


# -- every incident through the real engine, in process ----------------------------------------

TICK_MS = 5_000
TIMER_ALARMS = ("SIGNAL_LOST", "LATE_ARRIVAL")


def _run_in_process(fleet: list[SimTrip], tmp_path: Path) -> list[dict[str, Any]]:
    """Feed a fleet through the real pipeline in process (SQLite, manual clock): messages
    in batches of equal publish time with the clock set to that time, wall-clock rules
    ticked on a fixed 5 s grid of simulated time. Returns the stored alarms."""
    clock = ManualClock(T)
    runtime = Runtime.open(
        Settings(db_url=f"sqlite:///{tmp_path}/x.sqlite", mqtt_url=None), clock=clock
    )
    try:
        for sim in fleet:
            for dev in sim.devices:
                runtime.register_device(dev)
            for g in sim.geofences:
                runtime.put_geofence(g)
            runtime.create_trip(sim.trip)

        last_tick = T
        batch: list[RawMessage] = []

        def tick_until(t: int) -> None:
            nonlocal last_tick
            while last_tick + TICK_MS <= t:
                last_tick += TICK_MS
                clock.set(last_tick)
                runtime.pipeline.tick()

        def flush() -> None:
            if batch:
                runtime.pipeline.process(batch)
                batch.clear()

        for m in iter_fleet_messages(fleet):
            if batch and m.at_ms != batch[-1].received_at:
                flush()
            if not batch:
                tick_until(m.at_ms)
                clock.set(m.at_ms)
            batch.append(RawMessage(m.topic(), m.payload, m.at_ms))
        flush()
        tick_until(clock.now_ms() + 4 * 3_600_000)
        return runtime.store.list_alarms(limit=100_000)
    finally:
        runtime.close()


def _assert_lags(fleet: list[SimTrip], matched: list[tuple[dict, Any]]) -> dict:
    triggers = trigger_times(fleet)
    lags = {}
    for _, alarm in matched:
        assert isinstance(alarm["raised_at"], int)  # the store keeps epoch ms
        lag = detection_lag_ms(alarm, triggers)
        lags[(alarm["trip_id"], alarm["type"])] = lag
        assert lag is not None, alarm
        if alarm["type"] in TIMER_ALARMS:
            # Timers fire at the first tick at or after the threshold (>=), and ticks
            # come every TICK_MS: 0 <= lag < TICK_MS, inside the contract's 10 s.
            assert 0 <= lag < TICK_MS, alarm
        else:
            # Every other alarm is raised while processing the batch that carries its
            # triggering message (a backlog counts as sent when the backlog is), and
            # the clock is set to that batch's publish time: the lag is exactly 0.
            assert lag == 0, alarm
    return lags


def test_every_incident_raises_exactly_its_alarms_in_process(tmp_path: Path) -> None:
    """The deterministic twin of tests/test_e2e_fleet.py: no broker, no database server, a
    manual clock."""
    incidents = [n for n in scenario_names() if n != "normal"]
    fleet = build_fleet(len(incidents) + 5, seed=3, start_ms=T + 60_000, incidents=incidents)
    assert {t.scenario for t in fleet} == {"normal", *incidents}
    alarms = _run_in_process(fleet, tmp_path)
    verdict = match_alarms(fleet, alarms)
    assert verdict.ok, verdict.explain()
    assert len(verdict.matched) == sum(len(t.expected) for t in fleet) > 0
    lags = _assert_lags(fleet, verdict.matched)
    assert {k for _, k in lags} >= {"SIGNAL_LOST", "LATE_ARRIVAL", "LOCK_TAMPER"}


@pytest.mark.parametrize("noise", ["clean", "all"])
def test_gnss_scenarios_raise_exactly_their_alarms_in_process(tmp_path: Path, noise: str) -> None:
    """The real-world GNSS and contract v2 scenarios (drift across a consignee's fence edge
    then an unseal, passing by a consignee, a risk zone, a late arrival withdrawn by a
    backlog, multipath in a city) with five normal trips, without and with every GNSS error
    source: exactly the expected alarms (a withdrawn LATE_ARRIVAL carries
    ``details.withdrawn``)."""
    fleet = build_fleet(
        len(GNSS_INCIDENTS) + 5,
        seed=4,
        start_ms=T + 60_000,
        incidents=GNSS_INCIDENTS,
        noise=noise,
    )
    assert {t.scenario for t in fleet} == {"normal", *GNSS_INCIDENTS}
    alarms = _run_in_process(fleet, tmp_path)
    verdict = match_alarms(fleet, alarms)
    assert verdict.ok, verdict.explain()
    assert {e["type"] for e, _ in verdict.matched} == {"RISK_ZONE_ENTRY", "LATE_ARRIVAL"}
    (late,) = [a for _, a in verdict.matched if a["type"] == "LATE_ARRIVAL"]
    assert late["status"] == "resolved"
