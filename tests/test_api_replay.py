"""``POST /v1/replay``: alarms that would fire on stored history, live alarms untouched."""

from __future__ import annotations

import pytest

from tests.api_world import OWN, T0, World, along_route

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def world(world: World) -> World:
    """The conftest world, with 3 more minutes along the route at 50 km/h after the 5 seeded
    fixes."""
    gps = world.tenants[OWN].devices[1]
    world.runtime.store.insert_fixes([along_route(gps, T0 + 3600_000, i) for i in range(5, 23)])
    return world


def live_state(world: World) -> list[tuple[str, str, int]]:
    return sorted(
        (a["alarm_id"], a["status"], a["version"])
        for a in world.runtime.store.list_alarms(limit=10_000)
    )


async def test_overrides_change_what_would_fire_and_nothing_live(world: World) -> None:
    own = world.tenants[OWN]
    fleet = world.auth("fleet")
    before = live_state(world)
    deliveries = len(world.runtime.store.list_deliveries(limit=10_000))
    base = await world.client.post("/v1/replay", json={"trip_id": own.trip_id}, headers=fleet)
    assert base.status_code == 200, base.text
    assert "SPEEDING" not in {a["type"] for a in base.json()["alarms"]}
    strict = await world.client.post(
        "/v1/replay",
        json={"trip_id": own.trip_id, "rules": {"speed_limit_kmh": 40, "speeding_min_s": 20}},
        headers=fleet,
    )
    assert strict.status_code == 200, strict.text
    body = strict.json()
    assert body["rules"] == {"speed_limit_kmh": 40, "speeding_min_s": 20}
    speeding = [a for a in body["alarms"] if a["type"] == "SPEEDING"]
    assert speeding and speeding[0]["trip_id"] == own.trip_id
    assert speeding[0]["ts"].endswith("Z")
    assert body["count"] == len(body["alarms"])
    assert live_state(world) == before
    assert len(world.runtime.store.list_deliveries(limit=10_000)) == deliveries


async def test_devices_and_window(world: World) -> None:
    gps = world.tenants[OWN].devices[1]
    r = await world.client.post(
        "/v1/replay",
        json={
            "device_ids": [gps],
            "from": "2026-11-22T09:00:00Z",
            "to": str(T0 + 7200_000),
            "rules": {"speed_limit_kmh": 40, "speeding_min_s": 20},
        },
        headers=world.auth("admin"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["from"] == "2026-11-22T09:00:00.000Z"
    assert r.json()["device_ids"] == [gps]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"trip_id": "x", "rules": {"no_such_rule": 1}},
        {"trip_id": "x", "rules": {"corridor_m": "wide"}},
        {"trip_id": "x", "from": "noon"},
        {"trip_id": "x", "colour": "red"},
    ],
)
async def test_bad_replays_are_422(world: World, body: dict) -> None:
    if body.get("trip_id") == "x":
        body = {**body, "trip_id": world.tenants[OWN].trip_id}
    r = await world.client.post("/v1/replay", json=body, headers=world.auth("fleet"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


async def test_replay_raises_risk_zone_entries_of_stored_geofences(world: World) -> None:
    """A risk zone over the stored track: the rerun raises RISK_ZONE_ENTRY once (the
    membership holds while the truck crosses it); nothing live changes."""
    own = world.tenants[OWN]
    fleet = world.auth("fleet")
    gps = own.devices[1]
    centre = along_route(gps, T0 + 3600_000, 12)
    zone = {
        "type": "Feature",
        "id": "rz-replay",
        "geometry": {"type": "Point", "coordinates": [centre.lon, centre.lat]},
        "properties": {"kind": "risk_zone", "name": "Black spot", "radius_m": 300},
    }
    r = await world.client.post("/v1/geofences", json=zone, headers=world.auth("admin"))
    assert r.status_code == 201, r.text
    before = live_state(world)
    r = await world.client.post("/v1/replay", json={"trip_id": own.trip_id}, headers=fleet)
    assert r.status_code == 200, r.text
    risk = [a for a in r.json()["alarms"] if a["type"] == "RISK_ZONE_ENTRY"]
    assert len(risk) == 1 and risk[0]["severity"] == "major"
    assert risk[0]["details"]["geofence_id"] == "rz-replay"
    assert risk[0]["details"]["name"] == "Black spot"
    assert live_state(world) == before
