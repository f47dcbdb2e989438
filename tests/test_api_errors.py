"""Every error is JSON ``{"error": {"code", "message"}}``: 400/401/403/404/405/409/422/500/503,
FastAPI's own validation errors and unknown routes included; never a stack trace.

Engine errors map by kind (core.errors) alone; only Unavailable is a 503. A bug, or an
error of no kind, is a 500 with an ``error_id`` that is also in the log record."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio

from alerts.errors import AlarmNotFound, TransitionError
from api import create_app
from core import errors as kinds
from core.clock import ManualClock
from geofence.errors import GeometryError
from telemetry.errors import StoreError, StoreUnavailable
from telemetry.store import Doc
from telemetry.store.sqlite import SqliteStore
from tests.api_world import ADMIN_KEY, OWN, World, api_client, make_runtime, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    # a 500 carries the id of its log record as well; nothing else does
    fields = {"code", "message", "error_id"} if status == 500 else {"code", "message"}
    assert set(body) == {"error"} and set(body["error"]) == fields
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body["error"]


@pytest.mark.parametrize("auth", [True, False])
@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v2/trips", "/v1/trips/x/y/z"])
async def test_unknown_routes_are_json_404(module_world: World, path: str, auth: bool) -> None:
    headers = module_world.auth("admin") if auth else {}
    assert_error(await module_world.client.get(path, headers=headers), 404, "not_found")


async def test_wrong_method_is_json_405(module_world: World) -> None:
    r = await module_world.client.delete("/v1/trips", headers=module_world.auth("admin"))
    assert_error(r, 405, "method_not_allowed")


async def test_body_that_is_not_json_is_400(module_world: World) -> None:
    r = await module_world.client.post(
        "/v1/devices",
        content=b"{device_id: ",
        headers={**module_world.auth("admin"), "content-type": "application/json"},
    )
    assert_error(r, 400, "bad_request")


async def test_bad_json_without_a_key_is_still_401(module_world: World) -> None:
    r = await module_world.client.post(
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
async def test_invalid_bodies_are_422(module_world: World, body: Any) -> None:
    r = await module_world.client.post("/v1/devices", json=body, headers=module_world.auth("fleet"))
    assert_error(r, 422, "validation_error")


async def test_forbidden_action_is_403(module_world: World) -> None:
    r = await module_world.client.post(
        f"/v1/alarms/{module_world.tenants[OWN].alarm_id}/ack",
        json={"by": "me"},
        headers=module_world.auth("shipper"),
    )
    assert_error(r, 403, "forbidden")


async def test_duplicate_trip_is_409(module_world: World) -> None:
    doc = trip_doc("PG-DUP-1", OWN, ["pg-dup-gps"])
    first = await module_world.client.post(
        "/v1/trips", json=doc, headers=module_world.auth("fleet")
    )
    assert first.status_code == 201, first.text
    again = await module_world.client.post(
        "/v1/trips", json=doc, headers=module_world.auth("fleet")
    )
    assert_error(again, 409, "conflict")


async def test_ending_a_trip_twice_is_409(module_world: World) -> None:
    doc = trip_doc("PG-END-1", OWN, ["pg-end-gps"])
    assert (
        await module_world.client.post("/v1/trips", json=doc, headers=module_world.auth("fleet"))
    ).status_code == 201
    r = await module_world.client.post(
        "/v1/trips/PG-END-1/cancel", json={"by": "fleet-mgr"}, headers=module_world.auth("fleet")
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    for end in ("cancel", "complete"):
        r = await module_world.client.post(
            f"/v1/trips/PG-END-1/{end}", headers=module_world.auth("fleet")
        )
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
async def test_invalid_trip_plans_are_422(module_world: World, change: dict[str, Any]) -> None:
    doc = trip_doc("PG-BAD-1", OWN, ["pg-bad-gps"]) | change
    r = await module_world.client.post("/v1/trips", json=doc, headers=module_world.auth("fleet"))
    assert_error(r, 422, "validation_error")
    assert module_world.runtime.store.get_trip("PG-BAD-1") is None


async def test_missing_objects_are_404(module_world: World) -> None:
    admin = module_world.auth("admin")
    for path in (
        "/v1/trips/NOPE",
        "/v1/trips/NOPE/track",
        "/v1/alarms/NOPE",
        "/v1/devices/nope",
        "/v1/geofences/nope",
        "/v1/shippers/nope",
    ):
        assert_error(await module_world.client.get(path, headers=admin), 404, "not_found")
    r = await module_world.client.delete("/v1/webhooks/wh_nope", headers=admin)
    assert_error(r, 404, "not_found")
    r = await module_world.client.post("/v1/replay", json={"trip_id": "NOPE"}, headers=admin)
    assert_error(r, 404, "not_found")


class FailingStore(SqliteStore):
    """The real SQLite store, but ``list_devices`` (behind ``GET /v1/devices``) raises
    ``failure``, or with ``misuse`` is handed a dict where SQL wants text: a programming error
    that the store lets through as the driver's own error (never wrapped as a StoreError)."""

    failure: BaseException | None = None
    misuse = False

    def list_devices(self, shipper: str | None = None) -> list[Doc]:
        if self.failure is not None:
            raise self.failure
        if self.misuse:
            return super().list_devices(cast(str, {"shipper": shipper}))
        return super().list_devices(shipper)


@pytest_asyncio.fixture(loop_scope="session")
async def failing(tmp_path: Path) -> AsyncIterator[tuple[FailingStore, httpx.AsyncClient]]:
    """An app over a runtime whose store is a FailingStore (still working until told)."""
    store = FailingStore(str(tmp_path / "failing.sqlite"))
    store.migrate()
    runtime = make_runtime(tmp_path, ManualClock(), store=store)
    try:
        async with api_client(create_app(runtime)) as client:
            yield store, client
    finally:
        runtime.close()


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def test_the_failing_store_works_until_told(
    failing: tuple[FailingStore, httpx.AsyncClient],
) -> None:
    _, client = failing
    r = await client.get("/v1/devices", headers=ADMIN)
    assert r.status_code == 200 and r.json() == []


async def test_a_bug_in_a_store_method_is_500_with_an_id_in_the_log(
    failing: tuple[FailingStore, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    store, client = failing
    store.failure = TypeError("list_devices() got an unexpected keyword argument 'shiper'")
    with caplog.at_level(logging.ERROR):
        r = await client.get("/v1/devices", headers=ADMIN)
    err = assert_error(r, 500, "internal")
    assert err["message"] == "internal error" and "shiper" not in r.text
    logged = [rec for rec in caplog.records if err["error_id"] in rec.getMessage()]
    assert len(logged) == 1, caplog.text
    assert logged[0].exc_info and logged[0].exc_info[0] is TypeError  # the trace is logged
    # every 500 has its own id
    again = assert_error(await client.get("/v1/devices", headers=ADMIN), 500, "internal")
    assert again["error_id"] != err["error_id"]


async def test_a_programming_error_the_store_reports_is_500_not_503(
    failing: tuple[FailingStore, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    store, client = failing
    store.misuse = True
    with caplog.at_level(logging.ERROR):
        r = await client.get("/v1/devices", headers=ADMIN)
    err = assert_error(r, 500, "internal")
    (logged,) = [rec for rec in caplog.records if err["error_id"] in rec.getMessage()]
    assert logged.exc_info and isinstance(logged.exc_info[1], sqlite3.ProgrammingError)
    assert not isinstance(logged.exc_info[1], StoreError)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (kinds.InvalidInput("shipper filter is not a name"), 422, "validation_error"),
        (GeometryError("ring is not closed"), 422, "validation_error"),
        (kinds.NotFound("no such device"), 404, "not_found"),
        (AlarmNotFound("no such alarm"), 404, "not_found"),
        (kinds.Conflict("device changed meanwhile"), 409, "conflict"),
        (TransitionError("already resolved"), 409, "conflict"),
        (kinds.Unavailable("broker mqtt:1883 refused"), 503, "unavailable"),
        (StoreUnavailable("connection refused to db:5432"), 503, "unavailable"),
        (kinds.CargowatchError("an error of no kind"), 500, "internal"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
async def test_each_kind_of_error_has_its_status(
    failing: tuple[FailingStore, httpx.AsyncClient],
    exc: kinds.CargowatchError,
    status: int,
    code: str,
) -> None:
    store, client = failing
    store.failure = exc
    err = assert_error(await client.get("/v1/devices", headers=ADMIN), status, code)
    if status < 500:
        assert err["message"] == exc.message
    else:  # the message may name hosts and ports: it stays in the log
        assert exc.message not in err["message"]


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ZeroDivisionError("secret internals /etc/passwd"), 500, "internal"),
        (StoreUnavailable("connection refused to db:5432"), 503, "unavailable"),
    ],
)
async def test_unexpected_errors_are_json_without_details(
    failing: tuple[FailingStore, httpx.AsyncClient], exc: BaseException, status: int, code: str
) -> None:
    store, client = failing
    store.failure = exc
    r = await client.get("/v1/devices", headers=ADMIN)
    err = assert_error(r, status, code)
    assert str(exc) not in err["message"]
    assert "passwd" not in r.text and "5432" not in r.text
