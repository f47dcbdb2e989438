"""``GET /v1/trips/{id}/track``: the trip's timeline as a GeoJSON FeatureCollection."""

from __future__ import annotations

import pytest

from rules.events import GeofenceChange, GeofenceTransition, Milestone, MilestoneKind
from tests.api_world import OTHER, OWN, T0, World

pytestmark = pytest.mark.asyncio(loop_scope="session")


def kinds(collection: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        out.setdefault(feature["properties"]["kind"], []).append(feature)
    return out


async def test_track_has_line_locks_milestones_and_alarms(world: World) -> None:
    own = world.tenants[OWN]
    world.runtime.alarms.handle(
        [
            Milestone(
                own.trip_id,
                OWN,
                MilestoneKind.SEALED,
                T0 + 3600_000 + 1_000,
                device_id=own.devices[0],
                lat=31.45,
                lon=121.10,
            )
        ]
    )
    r = await world.client.get(f"/v1/trips/{own.trip_id}/track", headers=world.auth("shipper"))
    assert r.status_code == 200, r.text
    coll = r.json()
    assert coll["type"] == "FeatureCollection" and coll["trip_id"] == own.trip_id
    by_kind = kinds(coll)
    (line,) = by_kind["track"]
    assert line["geometry"]["type"] == "LineString"
    coords = line["geometry"]["coordinates"]
    assert len(coords) == 5 and coords[0] == [121.10, 31.45]  # lon, lat
    times = line["properties"]["times"]
    assert len(times) == 5 and times[0] == "2026-11-22T09:00:00.000Z"
    assert times == sorted(times)
    (lock,) = by_kind["lock_event"]
    assert lock["properties"]["event"] == "locked"
    assert lock["properties"]["ts"] == "2026-11-22T09:00:01.000Z"
    assert lock["geometry"]["coordinates"] == [121.10, 31.45]
    (milestone,) = by_kind["milestone"]
    assert milestone["properties"]["milestone"] == "sealed"
    assert milestone["properties"]["ts"] == "2026-11-22T09:00:01.000Z"
    alarm_ids = {a["properties"]["alarm_id"] for a in by_kind["alarm"]}
    assert alarm_ids == {own.alarm_id}
    assert all(a["properties"]["ts"].endswith("Z") for a in by_kind["alarm"])
    assert OTHER not in r.text


async def test_track_shows_geofence_entries_and_exits(world: World) -> None:
    own = world.tenants[OWN]
    base = T0 + 3600_000

    def move(change: GeofenceChange, ts: int) -> GeofenceTransition:
        return GeofenceTransition(
            own.trip_id, OWN, change, ts, own.devices[1], "dc-9", "Kunshan DC", "depot",
            lat=31.45, lon=121.10,
        )  # fmt: skip

    world.runtime.alarms.handle(
        [move(GeofenceChange.ENTERED, base + 2_000), move(GeofenceChange.EXITED, base + 25_000)]
    )
    r = await world.client.get(f"/v1/trips/{own.trip_id}/track", headers=world.auth("fleet"))
    assert r.status_code == 200, r.text
    fences = kinds(r.json())["geofence"]
    props = [f["properties"] for f in fences]
    assert [(p["change"], p["ts"]) for p in props] == [
        ("entered", "2026-11-22T09:00:02.000Z"), ("exited", "2026-11-22T09:00:25.000Z")
    ]  # fmt: skip
    assert props[0]["geofence_id"] == "dc-9" and props[0]["name"] == "Kunshan DC"
    assert props[0]["geofence_kind"] == "depot" and props[0]["device_id"] == own.devices[1]
    assert fences[0]["geometry"] == {"type": "Point", "coordinates": [121.10, 31.45]}
    assert "event_id" not in props[0]
    # another shipper's key does not see the trip at all
    r = await world.client.get(
        f"/v1/trips/{own.trip_id}/track", headers=world.auth("other_shipper")
    )
    assert r.status_code == 404


async def test_window_narrows_everything(world: World) -> None:
    own = world.tenants[OWN]
    r = await world.client.get(
        f"/v1/trips/{own.trip_id}/track",
        params={"from": "2026-11-22T09:00:15Z", "to": str(T0 + 3600_000 + 30_000)},
        headers=world.auth("fleet"),
    )
    assert r.status_code == 200
    by_kind = kinds(r.json())
    assert by_kind["track"][0]["properties"]["times"] == [
        "2026-11-22T09:00:20.000Z",
        "2026-11-22T09:00:30.000Z",
    ]
    assert "lock_event" not in by_kind and "alarm" not in by_kind
    assert r.json()["from"] == "2026-11-22T09:00:15.000Z"


async def test_flagged_fixes_are_kept_apart(world: World) -> None:
    own = world.tenants[OWN]
    gps = own.devices[1]
    world.runtime.store.flag_fixes([(gps, T0 + 3600_000 + 20_000, 2)], "gps_jump")
    r = await world.client.get(f"/v1/trips/{own.trip_id}/track", headers=world.auth("desk"))
    by_kind = kinds(r.json())
    assert len(by_kind["track"][0]["geometry"]["coordinates"]) == 4
    (flagged,) = by_kind["flagged_fix"]
    assert flagged["properties"]["flag"] == "gps_jump"
    assert flagged["properties"]["ts"] == "2026-11-22T09:00:20.000Z"


async def test_other_tenants_track_is_404(world: World) -> None:
    trip_id = world.tenants[OTHER].trip_id
    r = await world.client.get(f"/v1/trips/{trip_id}/track", headers=world.auth("shipper"))
    assert r.status_code == 404
    assert OTHER not in r.text
