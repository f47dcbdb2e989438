"""``/v1/webhooks``: subscriptions per shipper, secrets never returned, delivery state;
the SSRF guard of webhook targets (issue 15's probe: 16 of 19 internal targets were
accepted, and ``last_error`` told a shipper which loopback port answered what).

Targets are refused after resolution, at subscription (422) and at every delivery (no
request made), unless the operator sets ``CARGOWATCH_ALLOW_PRIVATE_TARGETS=1`` (the
``world`` does: its receivers are on 127.0.0.1); the ``last_error`` a shipper reads is one
of "connection failed", "HTTP 500", "timeout", "refused target".
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from alerts import AlarmService, LiveHub, WebhookSender
from alerts.targets import REFUSED, RefusedTarget, TargetGuard, is_forbidden
from api import create_app
from api.limits import ApiLimits
from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from core.clock import ManualClock
from rules.events import AlarmType
from tests.alerts_support import Receiver, make_store, put_trip, signal
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


# -- the SSRF guard ----------------------------------------------------------------------

ADMIN = "webhook-admin-key-0123456789"

INTERNAL = [
    "http://127.0.0.1/hook",
    "http://127.0.0.1:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://[::1]/",
    "http://localhost:9/",
    "http://0.0.0.0/",
    "http://0/",
    "http://2130706433/",  # decimal 127.0.0.1
    "http://0x7f000001/",  # hex
    "http://0177.0.0.1/",  # octal
    "http://127.1/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",  # mapped 169.254.169.254
    "http://[fd00::1]/",  # unique local
    "http://[fe80::1]/",  # link local
    "http://[::]/",
    "http://100.64.0.1/",  # shared address space
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
    "https://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
]


@pytest_asyncio.fixture(loop_scope="session")
async def strict(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, Runtime]]:
    """An API with the default settings (private targets refused) and a pg shipper key."""
    runtime = Runtime.open(
        Settings(db_url=f"sqlite:///{tmp_path / 'w.sqlite'}", admin_key=ADMIN),
        clock=ManualClock(),
    )
    key = runtime.create_api_key("shipper", "pg", "pg-portal")["key"]
    app = create_app(runtime, limits=ApiLimits(key_failures_per_min=10_000))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cw")
    try:
        yield client, key, runtime
    finally:
        await client.aclose()
        runtime.close()


@pytest.mark.parametrize("url", INTERNAL)
async def test_internal_targets_are_refused_at_subscription(
    strict: tuple[httpx.AsyncClient, str, Runtime], url: str
) -> None:
    client, key, runtime = strict
    body = {"url": url, "secret": "s" * 20}
    r = await client.post("/v1/webhooks", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert runtime.store.list_webhooks() == []


@pytest.mark.parametrize("url", ["https://93.184.215.14/hook", "https://hooks.example.test/x"])
async def test_public_and_not_yet_resolving_targets_are_accepted(
    strict: tuple[httpx.AsyncClient, str, Runtime], url: str
) -> None:
    client, key, _ = strict
    body = {"url": url, "secret": "s" * 20}
    r = await client.post("/v1/webhooks", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text


async def test_the_operator_may_allow_private_targets() -> None:
    assert Settings(allow_private_targets="1").allow_private_targets is True  # type: ignore[arg-type]
    assert Settings().allow_private_targets is False
    TargetGuard(allow_private=True).check_url("http://127.0.0.1:9/x")
    with pytest.raises(RefusedTarget):
        TargetGuard().check_url("http://127.0.0.1:9/x")


async def test_forbidden_addresses() -> None:
    for address in ("127.0.0.1", "::1", "10.0.0.1", "fd12::1", "169.254.1.1", "0.0.0.0", "::"):
        assert is_forbidden(address), address
    for address in ("8.8.8.8", "2001:4860:4860::8888", "93.184.215.14"):
        assert not is_forbidden(address), address


async def test_a_name_resolving_anywhere_forbidden_is_refused_and_delivery_is_pinned() -> None:
    answers = {"mixed.test": ["93.184.215.14", "10.0.0.5"], "ok.test": ["93.184.215.14"]}
    guard = TargetGuard(resolve=lambda host, port: answers[host])
    with pytest.raises(RefusedTarget):
        guard.check_url("https://mixed.test/hook")
    pinned = guard.pin("https://ok.test:8443/hook?a=1")
    assert pinned.url == "https://93.184.215.14:8443/hook?a=1"
    assert pinned.host == "ok.test:8443" and pinned.sni == "ok.test"


async def _deliver(tmp_path: Path, guard: TargetGuard | None, url: str) -> dict:
    store = make_store(tmp_path)
    clock = ManualClock()
    put_trip(store)
    store.put_webhook(
        {
            "webhook_id": "wh1",
            "shipper": "pg",
            "url": url,
            "secret": "k" * 20,
            "events": ["alarm.raised"],
        }
    )
    AlarmService(store, clock, LiveHub()).handle([signal()])
    async with WebhookSender(
        store, clock, targets=guard, timeout_s=0.5, lease_s=6, rng=random.Random(1)
    ) as sender:
        await sender.deliver_due()
    (row,) = store.list_deliveries()
    store.close()
    return row


async def test_delivery_to_a_name_that_now_resolves_inside_is_not_attempted(
    tmp_path: Path,
) -> None:
    receiver = await Receiver("k" * 20).start()
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    # accepted when it resolved outside; by delivery time it points at the receiver (rebinding)
    answers = iter([["93.184.215.14"], ["127.0.0.1"], ["127.0.0.1"]])
    guard = TargetGuard(resolve=lambda host, p: next(answers))
    url = f"http://rebind.test:{port}/hook"
    guard.check_url(url)
    try:
        row = await _deliver(tmp_path, guard, url)
        assert receiver.requests == []
        assert row["status"] == "pending" and row["last_error"] == REFUSED
        # the same target stored before the guard existed: refused at delivery as well
        (tmp_path / "b").mkdir()
        row = await _deliver(tmp_path / "b", TargetGuard(), receiver.url)
        assert receiver.requests == [] and row["last_error"] == REFUSED
    finally:
        await receiver.stop()


@pytest.mark.parametrize(
    ("plan", "expected"),
    [([500], "HTTP 500"), (["hang"], "timeout"), (None, "connection failed")],
)
async def test_last_error_tells_a_shipper_only_what_it_needs(
    tmp_path: Path, plan: list[int | str] | None, expected: str
) -> None:
    receiver = await Receiver("k" * 20, plan=list(plan or [])).start()
    url = receiver.url
    if plan is None:  # nothing listens there
        await receiver.stop()
    try:
        row = await _deliver(tmp_path, TargetGuard(allow_private=True), url)
    finally:
        if plan is not None:
            await receiver.stop()
    assert row["last_error"] == expected
    assert "127.0.0.1" not in str(row) and "Errno" not in str(row["last_error"])
