"""The fault benchmark's pieces that need no long run: counting on synthetic data, the tamper
plan, payload keys, the webhook receiver, and the acknowledging publisher against the real
test broker (the full run is ``python -m bench.faults --quick``)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import httpx
import orjson

from bench import _fault_count as count
from bench._fault_pub import NO_SEQ, AckingPublisher, message_key
from bench._fault_run import START_MS, plan_tampers
from bench._fault_world import HookReceiver
from bench.faults import QUICK, run_fault
from simulators import build_fleet
from tests.services import MosquittoServer, PostgresServer


def test_fixes_lost_are_acknowledged_and_not_stored() -> None:
    acked = {("d1", 1, 1), ("d1", 2, 2), ("d2", 1, 1)}
    stored = {("d1", 1, 1), ("d2", 1, 1), ("d3", 9, 9)}  # d3: stored without a PUBACK
    assert count.stored_counts("fixes", acked, stored) == {
        "fixes_acknowledged": 3,
        "fixes_stored": 3,
        "fixes_lost": 1,
    }
    assert count.as_keys([["d1", "5", 6]]) == {("d1", 5, 6)}


def test_alarms_missing_duplicated_and_unexpected() -> None:
    triggers = [("T1", 100), ("T1", 200), ("T2", 100)]
    alarms = [("T1", 100), ("T1", 100), ("T1", 100), ("T2", 100), ("T3", 5)]
    got = count.alarm_counts(triggers, alarms)
    assert got == {
        "triggers": 3,
        "alarms": 5,
        "alarms_missing": 1,  # T1@200
        "alarms_duplicated": 2,  # T1@100 three times
        "alarms_unexpected": 1,  # T3@5
    }


def test_milestones_duplicated_by_trip_kind_and_stop() -> None:
    rows = [("T1", "sealed", None), ("T1", "arrived", "S1"), ("T1", "arrived", "S1")]
    rows += [("T1", "arrived", "S2"), ("T2", "sealed", None)]
    assert count.milestone_counts(rows) == {"milestones": 5, "milestones_duplicated": 1}


def test_deliveries_missing_and_duplicated_by_event_id() -> None:
    got = count.delivery_counts(["e1", "e2", "e3"], {"e1": 1, "e2": 3, "zz": 2})
    assert got == {
        "deliveries_expected": 3,
        "deliveries_received": 2,
        "deliveries_missing": 1,
        "deliveries_duplicated": 3,  # e2 twice more, zz once more
    }


def test_recovery_needs_the_backlog_to_stay_down() -> None:
    samples = [(0.0, 10.0), (1.0, 900.0), (2.0, 500.0), (3.0, 50.0), (4.0, 400.0)]
    samples += [(5.0, 40.0), (6.0, 30.0), (7.0, 20.0), (8.0, 10.0)]
    assert count.recover_s(samples, fault_end=1.0, threshold=100.0) == 4.0
    assert count.recover_s(samples[:5], fault_end=1.0, threshold=100.0) is None
    assert count.recover_s(samples, fault_end=0.5, threshold=1000.0) == 0.5


def test_backlog_threshold() -> None:
    assert count.backlog_threshold([], 0.0) == 100.0
    assert count.backlog_threshold([10.0] * 9 + [1000.0], 50.0) == 100.0  # p90, not the max
    assert count.backlog_threshold([300.0] * 10, 50.0) == 600.0
    assert count.backlog_threshold([10.0], 2500.0) == 2500.0


def test_tampers_fall_inside_active_trips_with_unique_keys() -> None:
    fleet = build_fleet(6, seed=4, start_ms=START_MS, shipper_cycle=("pg",))
    end = START_MS + 3 * 3600_000
    msgs, trip_of = plan_tampers(fleet, 300.0, end, random.Random(1))
    assert msgs and len(trip_of) == len(msgs)
    assert [m.at_ms for m in msgs] == sorted(m.at_ms for m in msgs)
    by_id = {t.trip_id: t for t in fleet}
    for m in msgs:
        key = message_key(m.device_id, m.payload)
        trip = by_id[trip_of[key]]
        assert m.device_id in {d["device_id"] for d in trip.devices}
        last = max(v for k, v in trip.marks.items() if k.startswith("arrived:"))
        assert trip.marks["departed"] < key[1] < last and key[1] < end
        assert orjson.loads(m.payload)["event"] == "tamper"


def test_message_key_reads_both_timestamp_styles() -> None:
    assert message_key("d", b'{"ts": 1795334400123, "seq": 7}') == ("d", 1795334400123, 7)
    assert message_key("d", b'{"ts": "2026-11-22T08:00:00.123Z"}') == ("d", 1795334400123, NO_SEQ)


def test_receiver_fails_on_demand_and_counts_copies() -> None:
    rec = HookReceiver()
    try:
        body = {"id": "evt_1", "type": "alarm.raised"}
        rec.failing = True
        assert httpx.post(rec.url, json=body).status_code == 500
        rec.failing = False
        assert httpx.post(rec.url, json=body).status_code == 200
        assert httpx.post(rec.url, json=body).status_code == 200
        assert rec.accepted == {"evt_1": 2} and rec.refused == 1
        assert len(rec.repeat_gaps_s) == 1
    finally:
        rec.close()


def test_publisher_records_each_puback(mosquitto: MosquittoServer) -> None:
    pub = AckingPublisher(mosquitto.port, "faults-test-publisher")
    try:
        for i in range(300):
            payload = orjson.dumps({"ts": START_MS + i, "lat": 1.0, "lon": 2.0, "seq": i})
            pub.publish("bench/faults-test/position", "position", ("x", START_MS + i, i), payload)
        pub.wait_all(20)
    finally:
        pub.close()
    assert pub.pending == {}
    assert sorted(pub.acked["position"]) == [("x", START_MS + i, i) for i in range(300)]


def test_table_has_a_row_per_fault() -> None:
    faults: list[dict[str, object]] = [
        {"fault": "kill9", "fixes_acknowledged": 12000, "fixes_lost": 0, "recover_s": 1.5},
        {"fault": "postgres_down", "error": "TimeoutError: x"},
    ]
    lines = count.markdown_table(faults).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| fault | fixes ack'd")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["kill9", "12,000", "—", "0"] and cells[-1] == "1.5"
    assert "error: TimeoutError: x" in lines[3]
    assert lines[3].count("|") == lines[2].count("|")


def test_kill9_at_random_points_of_batches_loses_and_repeats_nothing(
    mosquitto: MosquittoServer, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """``cargowatch serve`` killed with ``kill -9`` three times at random points of its
    batches while a fleet publishes (real Mosquitto and TimescaleDB): every acknowledged
    message stored once, every tamper trigger alarmed once, no milestone twice."""
    cfg = dataclasses.replace(QUICK, trucks=24, warm_s=6.0, after_s=4.0, seed=5)
    result = run_fault("kill9", 0, cfg, mosquitto, pg_server, tmp_path)
    assert "error" not in result, result
    assert result["kills"] == 3 and result["drained"], result
    assert result["triggers"] > 0 and result["fixes_acknowledged"] > 0, result
    zero = {k: v for k, v in result.items() if k.endswith(("_lost", "_missing", "_duplicated"))}
    # A receiver that answered 200 just before a kill -9, before the sender recorded it, gets
    # that event again (at-least-once; receivers de-duplicate by id): at most one per kill.
    assert zero.pop("deliveries_duplicated") <= result["kills"], result
    assert zero and not any(zero.values()), zero
