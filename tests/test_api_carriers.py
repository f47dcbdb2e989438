"""Carriers (contract v2 §5): kept by the desk, named by trips, shown on their alarms."""

from __future__ import annotations

import pytest

from rules.events import AlarmType
from tests.api_world import OWN, Tenant, World, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")

CARRIER = {
    "name": "Yangtze Haulage",
    "contacts": [
        {"name": "Li Wei", "role": "dispatcher", "phone": "+86 21 5555 0101", "email": None},
        {"name": "Night desk", "role": None, "phone": None, "email": "night@yangtze.test"},
    ],
}


async def test_put_get_list_and_replace(world: World) -> None:
    desk = world.auth("desk")
    r = await world.client.put("/v1/carriers/yangtze", json=CARRIER, headers=desk)
    assert r.status_code == 200, r.text
    assert r.json()["carrier_id"] == "yangtze" and r.json()["contacts"] == CARRIER["contacts"]
    r = await world.client.get("/v1/carriers/yangtze", headers=world.auth("fleet"))
    assert r.status_code == 200 and r.json()["name"] == "Yangtze Haulage"
    created = r.json()["created_at"]
    world.clock.advance(60)
    replaced = {"name": "Yangtze Haulage Co.", "contacts": CARRIER["contacts"][:1]}
    r = await world.client.put("/v1/carriers/yangtze", json=replaced, headers=world.auth("admin"))
    assert r.json()["created_at"] == created and r.json()["updated_at"] != created
    listed = (await world.client.get("/v1/carriers", headers=desk)).json()
    assert [(c["carrier_id"], len(c["contacts"])) for c in listed] == [("yangtze", 1)]
    assert (await world.client.get("/v1/carriers/nope", headers=desk)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"contacts": []},
        {"name": ""},
        {"name": "X", "contacts": [{"name": "No way to reach"}]},
        {"name": "X", "contacts": [{"name": "A", "phone": "call me"}]},
        {"name": "X", "contacts": [{"name": "A", "email": "not-an-address"}]},
        {"name": "X", "contacts": [{"name": "A", "phone": "+861", "fax": "1"}]},
    ],
)
async def test_bad_carriers_are_422_and_store_nothing(world: World, body: dict) -> None:
    r = await world.client.put("/v1/carriers/c1", json=body, headers=world.auth("desk"))
    assert r.status_code == 422, r.text
    assert world.runtime.store.get_carrier("c1") is None


async def test_an_alarm_shows_its_trips_carrier(world: World) -> None:
    desk = world.auth("desk")
    await world.client.put("/v1/carriers/yangtze", json=CARRIER, headers=desk)
    doc = trip_doc("PG-CARRIED-1", OWN, ["pg-lock-c1"], carrier="yangtze")
    r = await world.client.post("/v1/trips", json=doc, headers=world.auth("admin"))
    assert r.status_code == 201 and r.json()["carrier"] == "yangtze"
    bad = trip_doc("PG-CARRIED-2", OWN, ["pg-lock-c2"], carrier="has spaces")
    assert (
        await world.client.post("/v1/trips", json=bad, headers=world.auth("admin"))
    ).status_code == 422
    tenant = Tenant(OWN, "", "PG-CARRIED-1", ["pg-lock-c1"], "", "")
    alarm_id = world.raise_alarm(tenant, AlarmType.LOCK_TAMPER)
    for role in ("desk", "shipper"):
        got = (await world.client.get(f"/v1/alarms/{alarm_id}", headers=world.auth(role))).json()
        assert got["carrier"] == {"carrier_id": "yangtze", **CARRIER}
    # a trip without a carrier: none on its alarms
    plain = world.tenants[OWN].alarm_id
    assert (await world.client.get(f"/v1/alarms/{plain}", headers=desk)).json()["carrier"] is None
