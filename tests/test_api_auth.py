"""Keys, roles and tenancy: the whole matrix of endpoint x role x own/other tenant.

The shipper key is the OWN tenant's (``pg``); "other" objects belong to ``acme``. Whatever
the status, no response to the shipper key may carry anything of ``acme``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rules.events import AlarmType
from tests.api_world import OTHER, OWN, ROLES, World, fence_feature, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")

_ids = itertools.count()


Setup = Callable[[World, str], dict[str, Any]]


def _objects(w: World, shipper: str) -> dict[str, Any]:
    t = w.tenants[shipper]
    return {
        "trip": t.trip_id,
        "alarm": t.alarm_id,
        "webhook": t.webhook_id,
        "shipper": shipper,
        "device": t.devices[0],
        "fence": w.fence_id,
    }


async def _fresh_trip(w: World, shipper: str) -> dict[str, Any]:
    n = next(_ids)
    trip_id = f"{shipper.upper()}-T{n}"
    doc = trip_doc(trip_id, shipper, [f"{shipper}-lock-t{n}"])
    r = await w.client.post("/v1/trips", json=doc, headers=w.auth("admin"))
    assert r.status_code == 201, r.text
    return {**_objects(w, shipper), "trip": trip_id}


async def _fresh_device(w: World, shipper: str) -> dict[str, Any]:
    device = f"{shipper}-gps-d{next(_ids)}"
    r = await w.client.post(
        "/v1/devices", json={"device_id": device, "kind": "gps"}, headers=w.auth("admin")
    )
    assert r.status_code == 201, r.text
    assert r.json()["mqtt_password"]  # issued once, with the registration
    return {**_objects(w, shipper), "device": device}


async def _fresh_alarm(w: World, shipper: str) -> dict[str, Any]:
    return {**_objects(w, shipper), "alarm": w.raise_alarm(w.tenants[shipper], AlarmType.SPEEDING)}


async def _fresh_webhook(w: World, shipper: str) -> dict[str, Any]:
    body = {"url": "http://127.0.0.1:9/x", "secret": "s" * 20, "shipper": shipper}
    r = await w.client.post("/v1/webhooks", json=body, headers=w.auth("admin"))
    assert r.status_code == 201, r.text
    return {**_objects(w, shipper), "webhook": r.json()["webhook_id"]}


async def _fresh_key(w: World, shipper: str) -> dict[str, Any]:
    body = {"role": "desk", "name": f"desk-k{next(_ids)}"}
    r = await w.client.post("/v1/keys", json=body, headers=w.auth("admin"))
    assert r.status_code == 201, r.text
    return {**_objects(w, shipper), "key": r.json()["key_id"]}


async def _resolved_alarm(w: World, shipper: str) -> dict[str, Any]:
    objects = await _fresh_alarm(w, shipper)
    w.runtime.alarms.resolve(objects["alarm"], by="desk-07", cause="rest_stop")
    return objects


async def _fresh_carrier(w: World, shipper: str) -> dict[str, Any]:
    carrier = f"carrier-{next(_ids)}"
    body = {"name": "Yangtze Haulage", "contacts": [{"name": "Li", "phone": "+86 21 5555"}]}
    r = await w.client.put(f"/v1/carriers/{carrier}", json=body, headers=w.auth("admin"))
    assert r.status_code == 200, r.text
    return {**_objects(w, shipper), "carrier": carrier}


async def _fresh_exception(w: World, shipper: str) -> dict[str, Any]:
    body = {"trip_id": w.tenants[shipper].trip_id, "type": "damage", "description": "dent"}
    r = await w.client.post("/v1/exceptions", json=body, headers=w.auth("admin"))
    assert r.status_code == 201, r.text
    return {**_objects(w, shipper), "exception": r.json()["exception_id"]}


async def _resolved_exception(w: World, shipper: str) -> dict[str, Any]:
    objects = await _fresh_exception(w, shipper)
    w.runtime.alarms.resolve(objects["exception"], by="desk-07", cause="other")
    return objects


def _exception_body(shipper: str) -> dict[str, Any]:
    return {"trip_id": f"{shipper.upper()}-2026-000001", "type": "quantity", "description": "-2"}


def _unique_device(_: str) -> dict[str, Any]:
    return {"device_id": f"dev-{next(_ids)}", "kind": "gps"}


def _unique_trip(shipper: str) -> dict[str, Any]:
    n = next(_ids)
    return trip_doc(f"{shipper.upper()}-N{n}", shipper, [f"{shipper}-gps-n{n}"])


@dataclass(frozen=True)
class Case:
    """One endpoint: who may call it, and what the OWN shipper key gets for the OTHER's."""

    method: str
    path: str
    allowed: frozenset[str]
    ok: int = 200
    body: Callable[[str], dict[str, Any]] | None = None
    setup: Callable[[World, str], Any] | None = None
    #: status for the OWN shipper key on the OTHER tenant's object (if shipper is allowed)
    other: int = 404
    params: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


ALL = frozenset(ROLES)
STAFF = frozenset({"admin", "desk", "fleet"})
FLEET = frozenset({"admin", "fleet"})
DESK = frozenset({"admin", "desk"})
TENANT_ADMIN = frozenset({"admin", "shipper"})
DESK_TENANT = frozenset({"admin", "desk", "shipper"})

CASES = [
    Case("GET", "/v1/devices", STAFF),
    Case("GET", "/v1/devices/{device}", STAFF),
    Case("POST", "/v1/devices", FLEET, 201, body=_unique_device),
    Case("POST", "/v1/devices/{device}/credentials", FLEET),
    Case("DELETE", "/v1/devices/{device}", FLEET, 204, setup=_fresh_device),
    Case("GET", "/v1/geofences", STAFF),
    Case("GET", "/v1/geofences/{fence}", STAFF),
    Case("POST", "/v1/geofences", FLEET, 201, body=lambda s: fence_feature(f"gf-{next(_ids)}")),
    Case("GET", "/v1/trips", ALL, other=200),
    Case("GET", "/v1/trips/{trip}", ALL),
    Case("POST", "/v1/trips", FLEET, 201, body=_unique_trip),
    Case("POST", "/v1/trips/{trip}/complete", FLEET, setup=_fresh_trip),
    Case("POST", "/v1/trips/{trip}/cancel", FLEET, setup=_fresh_trip),
    Case("GET", "/v1/trips/{trip}/track", ALL),
    Case("GET", "/v1/alarms", ALL, other=200),
    Case("GET", "/v1/alarms/{alarm}", ALL),
    Case(
        "POST",
        "/v1/alarms/{alarm}/ack",
        DESK,
        body=lambda s: {"by": "desk-07"},
        setup=_fresh_alarm,
    ),
    Case(
        "POST",
        "/v1/alarms/{alarm}/resolve",
        DESK,
        body=lambda s: {"by": "desk-07", "cause": "false_alarm"},
        setup=_fresh_alarm,
    ),
    Case("POST", "/v1/replay", FLEET, body=lambda s: {"trip_id": f"{s.upper()}-2026-000001"}),
    Case("GET", "/v1/webhooks", TENANT_ADMIN, other=200),
    Case("GET", "/v1/webhooks/deliveries", TENANT_ADMIN, other=200),
    Case(
        "POST",
        "/v1/webhooks",
        TENANT_ADMIN,
        201,
        other=403,
        body=lambda s: {"url": "https://example.test/hook", "secret": "x" * 16, "shipper": s},
    ),
    Case("DELETE", "/v1/webhooks/{webhook}", TENANT_ADMIN, 204, setup=_fresh_webhook),
    Case("GET", "/v1/reports/kpi", frozenset({"admin", "desk", "shipper"})),
    Case("GET", "/v1/dead-letters", DESK),
    Case("GET", "/v1/shippers", STAFF),
    Case("GET", "/v1/shippers/{shipper}", ALL),
    Case("PUT", "/v1/shippers/{shipper}", frozenset({"admin"}), body=lambda s: {"rules": {}}),
    Case("POST", "/v1/keys", frozenset({"admin"}), 201, body=lambda s: {"role": "desk"}),
    Case("GET", "/v1/keys", frozenset({"admin"})),
    Case("GET", "/v1/keys/me", ALL, other=200),  # no tenant in the path: always its own
    Case("DELETE", "/v1/keys/{key}", frozenset({"admin"}), 204, setup=_fresh_key),
    Case(
        "POST",
        "/v1/alarms/{alarm}/assign",
        DESK,
        body=lambda s: {"to": "admin"},
        setup=_fresh_alarm,
    ),
    Case(
        "POST",
        "/v1/alarms/{alarm}/notes",
        DESK,
        body=lambda s: {"text": "called the driver", "contact": "driver", "outcome": "ok"},
        setup=_fresh_alarm,
    ),
    Case(
        "POST",
        "/v1/alarms/{alarm}/feedback",
        TENANT_ADMIN,
        body=lambda s: {"verdict": "accepted", "comment": "fine"},
        setup=_resolved_alarm,
    ),
    Case("GET", "/v1/carriers", STAFF),
    Case("GET", "/v1/carriers/{carrier}", STAFF, setup=_fresh_carrier),
    Case(
        "PUT",
        "/v1/carriers/{carrier}",
        DESK,
        body=lambda s: {"name": "Haulage", "contacts": [{"name": "Wu", "email": "wu@ex.test"}]},
        setup=_fresh_carrier,
    ),
    Case("POST", "/v1/exceptions", DESK_TENANT, 201, body=_exception_body),
    Case("GET", "/v1/exceptions", ALL, other=200),
    Case("GET", "/v1/exceptions/{exception}", ALL, setup=_fresh_exception),
    Case(
        "POST",
        "/v1/exceptions/{exception}/ack",
        DESK,
        body=lambda s: {"note": "on it"},
        setup=_fresh_exception,
    ),
    Case(
        "POST",
        "/v1/exceptions/{exception}/resolve",
        DESK,
        body=lambda s: {"cause": "other", "action": "credit note"},
        setup=_fresh_exception,
    ),
    Case(
        "POST",
        "/v1/exceptions/{exception}/assign",
        DESK,
        body=lambda s: {"to": "admin"},
        setup=_fresh_exception,
    ),
    Case(
        "POST",
        "/v1/exceptions/{exception}/notes",
        DESK,
        body=lambda s: {"text": "consignee confirms", "contact": "consignee"},
        setup=_fresh_exception,
    ),
    Case(
        "POST",
        "/v1/exceptions/{exception}/feedback",
        TENANT_ADMIN,
        body=lambda s: {"verdict": "disputed"},
        setup=_resolved_exception,
    ),
    Case("GET", "/v1/reports/ledger", DESK_TENANT),
]

# Endpoints whose "other tenant" is a filter rather than a path: the OWN key filters on OTHER.
SHIPPER_FILTERED = {
    ("GET", "/v1/trips"),
    ("GET", "/v1/alarms"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/deliveries"),
    ("GET", "/v1/reports/kpi"),
    ("GET", "/v1/exceptions"),
    ("GET", "/v1/reports/ledger"),
}
SHIPPER_FILTERED_STATUS = {"/v1/reports/kpi": 404, "/v1/reports/ledger": 404}


def _expected(case: Case, role: str, target: str) -> int:
    if role not in case.allowed:
        return 403
    if role == "shipper" and target == OTHER:
        return case.other
    return case.ok


def _assert_no_leak(text: str) -> None:
    assert OTHER not in text.lower(), f"the {OTHER} tenant leaked to {OWN}'s key: {text[:300]}"


@pytest.mark.parametrize("target", [OWN, OTHER])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_role_and_tenant_matrix(
    module_world: World, case: Case, role: str, target: str
) -> None:
    objects = (
        await case.setup(module_world, target) if case.setup else _objects(module_world, target)
    )
    path = case.path.format(**objects)
    params = dict(case.params)
    if (case.method, case.path) in SHIPPER_FILTERED:
        params["shipper"] = target
    body = case.body(target) if case.body else None
    r = await module_world.client.request(
        case.method, path, json=body, params=params, headers=module_world.auth(role)
    )
    expected = _expected(case, role, target)
    if (case.method, case.path) in SHIPPER_FILTERED and role == "shipper" and target == OTHER:
        expected = SHIPPER_FILTERED_STATUS.get(case.path, 200) if role in case.allowed else 403
    assert r.status_code == expected, f"{role} on {target}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}
        assert set(r.json()["error"]) == {"code", "message"}
    if role == "shipper":
        _assert_no_leak(r.text)
        if (
            r.status_code == 200
            and (case.method, case.path) in SHIPPER_FILTERED
            and target == OTHER
        ):
            assert r.json() == []


LIST_FILTERS = [
    ("/v1/alarms", {"trip_id": "ACME-2026-000001"}),
    ("/v1/alarms", {"shipper": OTHER, "status": "open"}),
    ("/v1/trips", {"shipper": OTHER, "status": "planned"}),
    ("/v1/webhooks", {"shipper": OTHER}),
    ("/v1/webhooks/deliveries", {"shipper": OTHER, "status": "pending"}),
]


@pytest.mark.parametrize(("path", "params"), LIST_FILTERS)
async def test_shipper_list_filters_on_another_tenant_are_empty(
    module_world: World, path: str, params: dict[str, str]
) -> None:
    r = await module_world.client.get(path, params=params, headers=module_world.auth("shipper"))
    assert r.status_code == 200
    assert r.json() == []
    # ... while staff (or the other tenant itself) do see data there
    staff_role = "admin"
    r2 = await module_world.client.get(path, params=params, headers=module_world.auth(staff_role))
    assert r2.status_code == 200 and r2.json() != []


@pytest.mark.parametrize(
    "path", ["/v1/trips", "/v1/alarms", "/v1/webhooks", "/v1/webhooks/deliveries"]
)
async def test_shipper_lists_hold_only_its_own(module_world: World, path: str) -> None:
    own = await module_world.client.get(path, headers=module_world.auth("shipper"))
    assert own.status_code == 200
    assert own.json(), "the own tenant's list should not be empty"
    assert {item["shipper"] for item in own.json()} == {OWN}
    _assert_no_leak(own.text)
    everyone = await module_world.client.get(path, headers=module_world.auth("admin"))
    assert {item["shipper"] for item in everyone.json()} >= {OWN, OTHER}


async def test_shipper_kpi_counts_only_its_own_alarms(module_world: World) -> None:
    mine = (
        await module_world.client.get("/v1/reports/kpi", headers=module_world.auth("shipper"))
    ).json()
    everyone = (
        await module_world.client.get("/v1/reports/kpi", headers=module_world.auth("desk"))
    ).json()
    own_alarms = module_world.runtime.store.list_alarms(shipper=OWN, limit=10_000, kind="alarm")
    assert mine["shipper"] == OWN
    assert mine["alarms"] == len(own_alarms)
    assert everyone["alarms"] > mine["alarms"]


async def test_shipper_may_not_subscribe_for_another_tenant(module_world: World) -> None:
    body = {"url": "https://example.test/h", "secret": "y" * 16, "shipper": OTHER}
    r = await module_world.client.post(
        "/v1/webhooks", json=body, headers=module_world.auth("shipper")
    )
    assert r.status_code == 403
    hooks = module_world.runtime.store.list_webhooks(OTHER)
    assert all(h["url"] != "https://example.test/h" for h in hooks)
    # without a shipper the key's own is used
    del body["shipper"]
    r = await module_world.client.post(
        "/v1/webhooks", json=body, headers=module_world.auth("shipper")
    )
    assert r.status_code == 201 and r.json()["shipper"] == OWN
    assert "y" * 16 not in r.text  # the secret is never returned


async def test_admin_webhook_needs_a_shipper(module_world: World) -> None:
    body = {"url": "https://example.test/h", "secret": "z" * 16}
    r = await module_world.client.post(
        "/v1/webhooks", json=body, headers=module_world.auth("admin")
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


def _v1_routes(module_world: World) -> list[tuple[str, str]]:
    """Every (method, path template) under /v1, from the app's own OpenAPI schema."""
    paths = module_world.app.openapi()["paths"]
    return sorted(
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/v1/")
        for method in ops
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer "},
        {"Authorization": "admin-secret"},
    ],
    ids=["none", "unknown", "basic", "empty", "no-scheme"],
)
async def test_every_v1_route_needs_a_known_key(
    module_world: World, headers: dict[str, str]
) -> None:
    routes = _v1_routes(module_world)
    assert len(routes) >= 25
    for method, template in routes:
        path = template.replace("{", "").replace("}", "")  # any value: auth comes first
        r = await module_world.client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


async def test_every_case_covers_every_v1_route(module_world: World) -> None:
    covered = {(c.method, c.path.split("{")[0]) for c in CASES} | {("GET", "/v1/live")}
    for method, path in _v1_routes(module_world):
        prefix = path.split("{")[0]
        assert (method, prefix) in covered, f"{method} {path} missing from the matrix"


async def test_keys_are_stored_hashed(module_world: World) -> None:
    r = await module_world.client.post(
        "/v1/keys",
        json={"role": "shipper", "shipper": OWN, "label": "pg-ops"},
        headers=module_world.auth("admin"),
    )
    assert r.status_code == 201
    made = r.json()
    assert made["role"] == "shipper" and made["shipper"] == OWN and made["key"]
    import hashlib

    stored = module_world.runtime.store.get_api_key(
        hashlib.sha256(made["key"].encode()).hexdigest()
    )
    assert stored is not None
    assert made["key"] not in repr(stored)
    # the new key works and is bound to its shipper
    r = await module_world.client.get(
        "/v1/trips", headers={"Authorization": f"Bearer {made['key']}"}
    )
    assert r.status_code == 200 and {t["shipper"] for t in r.json()} == {OWN}


@pytest.mark.parametrize(
    "body",
    [{"role": "shipper"}, {"role": "desk", "shipper": OWN}, {"role": "root"}, {}],
)
async def test_bad_key_requests_are_422(module_world: World, body: dict[str, Any]) -> None:
    r = await module_world.client.post("/v1/keys", json=body, headers=module_world.auth("admin"))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        ("shipper", "POST", "/v1/alarms/{alarm}/ack", {}),
        ("shipper", "POST", "/v1/alarms/{alarm}/resolve", {"cause": "aliens"}),
        ("fleet", "POST", "/v1/keys", {"role": "root"}),
        ("desk", "PUT", "/v1/shippers/{shipper}", {"sla": "fast"}),
        ("shipper", "POST", "/v1/trips", {"trip_id": 5}),
    ],
)
async def test_forbidden_comes_before_invalid(
    module_world: World, role: str, method: str, path: str, body: dict[str, Any]
) -> None:
    """A role that may not act learns nothing from validating its body."""
    path = path.format(**_objects(module_world, OWN))
    r = await module_world.client.request(method, path, json=body, headers=module_world.auth(role))
    assert r.status_code == 403, r.text
