"""Alarm endpoints: queue filters, acknowledge / resolve transitions, 409 and 422 refusals."""

from __future__ import annotations

import pytest

from rules.events import AlarmType
from tests.api_world import OTHER, OWN, World

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_ack_then_resolve_records_history_and_handling(world: World) -> None:
    alarm_id = world.tenants[OWN].alarm_id
    desk = world.auth("desk")
    world.clock.advance(60)
    r = await world.client.post(
        f"/v1/alarms/{alarm_id}/ack", json={"by": "desk-07", "note": "called driver"}, headers=desk
    )
    assert r.status_code == 200, r.text
    acked = r.json()
    assert acked["status"] == "acknowledged"
    assert acked["acknowledged_by"] == "desk-07"
    assert acked["acknowledged_at"].endswith("Z")
    assert [h["action"] for h in acked["history"]] == ["raised", "acknowledged"]

    world.clock.advance(600)
    r = await world.client.post(
        f"/v1/alarms/{alarm_id}/resolve",
        json={
            "by": "desk-07",
            "cause": "police_check",
            "action": "waited",
            "feedback": "checked by police at toll gate",
        },
        headers=desk,
    )
    assert r.status_code == 200, r.text
    resolved = r.json()
    assert resolved["status"] == "resolved"
    assert resolved["resolution"] == {
        "cause": "police_check",
        "action": "waited",
        "feedback": "checked by police at toll gate",
    }
    assert [h["action"] for h in resolved["history"]] == ["raised", "acknowledged", "resolved"]

    # the shipper reads the handling record of its own alarm
    r = await world.client.get(f"/v1/alarms/{alarm_id}", headers=world.auth("shipper"))
    assert r.status_code == 200
    assert r.json()["resolution"]["feedback"] == "checked by police at toll gate"


async def test_resolve_straight_from_open_implies_ack(world: World) -> None:
    alarm_id = world.raise_alarm(world.tenants[OWN], AlarmType.SPEEDING)
    r = await world.client.post(
        f"/v1/alarms/{alarm_id}/resolve",
        json={"by": "desk-01", "cause": "false_alarm"},
        headers=world.auth("admin"),
    )
    assert r.status_code == 200
    assert [h["action"] for h in r.json()["history"]] == ["raised", "acknowledged", "resolved"]


async def test_refused_transitions_are_409(world: World) -> None:
    alarm_id = world.raise_alarm(world.tenants[OWN], AlarmType.LONG_STOP)
    desk = world.auth("desk")
    ack = {"by": "desk-02"}
    assert (
        await world.client.post(f"/v1/alarms/{alarm_id}/ack", json=ack, headers=desk)
    ).status_code == 200
    again = await world.client.post(f"/v1/alarms/{alarm_id}/ack", json=ack, headers=desk)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    resolve = {"by": "desk-02", "cause": "rest_stop"}
    r = await world.client.post(f"/v1/alarms/{alarm_id}/resolve", json=resolve, headers=desk)
    assert r.status_code == 200
    for action, body in (("ack", ack), ("resolve", resolve)):
        r = await world.client.post(f"/v1/alarms/{alarm_id}/{action}", json=body, headers=desk)
        assert r.status_code == 409, (action, r.text)
        assert r.json()["error"]["code"] == "conflict"
    # the refusals left no trace in the history
    history = world.runtime.store.alarm_history(alarm_id)
    assert [h["action"] for h in history] == ["raised", "acknowledged", "resolved"]


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("ack", {"note": 5}),
        ("ack", {"note": "x" * 4001}),
        ("ack", {"by": "x" * 129}),
        ("ack", {"by": "desk", "extra": 1}),
        ("resolve", {"by": "desk-07"}),
        ("resolve", {"by": "desk-07", "cause": "aliens"}),
        ("resolve", {"by": "desk-07", "cause": "other", "action": 5}),
        ("resolve", {}),
    ],
)
async def test_bad_bodies_are_422_and_change_nothing(world: World, action: str, body: dict) -> None:
    alarm_id = world.tenants[OTHER].alarm_id
    before = world.runtime.store.get_alarm(alarm_id)
    r = await world.client.post(
        f"/v1/alarms/{alarm_id}/{action}", json=body, headers=world.auth("desk")
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert world.runtime.store.get_alarm(alarm_id) == before


async def test_unknown_alarm_is_404(world: World) -> None:
    r = await world.client.post(
        "/v1/alarms/alm_nope/ack", json={"by": "desk"}, headers=world.auth("desk")
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_queue_filters(world: World) -> None:
    desk = world.auth("desk")
    speeding = world.raise_alarm(world.tenants[OTHER], AlarmType.SPEEDING)
    r = await world.client.get("/v1/alarms", params={"type": "SPEEDING"}, headers=desk)
    assert [a["alarm_id"] for a in r.json()] == [speeding]
    r = await world.client.get(
        "/v1/alarms", params={"status": "open,acknowledged", "shipper": OTHER}, headers=desk
    )
    assert {a["alarm_id"] for a in r.json()} == {speeding, world.tenants[OTHER].alarm_id}
    r = await world.client.get(
        "/v1/alarms", params={"trip_id": world.tenants[OWN].trip_id}, headers=desk
    )
    assert {a["trip_id"] for a in r.json()} == {world.tenants[OWN].trip_id}
    # since: RFC 3339 and epoch ms agree; later than every alarm gives none
    now = world.clock.now_ms()
    for since in (str(now + 1), "2030-01-01T00:00:00Z"):
        r = await world.client.get("/v1/alarms", params={"since": since}, headers=desk)
        assert r.status_code == 200 and r.json() == []
    r = await world.client.get("/v1/alarms", params={"since": str(now - 1)}, headers=desk)
    assert len(r.json()) >= 3
    # each alarm carries its history by default
    assert all(a["history"] and a["history"][0]["action"] == "raised" for a in r.json())


@pytest.mark.parametrize(
    "params",
    [
        {"status": "closed"},
        {"type": "METEOR"},
        {"since": "yesterday"},
        {"since": "2026-11-22T08:00:00"},
        {"limit": "0"},
        {"limit": "x"},
    ],
)
async def test_bad_filters_are_422(world: World, params: dict[str, str]) -> None:
    r = await world.client.get("/v1/alarms", params=params, headers=world.auth("desk"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


# -- who acts, assignment, call log, feedback (contract v2 §5) --------------------------------
async def _me(world: World, role: str) -> dict:
    return (await world.client.get("/v1/keys/me", headers=world.auth(role))).json()


async def test_the_actor_is_the_keys_name_whatever_the_body_says(world: World) -> None:
    alarm_id = world.tenants[OWN].alarm_id
    me = await _me(world, "desk")
    desk = world.auth("desk")
    r = await world.client.post(f"/v1/alarms/{alarm_id}/ack", json={"by": "mallory"}, headers=desk)
    assert r.status_code == 200 and r.json()["acknowledged_by"] == me["name"] == "desk-07"
    r = await world.client.post(
        f"/v1/alarms/{alarm_id}/resolve", json={"cause": "other"}, headers=world.auth("admin")
    )
    assert r.status_code == 200 and r.json()["resolved_by"] == "admin"
    history = r.json()["history"]
    assert all("by" in e and "key_id" in e for e in history)
    assert [(e["action"], e["by"]) for e in history] == [
        ("raised", "engine"),
        ("acknowledged", "desk-07"),
        ("resolved", "admin"),
    ]
    assert history[1]["key_id"] == me["key_id"] and history[0]["key_id"] is None
    assert "mallory" not in r.text


async def test_assign_shows_whose_alarm_it_is(world: World) -> None:
    alarm_id = world.tenants[OWN].alarm_id
    desk = world.auth("desk")
    url = f"/v1/alarms/{alarm_id}/assign"
    r = await world.client.post(url, json={"to": "desk-07"}, headers=world.auth("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["assigned_to"] == "desk-07" and r.json()["status"] == "open"
    entry = r.json()["history"][-1]
    assert (entry["action"], entry["by"], entry["from"], entry["to"]) == (
        "assigned",
        "admin",
        None,
        "desk-07",
    )
    mine = await world.client.get("/v1/alarms", params={"assigned_to": "desk-07"}, headers=desk)
    assert [a["alarm_id"] for a in mine.json()] == [alarm_id]
    none = await world.client.get("/v1/alarms", params={"assigned_to": "admin"}, headers=desk)
    assert none.json() == []
    for bad in ({"to": "nobody-here"}, {"to": "fleet-01"}, {"to": ""}, {}):
        r = await world.client.post(url, json=bad, headers=desk)
        assert r.status_code == 422, (bad, r.text)
    r = await world.client.post(url, json={"to": None}, headers=desk)
    assert r.status_code == 200 and r.json()["assigned_to"] is None
    await world.client.post(f"/v1/alarms/{alarm_id}/resolve", json={"cause": "other"}, headers=desk)
    r = await world.client.post(url, json={"to": "desk-07"}, headers=desk)
    assert r.status_code == 409


async def test_the_call_log_changes_no_status(world: World) -> None:
    alarm_id = world.tenants[OWN].alarm_id
    desk = world.auth("desk")
    url = f"/v1/alarms/{alarm_id}/notes"
    body = {"text": "driver says rest stop", "contact": "driver", "outcome": "call back 10:00"}
    r = await world.client.post(url, json=body, headers=desk)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "open"
    entry = r.json()["history"][-1]
    assert entry["action"] == "note" and entry["by"] == "desk-07"
    assert (entry["contact"], entry["text"], entry["outcome"]) == (
        "driver",
        "driver says rest stop",
        "call back 10:00",
    )
    for bad in ({"text": ""}, {"text": "x", "contact": "mother"}, {"contact": "driver"}):
        assert (await world.client.post(url, json=bad, headers=desk)).status_code == 422
    for role in ("fleet", "shipper"):
        r = await world.client.post(url, json={"text": "x"}, headers=world.auth(role))
        assert r.status_code == 403
    await world.client.post(f"/v1/alarms/{alarm_id}/resolve", json={"cause": "other"}, headers=desk)
    r = await world.client.post(url, json={"text": "shipper informed"}, headers=desk)
    assert r.status_code == 200 and r.json()["status"] == "resolved"
    actions = [h["action"] for h in world.runtime.store.alarm_history(alarm_id)]
    assert actions == ["raised", "note", "acknowledged", "resolved", "note"]


async def test_shipper_feedback_after_resolve(world: World) -> None:
    alarm_id = world.tenants[OWN].alarm_id
    url = f"/v1/alarms/{alarm_id}/feedback"
    body = {"verdict": "disputed", "comment": "the driver was not called"}
    shipper = world.auth("shipper")
    r = await world.client.post(url, json=body, headers=shipper)
    assert r.status_code == 409  # not resolved yet
    await world.client.post(
        f"/v1/alarms/{alarm_id}/resolve", json={"cause": "rest_stop"}, headers=world.auth("desk")
    )
    for role, status in (("desk", 403), ("fleet", 403), ("other_shipper", 404)):
        r = await world.client.post(url, json=body, headers=world.auth(role))
        assert r.status_code == status, (role, r.text)
    assert (
        await world.client.post(url, json={"verdict": "meh"}, headers=shipper)
    ).status_code == 422
    r = await world.client.post(url, json=body, headers=shipper)
    assert r.status_code == 200, r.text
    fb = r.json()["feedback"]
    assert (fb["verdict"], fb["comment"], fb["by"]) == ("disputed", body["comment"], "pg-portal")
    got = (await world.client.get(f"/v1/alarms/{alarm_id}", headers=world.auth("desk"))).json()
    assert got["feedback"]["verdict"] == "disputed"
    assert got["history"][-1]["action"] == "feedback"
    # not a webhook: no delivery of an alarm.feedback event
    bodies = [d["body"] for d in world.runtime.store.list_deliveries(limit=1000)]
    assert not any("alarm.feedback" in b for b in bodies)
