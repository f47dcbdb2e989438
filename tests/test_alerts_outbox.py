from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alerts import enqueue_event, iso
from alerts.outbox import stable_event_id
from core.clock import ManualClock
from tests.alerts_support import T0, make_store


def hooks(store) -> None:
    store.put_webhook({"webhook_id": "wh-pg-all", "shipper": "pg", "url": "http://a/",
                       "secret": "s1",
                       "events": ["alarm.raised", "alarm.resolved", "trip.milestone"]})  # fmt: skip
    store.put_webhook({"webhook_id": "wh-pg-ms", "shipper": "pg", "url": "http://b/",
                       "secret": "s2", "events": ["trip.milestone"]})  # fmt: skip
    store.put_webhook({"webhook_id": "wh-acme", "shipper": "acme", "url": "http://c/",
                       "secret": "s3", "events": ["alarm.raised"]})  # fmt: skip


def test_one_delivery_per_matching_subscription_of_that_shipper(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    hooks(store)
    clock = ManualClock()
    data = {"alarm_id": "alm_1", "distance": np.float64(812.5), "n": np.int64(3)}
    eid = enqueue_event(
        store, clock, shipper="pg", type="alarm.raised", data=data, order_key="alarm:alm_1"
    )
    assert eid.startswith("evt_")
    rows = store.list_deliveries(status="pending")
    assert [r["webhook_id"] for r in rows] == ["wh-pg-all"]
    row = rows[0]
    assert row["shipper"] == "pg" and row["order_key"] == "alarm:alm_1"
    assert row["attempts"] == 0 and row["next_attempt_at"] == T0 and row["created_at"] == T0
    envelope = json.loads(row["body"])
    assert envelope == {
        "id": eid,
        "type": "alarm.raised",
        "created_at": iso(T0),
        "shipper": "pg",
        "data": {"alarm_id": "alm_1", "distance": 812.5, "n": 3},
    }


def test_the_same_bytes_go_to_every_receiver(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    hooks(store)
    eid = stable_event_id("T1", "milestone", "sealed")
    got = enqueue_event(
        store, ManualClock(), shipper="pg", type="trip.milestone", data={"trip_id": "T1"},
        order_key="trip:T1", event_id=eid,
    )  # fmt: skip
    assert got == eid == stable_event_id("T1", "milestone", "sealed")
    rows = store.list_deliveries(shipper="pg")
    assert sorted(r["webhook_id"] for r in rows) == ["wh-pg-all", "wh-pg-ms"]
    assert rows[0]["body"] == rows[1]["body"]
    assert {r["event_id"] for r in rows} == {eid}
    assert store.list_deliveries(shipper="acme") == []


def test_no_subscription_no_rows(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    hooks(store)
    enqueue_event(
        store, ManualClock(), shipper="acme", type="alarm.escalated", data={}, order_key="k"
    )
    enqueue_event(store, ManualClock(), shipper="nobody", type="alarm.raised", data={},
                  order_key="k")  # fmt: skip
    assert store.list_deliveries() == []


def test_a_shipper_never_gets_rows_for_another_shippers_hooks(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    hooks(store)
    # even when the caller hands over every subscription of every shipper
    enqueue_event(
        store, ManualClock(), shipper="acme", type="alarm.raised", data={}, order_key="k",
        hooks=store.list_webhooks(),
    )  # fmt: skip
    assert [r["webhook_id"] for r in store.list_deliveries()] == ["wh-acme"]


def test_email_rows_one_per_wanting_address_with_a_stable_id(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    hooks(store)
    store.put_shipper({"shipper": "pg", "sla": {}, "rules": {}, "notify": [
        {"email": "ops@pg.example", "severities": ["critical"], "events": ["alarm.raised"]},
        {"email": "all@pg.example", "severities": ["critical", "major", "minor"],
         "events": ["alarm.raised", "alarm.escalated"]},
        {"email": "minor@pg.example", "severities": ["minor"], "events": ["alarm.raised"]},
    ]})  # fmt: skip
    clock = ManualClock()
    data = {"alarm_id": "alm_1", "severity": "critical"}
    eid = stable_event_id("alm_1", "alarm.raised")
    for _ in range(2):  # the same event twice (a re-delivered engine event): rows once
        enqueue_event(store, clock, shipper="pg", type="alarm.raised", data=data,
                      order_key="alarm:alm_1", event_id=eid)  # fmt: skip
    rows = store.list_deliveries(limit=100)
    mails = sorted((r for r in rows if r.get("kind") == "email"), key=lambda r: r["to"])
    assert [r["to"] for r in mails] == ["all@pg.example", "ops@pg.example"]
    assert [r["webhook_id"] for r in mails] == ["email:all@pg.example", "email:ops@pg.example"]
    assert {r["alarm_id"] for r in mails} == {"alm_1"}
    assert len({r["delivery_id"] for r in rows}) == len(rows) == 3  # and the webhook's row
    webhook_row = next(r for r in rows if r.get("kind") is None)
    assert all(r["body"] == webhook_row["body"] for r in mails)  # the same event
    # a milestone is not e-mailed, and a shipper without a notify list gets no mail rows
    enqueue_event(store, clock, shipper="pg", type="trip.milestone", data={"trip_id": "T1"},
                  order_key="trip:T1")  # fmt: skip
    enqueue_event(store, clock, shipper="acme", type="alarm.raised", data=data, order_key="k")
    assert len([r for r in store.list_deliveries(limit=100) if r.get("kind") == "email"]) == 2


def test_exception_created_is_a_webhook_event(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.put_webhook({"webhook_id": "wh", "shipper": "pg", "url": "http://a/", "secret": "s",
                       "events": ["exception.created"]})  # fmt: skip
    enqueue_event(store, ManualClock(), shipper="pg", type="exception.created",
                  data={"exception_id": "exc_1", "severity": "major"},
                  order_key="exception:exc_1")  # fmt: skip
    (row,) = store.list_deliveries()
    assert row["webhook_id"] == "wh" and row["event_type"] == "exception.created"
