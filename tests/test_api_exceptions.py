"""Exceptions reported by people (contract v2 §5, §6): made by the desk or the trip's
shipper, handled like alarms (deadlines by the shipper's SLA, escalation, history), kept out
of the alarm queue, ``exception.created`` to the shipper's webhooks and the live feed."""

from __future__ import annotations

import json

import pytest

from tests.api_world import OTHER, OWN, World

pytestmark = pytest.mark.asyncio(loop_scope="session")

MIN = 60_000


def _body(w: World, shipper: str = OWN, **extra: object) -> dict:
    return {
        "trip_id": w.tenants[shipper].trip_id,
        "type": "damage",
        "description": "two pallets crushed",
        **extra,
    }


async def test_a_shipper_reports_on_its_own_trip_only(world: World) -> None:
    sub = world.runtime.hub.subscribe()
    r = await world.client.post(
        "/v1/exceptions", json=_body(world, stop_id="S1"), headers=world.auth("shipper")
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["kind"] == "exception" and made["exception_id"] == made["alarm_id"]
    assert (made["type"], made["severity"], made["status"], made["stop_id"]) == (
        "damage",
        "major",
        "open",
        "S1",
    )
    assert made["shipper"] == OWN and made["reported_by"] == "pg-portal"
    assert made["history"][0]["action"] == "raised" and made["history"][0]["key_id"]
    # the other tenant's trip does not exist for this key; fleet may not report
    r = await world.client.post(
        "/v1/exceptions", json=_body(world, OTHER), headers=world.auth("shipper")
    )
    assert r.status_code == 404 and OTHER not in r.text.lower()
    r = await world.client.post("/v1/exceptions", json=_body(world), headers=world.auth("fleet"))
    assert r.status_code == 403
    # on the live feed and queued for the shipper's webhook
    events = sub.drain()
    sub.close()
    assert [e["type"] for e in events] == ["exception.created"]
    bodies = [json.loads(d["body"]) for d in world.runtime.store.list_deliveries(OWN)]
    created = [b for b in bodies if b["type"] == "exception.created"]
    assert len(created) == 1 and created[0]["data"]["exception_id"] == made["exception_id"]
    assert not any(b["type"] == "exception.created" for b in map(
        json.loads, (d["body"] for d in world.runtime.store.list_deliveries(OTHER))
    ))  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        {"type": "weather"},
        {"stop_id": "S9"},
        {"severity": "huge"},
        {"description": ""},
        {"trip_id": "NO-SUCH-TRIP"},
        {"unknown": 1},
    ],
)
async def test_bad_exceptions_are_refused(world: World, extra: dict) -> None:
    r = await world.client.post(
        "/v1/exceptions", json=_body(world, **extra), headers=world.auth("desk")
    )
    assert r.status_code == (404 if "trip_id" in extra else 422), r.text
    assert world.runtime.store.list_alarms(kind="exception") == []


async def test_handled_like_an_alarm_and_kept_out_of_the_alarm_queue(world: World) -> None:
    desk = world.auth("desk")
    raised_at = world.clock.now_ms()
    r = await world.client.post(
        "/v1/exceptions", json=_body(world, severity="critical", type="time"), headers=desk
    )
    exc = r.json()
    exc_id = exc["exception_id"]
    # pg's SLA (api_world): critical acknowledged within 5 min, resolved within 120 min
    doc = world.runtime.store.get_alarm(exc_id)
    assert doc is not None
    assert doc["ack_due"] == raised_at + 5 * MIN and doc["resolve_due"] == raised_at + 120 * MIN
    alarms = (await world.client.get("/v1/alarms", headers=desk)).json()
    assert exc_id not in {a["alarm_id"] for a in alarms}
    listed = (await world.client.get("/v1/exceptions", headers=world.auth("shipper"))).json()
    assert [e["exception_id"] for e in listed] == [exc_id]
    assert (
        await world.client.get("/v1/exceptions", headers=world.auth("other_shipper"))
    ).json() == []
    r = await world.client.get(f"/v1/exceptions/{exc_id}", headers=world.auth("other_shipper"))
    assert r.status_code == 404
    alarm_id = world.tenants[OWN].alarm_id
    r = await world.client.get(f"/v1/exceptions/{alarm_id}", headers=desk)
    assert r.status_code == 404  # an alarm is not an exception
    # escalation as for alarms
    world.clock.advance(6 * 60)
    world.runtime.alarms.escalate_due()
    got = (await world.client.get(f"/v1/exceptions/{exc_id}", headers=desk)).json()
    assert got["escalation_level"] == 1 and got["history"][-1]["action"] == "escalated"
    # handling under both paths
    r = await world.client.post(f"/v1/exceptions/{exc_id}/ack", json={}, headers=desk)
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    r = await world.client.post(
        f"/v1/alarms/{exc_id}/notes",
        json={"text": "consignee", "contact": "consignee"},
        headers=desk,
    )
    assert r.status_code == 200
    r = await world.client.post(
        f"/v1/exceptions/{exc_id}/resolve",
        json={"cause": "customer_instruction", "action": "re-delivery booked"},
        headers=desk,
    )
    assert r.status_code == 200 and r.json()["resolution"]["action"] == "re-delivery booked"
    r = await world.client.post(
        f"/v1/exceptions/{exc_id}/feedback",
        json={"verdict": "accepted"},
        headers=world.auth("shipper"),
    )
    assert r.status_code == 200 and r.json()["feedback"]["verdict"] == "accepted"
    actions = [h["action"] for h in r.json()["history"]]
    assert actions == ["raised", "escalated", "acknowledged", "note", "resolved", "feedback"]
    # its handling is not sent as alarm.* webhooks
    bodies = [json.loads(d["body"]) for d in world.runtime.store.list_deliveries(OWN)]
    assert not any(
        b["type"].startswith("alarm.") and b["data"]["alarm_id"] == exc_id for b in bodies
    )
