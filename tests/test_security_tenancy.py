"""Tenancy by trip, not by device: a device used on an ``acme`` trip and then on a ``pg``
trip. Every route the ``pg`` key can read (and replay, for staff) shows nothing of acme's
trip: neither its fixes and lock events, nor its alarm, whatever window is asked for.

(The probe of issue 15: ``pg``'s track showed acme's fixes and its ``forced_open``, by
default and with ``?from=2000``.)
"""

from __future__ import annotations

from typing import Any

import pytest

from telemetry.models import Fix, LockEvent, LockEventType
from tests.api_world import OTHER, OWN, T0, World, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOUR = 3_600_000
SHARED = "shared-gps-7"
ACME_LAT = 30.5  # acme's fixes are recognisable by their latitude
ACME_TRIP = "ACME-SHARED-1"
PG_TRIP = "PG-SHARED-1"
PG_START = T0 + 4 * HOUR


async def _shared_device_world(w: World) -> None:
    admin = w.auth("admin")
    store = w.runtime.store
    for trip_id, shipper in ((ACME_TRIP, OTHER), (PG_TRIP, OWN)):
        r = await w.client.post(
            "/v1/trips",
            json=trip_doc(trip_id, shipper, [SHARED], planned_start=T0 - 8 * HOUR),
            headers=admin,
        )
        assert r.status_code == 201, r.text
    # acme's trip ran first and ended; pg's (planned as early) was activated afterwards: as
    # the alarm service records status changes.
    for trip_id, changes in (
        (ACME_TRIP, {"status": "completed", "activated_at": T0, "completed_at": T0 + 2 * HOUR}),
        (PG_TRIP, {"status": "active", "activated_at": PG_START}),
    ):
        trip = store.get_trip(trip_id)
        assert trip is not None
        store.put_trip({**trip, **changes})
        for status in ("active", changes["status"]):
            ts = changes.get(f"{status}_at", changes["activated_at"])
            store.add_trip_event(trip_id, {"kind": "status", "status": status, "ts": ts})
    store.insert_fixes(
        [
            Fix(SHARED, T0 + i * 60_000, ACME_LAT + i * 1e-4, 121.2, seq=i, received_at=T0)
            for i in range(20)
        ]
        + [
            Fix(SHARED, PG_START + i * 60_000, 31.4, 121.2 + i * 1e-4, seq=100 + i)
            for i in range(5)
        ]
    )
    store.insert_lock_events(
        [LockEvent(SHARED, T0 + 30 * 60_000, LockEventType.FORCED_OPEN, lat=ACME_LAT, lon=121.2)]
    )


def _no_acme(text: str) -> None:
    assert OTHER not in text.lower(), text[:300]
    assert "forced_open" not in text, text[:300]
    assert str(ACME_LAT) not in text, text[:300]


@pytest.mark.parametrize(
    "params",
    [{}, {"from": "2000"}, {"from": "0", "to": str(T0 + 100 * HOUR)}, {"to": str(PG_START)}],
    ids=["default", "from-2000", "wide", "to-start"],
)
async def test_track_of_a_trip_on_a_shared_device_is_its_own(
    world: World, params: dict[str, str]
) -> None:
    await _shared_device_world(world)
    for role in ("shipper", "admin"):
        r = await world.client.get(
            f"/v1/trips/{PG_TRIP}/track", params=params, headers=world.auth(role)
        )
        assert r.status_code == 200, r.text
        _no_acme(r.text)
        times = [
            t
            for f in r.json()["features"]
            if f["properties"]["kind"] == "track"
            for t in f["properties"]["times"]
        ]
        expected = 1 if params.get("to") == str(PG_START) else 5
        assert len(times) == expected
    # acme's own track still has its data (and none of pg's)
    r = await world.client.get(
        f"/v1/trips/{ACME_TRIP}/track", params={"from": "2000"}, headers=world.auth("admin")
    )
    assert "forced_open" in r.text and str(ACME_LAT) in r.text and "121.2004" not in r.text


async def test_replay_of_a_trip_on_a_shared_device_is_its_own(world: World) -> None:
    await _shared_device_world(world)
    r = await world.client.post(
        "/v1/replay", json={"trip_id": PG_TRIP, "from": 0}, headers=world.auth("fleet")
    )
    assert r.status_code == 200, r.text
    assert "LOCK_TAMPER" not in {a["type"] for a in r.json()["alarms"]}
    r = await world.client.post(
        "/v1/replay", json={"trip_id": ACME_TRIP}, headers=world.auth("fleet")
    )
    assert "LOCK_TAMPER" in {a["type"] for a in r.json()["alarms"]}


READS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/trips", {}),
    (f"/v1/trips/{PG_TRIP}", {}),
    ("/v1/alarms", {}),
    ("/v1/alarms", {"trip_id": ACME_TRIP}),
    ("/v1/reports/kpi", {}),
    ("/v1/webhooks", {}),
    ("/v1/webhooks/deliveries", {}),
    (f"/v1/shippers/{OWN}", {}),
]


@pytest.mark.parametrize(("path", "params"), READS, ids=[p for p, _ in READS])
async def test_every_shipper_read_on_a_shared_device_is_its_own(
    world: World, path: str, params: dict[str, Any]
) -> None:
    await _shared_device_world(world)
    # acme's forced_open became an alarm of acme's trip (raised by the real alarm service)
    world.raise_alarm(world.tenants[OTHER])
    r = await world.client.get(path, params=params, headers=world.auth("shipper"))
    assert r.status_code == 200, r.text
    _no_acme(r.text)
    assert ACME_TRIP not in r.text
