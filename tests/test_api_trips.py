"""Trips, devices, geofences and shippers through the API."""

from __future__ import annotations

import pytest

from tests.api_world import OTHER, OWN, World, fence_feature, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_create_read_list_and_complete_a_trip(world: World) -> None:
    fleet = world.auth("fleet")
    doc = trip_doc("PG-2026-000123", OWN, ["lock-0001", "gps-0001"])
    r = await world.client.post("/v1/trips", json=doc, headers=fleet)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["status"] == "planned"
    assert made["trip_id"] == "PG-2026-000123" and made["vehicle"] == "沪A12345"
    assert made["stops"][0]["stop_id"] == "S1"
    # its devices were registered with the trip
    for device_id in doc["devices"]:
        r = await world.client.get(f"/v1/devices/{device_id}", headers=fleet)
        assert r.status_code == 200
    got = (await world.client.get("/v1/trips/PG-2026-000123", headers=world.auth("shipper"))).json()
    assert got["trip_id"] == "PG-2026-000123" and "live" in got
    listed = (
        await world.client.get("/v1/trips", params={"status": "planned"}, headers=fleet)
    ).json()
    assert "PG-2026-000123" in {t["trip_id"] for t in listed}
    r = await world.client.post(
        "/v1/trips/PG-2026-000123/complete", json={"by": "fleet-mgr-3"}, headers=fleet
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    stored = world.runtime.store.get_trip("PG-2026-000123")
    assert stored["status"] == "completed"
    listed = (
        await world.client.get("/v1/trips", params={"status": "planned"}, headers=fleet)
    ).json()
    assert "PG-2026-000123" not in {t["trip_id"] for t in listed}


async def test_register_and_update_a_device(world: World) -> None:
    fleet = world.auth("fleet")
    body = {"device_id": "lock-77", "kind": "lock", "shipper": OWN, "name": "door lock"}
    r = await world.client.post("/v1/devices", json=body, headers=fleet)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "lock" and r.json()["created_at"].endswith("Z")
    r = await world.client.post("/v1/devices", json={**body, "name": "rear door"}, headers=fleet)
    assert r.status_code == 200 and r.json()["name"] == "rear door"
    assert "lock-77" in world.runtime.store.device_ids()
    listed = (await world.client.get("/v1/devices", params={"shipper": OWN}, headers=fleet)).json()
    assert "lock-77" in {d["device_id"] for d in listed}
    assert all(d["shipper"] == OWN for d in listed)


async def test_device_shows_its_last_fix(world: World) -> None:
    gps = world.tenants[OWN].devices[1]
    r = await world.client.get(f"/v1/devices/{gps}", headers=world.auth("desk"))
    assert r.status_code == 200
    last = r.json()["last_fix"]
    assert last["ts"] == "2026-11-22T09:00:40.000Z"
    assert last["lat"] == pytest.approx(31.45 - 4 * 0.0006)


async def test_geofences_round_trip_as_geojson(world: World) -> None:
    fleet = world.auth("fleet")
    polygon = {
        "type": "Feature",
        "id": "consignee-a",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [121.46, 31.22],
                    [121.48, 31.22],
                    [121.48, 31.24],
                    [121.46, 31.24],
                    [121.46, 31.22],
                ]
            ],
        },
        "properties": {"kind": "consignee", "name": "Consignee A", "shipper": OWN},
    }
    r = await world.client.post("/v1/geofences", json=polygon, headers=fleet)
    assert r.status_code == 201, r.text
    fence = r.json()
    assert fence["type"] == "Feature" and fence["id"] == "consignee-a"
    assert fence["properties"]["kind"] == "consignee"
    assert fence["geometry"] == polygon["geometry"]
    coll = (
        await world.client.get("/v1/geofences", params={"kind": "consignee"}, headers=fleet)
    ).json()
    assert coll["type"] == "FeatureCollection"
    assert [f["id"] for f in coll["features"]] == ["consignee-a"]
    # a shipper filter returns that shipper's fences and the global ones
    ids = {
        f["id"]
        for f in (
            await world.client.get("/v1/geofences", params={"shipper": OWN}, headers=fleet)
        ).json()["features"]
    }
    assert ids >= {"consignee-a", world.fence_id}
    ids = {
        f["id"]
        for f in (
            await world.client.get("/v1/geofences", params={"shipper": OTHER}, headers=fleet)
        ).json()["features"]
    }
    assert "consignee-a" not in ids


@pytest.mark.parametrize(
    "feature",
    [
        fence_feature(kind="swamp"),
        {**fence_feature(), "type": "FeatureCollection"},
        {**fence_feature(), "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}},
        {**fence_feature(), "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}},
        {**fence_feature(), "properties": {"kind": "depot", "radius_m": -5}},
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [200, 95]},
            "properties": {"kind": "depot"},
        },
    ],
)
async def test_bad_geofences_are_422(world: World, feature: dict) -> None:
    r = await world.client.post("/v1/geofences", json=feature, headers=world.auth("fleet"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


async def test_shipper_contract(world: World) -> None:
    admin = world.auth("admin")
    body = {
        "sla": {"critical": {"ack_min": 5, "resolve_min": 120}, "minor": {"ack_min": 60}},
        "rules": {"stop_max_min": 45, "corridor_m": 800},
    }
    r = await world.client.put(f"/v1/shippers/{OWN}", json=body, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"shipper": OWN, **body, "notify": []}  # no e-mail addresses given
    r = await world.client.get(f"/v1/shippers/{OWN}", headers=world.auth("shipper"))
    assert r.status_code == 200 and r.json()["rules"]["corridor_m"] == 800
    r = await world.client.get("/v1/shippers", headers=world.auth("desk"))
    assert {s["shipper"] for s in r.json()} >= {OWN, OTHER}


@pytest.mark.parametrize(
    "body",
    [
        {"sla": {"urgent": {"ack_min": 5}}},
        {"sla": {"critical": {"ack_min": 0}}},
        {"sla": {"critical": {"ack_min": "soon"}}},
        {"rules": {"no_such_threshold": 3}},
        {"rules": {"corridor_m": -1}},
        {"colour": "blue"},
    ],
)
async def test_bad_shipper_contracts_are_422(world: World, body: dict) -> None:
    before = world.runtime.store.get_shipper(OWN)
    r = await world.client.put(f"/v1/shippers/{OWN}", json=body, headers=world.auth("admin"))
    assert r.status_code == 422, r.text
    assert world.runtime.store.get_shipper(OWN) == before
