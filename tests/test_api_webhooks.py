"""``/v1/webhooks``: subscriptions per shipper, secrets never returned, delivery state."""

from __future__ import annotations

import pytest

from rules.events import AlarmType
from tests.api_world import OTHER, OWN, World

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_subscribe_list_and_delete(world: World) -> None:
    shipper = world.auth("shipper")
    secret = "whsec_0123456789abcdef"
    body = {
        "url": "https://hooks.pg.test/cargowatch",
        "secret": secret,
        "events": ["alarm.raised", "trip.milestone", "alarm.raised"],
    }
    r = await world.client.post("/v1/webhooks", json=body, headers=shipper)
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["shipper"] == OWN
    assert hook["events"] == ["alarm.raised", "trip.milestone"]
    assert hook["secret_hint"] == "…cdef"
    assert secret not in r.text
    stored = {h["webhook_id"]: h for h in world.runtime.store.list_webhooks(OWN)}
    assert stored[hook["webhook_id"]]["secret"] == secret  # the sender signs with it
    listed = await world.client.get("/v1/webhooks", headers=shipper)
    assert hook["webhook_id"] in {h["webhook_id"] for h in listed.json()}
    assert secret not in listed.text
    r = await world.client.delete(f"/v1/webhooks/{hook['webhook_id']}", headers=shipper)
    assert r.status_code == 204 and r.content == b""
    assert hook["webhook_id"] not in {h["webhook_id"] for h in world.runtime.store.list_webhooks()}
    r = await world.client.delete(f"/v1/webhooks/{hook['webhook_id']}", headers=shipper)
    assert r.status_code == 404


async def test_cannot_delete_another_tenants_hook(world: World) -> None:
    other = world.tenants[OTHER].webhook_id
    r = await world.client.delete(f"/v1/webhooks/{other}", headers=world.auth("shipper"))
    assert r.status_code == 404
    assert other in {h["webhook_id"] for h in world.runtime.store.list_webhooks(OTHER)}


async def test_deliveries_show_state_per_tenant(world: World) -> None:
    world.raise_alarm(world.tenants[OWN], AlarmType.LOW_BATTERY)
    r = await world.client.get("/v1/webhooks/deliveries", headers=world.auth("shipper"))
    assert r.status_code == 200
    rows = r.json()
    assert len(rows) >= 2 and {d["shipper"] for d in rows} == {OWN}
    assert {d["event_type"] for d in rows} == {"alarm.raised"}
    first = rows[0]
    assert first["status"] == "pending" and first["attempts"] == 0
    assert first["next_attempt_at"].endswith("Z")
    assert "body" not in first
    r = await world.client.get(
        "/v1/webhooks/deliveries", params={"status": "delivered"}, headers=world.auth("admin")
    )
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"url": "not a url", "secret": "s" * 16},
        {"url": "ftp://example.test/x", "secret": "s" * 16},
        {"url": "https://example.test/x", "secret": "short"},
        {"url": "https://example.test/x", "secret": "s" * 16, "events": ["alarm.exploded"]},
        {"url": "https://example.test/x", "secret": "s" * 16, "events": []},
        {"secret": "s" * 16},
    ],
)
async def test_bad_subscriptions_are_422(world: World, body: dict) -> None:
    r = await world.client.post("/v1/webhooks", json=body, headers=world.auth("shipper"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
