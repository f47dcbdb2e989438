"""Shared world for the API tests: a runtime on SQLite in a temp dir, keys of every role and
two tenants (``pg`` and ``acme``) with a trip, an alarm, a webhook, telemetry each.

The ``world`` and ``module_world`` fixtures of ``tests/conftest.py`` hand it to the tests;
helpers and constants are imported from here as ``tests.api_world``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from api import create_app
from api.limits import ApiLimits
from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from core.clock import ManualClock
from rules.events import AlarmSignal, AlarmType
from telemetry.models import DeadLetter, DeadLetterReason, Fix, LockEvent, LockEventType
from telemetry.store import Store

ADMIN_KEY = "admin-secret"
T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z, the ManualClock's default start
OWN, OTHER = "pg", "acme"  # every id of the OTHER tenant contains "acme" (leak checks)
ROLES = ("admin", "desk", "fleet", "shipper")
DESK_NAME = "desk-07"  # the desk key's name
_counter = itertools.count()


def make_runtime(tmp_path: Path, clock: ManualClock, store: Store | None = None) -> Runtime:
    """The real runtime on a fresh SQLite file (or on ``store``), without MQTT."""
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'api.sqlite'}",
        mqtt_url=None,
        admin_key=ADMIN_KEY,
        allow_private_targets=True,  # the seeded webhooks point at 127.0.0.1
    )
    return Runtime.open(settings, clock=clock, store=store)


def trip_doc(trip_id: str, shipper: str, devices: list[str], **extra: Any) -> dict[str, Any]:
    """A small valid plan near Shanghai: origin, a 3-vertex route, one consignee stop."""
    doc: dict[str, Any] = {
        "trip_id": trip_id,
        "shipper": shipper,
        "vehicle": "沪A12345",
        "devices": devices,
        "origin": {
            "name": "Taicang DC",
            "geometry": {"type": "Point", "coordinates": [121.10, 31.45]},
            "radius_m": 300,
        },
        "route": {
            "type": "LineString",
            "coordinates": [[121.10, 31.45], [121.30, 31.35], [121.47, 31.23]],
        },
        "corridor_m": 500,
        "stops": [
            {
                "stop_id": "S1",
                "name": "Consignee A",
                "geometry": {"type": "Point", "coordinates": [121.47, 31.23]},
                "radius_m": 200,
                "eta": "2026-11-22T14:00:00+08:00",
                "max_dwell_min": 120,
                "unlock_allowed": True,
            }
        ],
        "planned_start": "2026-11-22T08:00:00+08:00",
        "rules": {"stop_max_min": 45},
    }
    doc.update(extra)
    return doc


def along_route(device_id: str, base_ms: int, i: int) -> Fix:
    """The ``i``-th fix of a truck on ``trip_doc``'s first route leg, 10 s apart, ~48 km/h."""
    ts = base_ms + i * 10_000
    return Fix(
        device_id,
        ts,
        31.45 - i * 0.0006,
        121.10 + i * 0.0012,
        speed_kmh=50.0,
        seq=i,
        received_at=ts,
    )


def fence_feature(fence_id: str | None = None, kind: str = "rest_area") -> dict[str, Any]:
    feature: dict[str, Any] = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [121.2, 31.4]},
        "properties": {"kind": kind, "name": "Rest area K12", "radius_m": 250},
    }
    if fence_id:
        feature["id"] = fence_id
    return feature


@dataclass
class Tenant:
    shipper: str
    key: str
    trip_id: str
    devices: list[str]
    alarm_id: str
    webhook_id: str


@dataclass
class World:
    """A running API over a seeded runtime; ``client`` has no default key."""

    app: FastAPI
    runtime: Runtime
    clock: ManualClock
    client: httpx.AsyncClient
    keys: dict[str, str] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    fence_id: str = ""

    async def aclose(self) -> None:
        await self.client.aclose()
        self.runtime.close()

    def auth(self, role: str) -> dict[str, str]:
        """Headers of a role; ``shipper`` is the OWN tenant's key."""
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def raise_alarm(
        self, tenant: Tenant, alarm_type: AlarmType = AlarmType.LOCK_TAMPER, **details: Any
    ) -> str:
        """Raise an alarm of ``tenant``'s trip through the real alarm service."""
        signal = AlarmSignal(
            type=alarm_type,
            trip_id=tenant.trip_id,
            shipper=tenant.shipper,
            device_id=tenant.devices[0],
            ts=self.clock.now_ms() - 5_000,
            episode=f"ep{next(_counter)}",
            lat=31.3,
            lon=121.3,
            details=dict(details),
        )
        self.runtime.alarms.handle([signal])
        docs = self.runtime.store.list_alarms(trip_id=tenant.trip_id, type=alarm_type.value)
        mine = [d for d in docs if d.get("episode") == signal.episode]
        assert mine, "the alarm service stored no alarm"
        return str(mine[0]["alarm_id"])


def api_client(app: FastAPI) -> httpx.AsyncClient:
    """An in-process client (no lifespan: the runtime's loops are not started)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cw.test")


async def build_world(tmp_path: Path) -> World:
    """Seed a world through the API (as admin) and the runtime."""
    clock = ManualClock(T0 + 2 * 3600_000)
    runtime = make_runtime(tmp_path, clock)
    # many tests try unknown keys from the one in-process client address
    app = create_app(runtime, heartbeat_s=0.2, limits=ApiLimits(key_failures_per_min=100_000))
    client = api_client(app)
    world = World(app, runtime, clock, client)
    world.keys["admin"] = ADMIN_KEY
    admin = world.auth("admin")

    async def post(path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        r = await client.post(path, json=body, headers=admin)
        assert r.status_code == status, r.text
        return r.json()

    # named as the people who use them: the name is who acts in alarm histories
    for role, name in (("desk", DESK_NAME), ("fleet", "fleet-01")):
        world.keys[role] = (await post("/v1/keys", {"role": role, "name": name}))["key"]
    for shipper, prefix in ((OWN, "PG"), (OTHER, "ACME")):
        body = {"role": "shipper", "shipper": shipper, "name": f"{shipper}-portal"}
        key = (await post("/v1/keys", body))["key"]
        devices = [f"{prefix.lower()}-lock-1", f"{prefix.lower()}-gps-1"]
        trip_id = f"{prefix}-2026-000001"
        await post("/v1/trips", trip_doc(trip_id, shipper, devices))
        hook = await post(
            "/v1/webhooks",
            {
                "url": f"http://127.0.0.1:9/{shipper}",
                "secret": f"{shipper}-secret-0123456789",
                "shipper": shipper,
            },
        )
        tenant = Tenant(shipper, key, trip_id, devices, "", hook["webhook_id"])
        world.tenants[shipper] = tenant
        tenant.alarm_id = world.raise_alarm(tenant, where=f"{shipper}-yard")
        put = await client.put(
            f"/v1/shippers/{shipper}",
            json={"sla": {"critical": {"ack_min": 5, "resolve_min": 120}}},
            headers=admin,
        )
        assert put.status_code == 200, put.text
        store = runtime.store
        base = T0 + 3600_000 if shipper == OWN else T0 + 3600_000 + 7
        store.insert_fixes([along_route(devices[1], base, i) for i in range(5)])
        store.insert_lock_events(
            [
                LockEvent(
                    devices[0],
                    base + 1_000,
                    LockEventType.LOCKED,
                    lat=31.45,
                    lon=121.10,
                    seq=100,
                    received_at=base + 1_000,
                )
            ]
        )
    world.keys["shipper"] = world.tenants[OWN].key
    world.keys["other_shipper"] = world.tenants[OTHER].key
    world.fence_id = (await post("/v1/geofences", fence_feature("rest-k12")))["id"]
    await post("/v1/devices", {"device_id": "spare-gps-9", "kind": "gps"})
    runtime.store.insert_dead_letters(
        [
            DeadLetter(
                "devices/x/position", b"{not json", T0, DeadLetterReason.BAD_JSON, "bad json", "x"
            ),
            DeadLetter(
                "devices/y/position",
                b"\xff\xfe\x00",
                T0 + 1,
                DeadLetterReason.BAD_JSON,
                "binary",
                "y",
            ),
        ]
    )
    return world


@asynccontextmanager
async def running_world(tmp_path: Path) -> AsyncIterator[World]:
    """``build_world`` in ``tmp_path``, closed (client and runtime) on the way out."""
    world = await build_world(tmp_path)
    try:
        yield world
    finally:
        await world.aclose()
