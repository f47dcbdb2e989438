"""A shipper's rules and SLA go through the engine's own validators before they are stored
(cargowatch/services/shippers.py), and a start with a stored value the engine refuses goes on
(cargowatch/services/state.py).

The bug these pin down: ``{"rules": {"corridor_m": 200000}}`` passed the runtime's own check
(any positive number), was stored, was then refused by the engine with 422, and every later
start exited 1 while loading it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api import create_app
from cargowatch.runtime import Runtime
from core.clock import ManualClock
from rules import DEFAULT_RULES, RULE_NAMES
from telemetry.store import open_store
from tests.api_world import ADMIN_KEY, api_client, make_runtime, trip_doc

ASYNC = pytest.mark.asyncio(loop_scope="session")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@ASYNC
@pytest.mark.parametrize(
    "body",
    [
        {"rules": {"corridor_m": 200000}},  # positive, but above the engine's 100 km
        {"rules": {"off_route_min_fixes": 2.5}},  # a count must be whole
        {"rules": {"no_such_rule": 5}},
        {"sla": {"critical": {"ack_min": 0}}},
        {"sla": {"critical": {"ack_min": 1e12}}},  # past the SLA's upper bound
    ],
    ids=["corridor-too-wide", "fractional-count", "unknown-rule", "zero-ack", "huge-ack"],
)
async def test_a_value_the_engine_refuses_is_422_and_nothing_is_stored(
    tmp_path: Path, body: dict[str, object]
) -> None:
    runtime = make_runtime(tmp_path, ManualClock())
    try:
        async with api_client(create_app(runtime)) as client:
            before = await client.put(
                "/v1/shippers/keep", json={"rules": {"corridor_m": 800}}, headers=ADMIN
            )
            fresh = await client.put("/v1/shippers/x", json=body, headers=ADMIN)
            changed = await client.put("/v1/shippers/keep", json=body, headers=ADMIN)
        assert before.status_code == 200, before.text
        assert fresh.status_code == 422, fresh.text
        assert changed.status_code == 422, changed.text
        assert runtime.store.get_shipper("x") is None
        kept = runtime.store.get_shipper("keep")
        assert kept is not None and kept["rules"] == {"corridor_m": 800}
    finally:
        runtime.close()


@ASYNC
async def test_valid_rules_are_stored_and_reach_the_engine(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, ManualClock())
    try:
        runtime.create_trip(trip_doc("T-1", "x", ["x-gps-1"], corridor_m=None, rules={}))
        async with api_client(create_app(runtime)) as client:
            r = await client.put(
                "/v1/shippers/x", json={"rules": {"corridor_m": 90000}}, headers=ADMIN
            )
        assert r.status_code == 200, r.text
        assert runtime.store.get_shipper("x")["rules"] == {"corridor_m": 90000}
        assert _corridor(runtime, "T-1") == 90000
    finally:
        runtime.close()


def test_a_start_with_bad_stored_shipper_rules_goes_on_with_the_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'api.sqlite'}")  # make_runtime's file
    store.put_shipper({"shipper": "x", "sla": {}, "rules": {"corridor_m": 200000}})
    store.put_shipper({"shipper": "good", "sla": {}, "rules": {"corridor_m": 700}})
    store.close()
    seed = make_runtime(tmp_path, ManualClock())
    seed.create_trip(trip_doc("T-x", "x", ["x-gps-1"], corridor_m=None, rules={}))
    seed.create_trip(trip_doc("T-good", "good", ["good-gps-1"], corridor_m=None, rules={}))
    seed.close()

    with caplog.at_level(logging.ERROR, logger="cargowatch"):
        runtime = make_runtime(tmp_path, ManualClock())  # Runtime.open: loads the state
    try:
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("shipper x" in m and "corridor_m" in m for m in logged), logged
        assert _corridor(runtime, "T-x") == DEFAULT_RULES["corridor_m"]
        assert _corridor(runtime, "T-good") == 700  # the other shippers are loaded as stored
        assert runtime.trip_state("T-x") is not None  # the trip itself is watched
    finally:
        runtime.close()


def _corridor(runtime: Runtime, trip_id: str) -> float:
    """The corridor the engine applies to a live trip (its row of the rule table)."""
    engine = runtime.engine
    slot = engine._slots[trip_id]
    return float(engine.trips.rules[slot][RULE_NAMES.index("corridor_m")])


@ASYNC
async def test_a_trip_sla_goes_through_the_same_check(tmp_path: Path) -> None:
    """Before, a trip's SLA was stored unchecked and skipped (logged) at every alarm."""
    runtime = make_runtime(tmp_path, ManualClock())
    try:
        bad = trip_doc("T-bad", "x", ["x-gps-1"], sla={"critical": {"ack_min": 0}})
        good = trip_doc("T-good", "x", ["x-gps-2"], sla={"critical": {"ack_min": 5}})
        async with api_client(create_app(runtime)) as client:
            refused = await client.post("/v1/trips", json=bad, headers=ADMIN)
            taken = await client.post("/v1/trips", json=good, headers=ADMIN)
        assert refused.status_code == 422, refused.text
        assert runtime.store.get_trip("T-bad") is None
        assert taken.status_code == 201, taken.text
        assert runtime.store.get_trip("T-good")["sla"] == {"critical": {"ack_min": 5}}
    finally:
        runtime.close()


NOTIFY = [
    {"email": "ops@pg.example", "severities": ["critical"],
     "events": ["alarm.raised", "alarm.escalated"]},
    {"email": "Desk@PG.Example"},
]  # fmt: skip


@ASYNC
async def test_notify_is_stored_and_returned(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, ManualClock())
    try:
        async with api_client(create_app(runtime)) as client:
            put = await client.put("/v1/shippers/pg", json={"notify": NOTIFY}, headers=ADMIN)
            got = await client.get("/v1/shippers/pg", headers=ADMIN)
            listed = await client.get("/v1/shippers", headers=ADMIN)
            cleared = await client.put("/v1/shippers/pg", json={}, headers=ADMIN)
        assert put.status_code == 200, put.text
        want = [
            {"email": "ops@pg.example", "severities": ["critical"],
             "events": ["alarm.raised", "alarm.escalated"]},
            {"email": "Desk@pg.example", "severities": ["critical", "major", "minor"],
             "events": ["alarm.raised", "alarm.acknowledged", "alarm.resolved",
                        "alarm.escalated", "exception.created"]},
        ]  # fmt: skip
        assert put.json()["notify"] == want
        assert got.json()["notify"] == want and listed.json()[0]["notify"] == want
        assert cleared.json()["notify"] == []  # a PUT replaces the contract, list included
    finally:
        runtime.close()


@ASYNC
@pytest.mark.parametrize(
    ("notify", "text"),
    [
        ([{"email": "not an address"}], "notify[0].email"),
        ([{"email": "ops@pg.example"}, {"email": "ops@PG.example"}], "listed twice"),
        ([{"email": "ops@pg.example", "severities": ["urgent"]}], "severities"),
        ([{"email": "ops@pg.example", "events": ["trip.milestone"]}], "events"),
        ([{"email": "ops@pg.example", "cc": "x@pg.example"}], "cc"),
        ([{"severities": ["critical"]}], "email"),
        ("ops@pg.example", "notify"),
    ],
    ids=["address", "twice", "severity", "event", "extra-field", "no-email", "not-a-list"],
)
async def test_a_bad_notify_list_is_422_and_nothing_is_stored(
    tmp_path: Path, notify: object, text: str
) -> None:
    runtime = make_runtime(tmp_path, ManualClock())
    try:
        async with api_client(create_app(runtime)) as client:
            before = await client.put("/v1/shippers/pg", json={"notify": NOTIFY}, headers=ADMIN)
            r = await client.put("/v1/shippers/pg", json={"notify": notify}, headers=ADMIN)
        assert before.status_code == 200, before.text
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_error" and text in r.text, r.text
        assert len(runtime.store.get_shipper("pg")["notify"]) == 2  # unchanged
    finally:
        runtime.close()
