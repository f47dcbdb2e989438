"""Every error is JSON ``{"error": {"code", "message"}}``: 400/401/403/404/405/409/422/500/503,
FastAPI's own validation errors and unknown routes included; never a stack trace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from api import create_app
from telemetry.errors import StoreError
from tests.api_world import OWN, World, api_client, build_world, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    w = await build_world(tmp_path_factory.mktemp("api-errors"))
    try:
        yield w
    finally:
        await w.aclose()


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body["error"]


@pytest.mark.parametrize("auth", [True, False])
@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v2/trips", "/v1/trips/x/y/z"])
async def test_unknown_routes_are_json_404(world: World, path: str, auth: bool) -> None:
    headers = world.auth("admin") if auth else {}
    assert_error(await world.client.get(path, headers=headers), 404, "not_found")


async def test_wrong_method_is_json_405(world: World) -> None:
    r = await world.client.delete("/v1/trips", headers=world.auth("admin"))
    assert_error(r, 405, "method_not_allowed")


async def test_body_that_is_not_json_is_400(world: World) -> None:
    r = await world.client.post(
        "/v1/devices",
        content=b"{device_id: ",
        headers={**world.auth("admin"), "content-type": "application/json"},
    )
    assert_error(r, 400, "bad_request")


async def test_bad_json_without_a_key_is_still_401(world: World) -> None:
    r = await world.client.post(
        "/v1/devices", content=b"{", headers={"content-type": "application/json"}
    )
    assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        "device",
        {"device_id": "bad id with spaces"},
        {"device_id": "d1", "kind": "boat"},
        {"device_id": "d" * 65},
        {},
    ],
)
async def test_invalid_bodies_are_422(world: World, body: Any) -> None:
    r = await world.client.post("/v1/devices", json=body, headers=world.auth("fleet"))
    assert_error(r, 422, "validation_error")


async def test_forbidden_action_is_403(world: World) -> None:
    r = await world.client.post(
        f"/v1/alarms/{world.tenants[OWN].alarm_id}/ack",
        json={"by": "me"},
        headers=world.auth("shipper"),
    )
    assert_error(r, 403, "forbidden")


async def test_duplicate_trip_is_409(world: World) -> None:
    doc = trip_doc("PG-DUP-1", OWN, ["pg-dup-gps"])
    first = await world.client.post("/v1/trips", json=doc, headers=world.auth("fleet"))
    assert first.status_code == 201, first.text
    again = await world.client.post("/v1/trips", json=doc, headers=world.auth("fleet"))
    assert_error(again, 409, "conflict")


async def test_ending_a_trip_twice_is_409(world: World) -> None:
    doc = trip_doc("PG-END-1", OWN, ["pg-end-gps"])
    assert (
        await world.client.post("/v1/trips", json=doc, headers=world.auth("fleet"))
    ).status_code == 201
    r = await world.client.post(
        "/v1/trips/PG-END-1/cancel", json={"by": "fleet-mgr"}, headers=world.auth("fleet")
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    for end in ("cancel", "complete"):
        r = await world.client.post(f"/v1/trips/PG-END-1/{end}", headers=world.auth("fleet"))
        assert_error(r, 409, "conflict")


@pytest.mark.parametrize(
    "change",
    [
        {"route": {"type": "LineString", "coordinates": [[121.1, 31.4]]}},
        {"route": {"type": "LineString", "coordinates": [[521.1, 31.4], [121.2, 31.5]]}},
        {"planned_start": "tomorrow"},
        {"planned_start": "2026-11-22T08:00:00"},
        {"origin": {"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}},
        {"devices": ["bad device id"]},
        {"stops": [{"stop_id": "S1"}]},
        {"rules": {"no_such_rule": 5}},
    ],
)
async def test_invalid_trip_plans_are_422(world: World, change: dict[str, Any]) -> None:
    doc = trip_doc("PG-BAD-1", OWN, ["pg-bad-gps"]) | change
    r = await world.client.post("/v1/trips", json=doc, headers=world.auth("fleet"))
    assert_error(r, 422, "validation_error")
    assert world.runtime.store.get_trip("PG-BAD-1") is None


async def test_missing_objects_are_404(world: World) -> None:
    admin = world.auth("admin")
    for path in (
        "/v1/trips/NOPE",
        "/v1/trips/NOPE/track",
        "/v1/alarms/NOPE",
        "/v1/devices/nope",
        "/v1/geofences/nope",
        "/v1/shippers/nope",
    ):
        assert_error(await world.client.get(path, headers=admin), 404, "not_found")
    r = await world.client.delete("/v1/webhooks/wh_nope", headers=admin)
    assert_error(r, 404, "not_found")
    r = await world.client.post("/v1/replay", json={"trip_id": "NOPE"}, headers=admin)
    assert_error(r, 404, "not_found")


class _BrokenStore:
    """A store whose reads fail the given way (everything else delegates)."""

    def __init__(self, inner: Any, exc: BaseException) -> None:
        self._inner = inner
        self._exc = exc

    def list_devices(self, shipper: str | None = None) -> list[dict[str, Any]]:
        raise self._exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RuntimeWithStore:
    def __init__(self, inner: Any, store: Any) -> None:
        self._inner = inner
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ZeroDivisionError("secret internals /etc/passwd"), 500, "internal"),
        (StoreError("connection refused to db:5432"), 503, "unavailable"),
    ],
)
async def test_unexpected_errors_are_json_without_details(
    world: World, exc: BaseException, status: int, code: str
) -> None:
    runtime = _RuntimeWithStore(world.runtime, _BrokenStore(world.runtime.store, exc))
    async with api_client(create_app(runtime)) as client:
        r = await client.get("/v1/devices", headers=world.auth("admin"))
    err = assert_error(r, status, code)
    assert str(exc) not in err["message"]
    assert "passwd" not in r.text and "5432" not in r.text
