"""Named API keys (contract v2 §5, §7): made, listed, asked "who am I", revoked; stored only
as hashes; the name is who acts in alarm histories."""

from __future__ import annotations

import sqlite3

import pytest

from tests.api_world import ADMIN_KEY, World

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _make(w: World, body: dict, status: int = 201) -> dict:
    r = await w.client.post("/v1/keys", json=body, headers=w.auth("admin"))
    assert r.status_code == status, r.text
    return r.json()


async def test_a_named_key_is_listed_without_its_secret_and_knows_itself(world: World) -> None:
    made = await _make(world, {"role": "desk", "name": "desk-77"})
    assert made["name"] == "desk-77" and made["role"] == "desk" and made["shipper"] is None
    assert made["key"].startswith("cw_") and made["key_id"].startswith("key_")
    legacy = await _make(world, {"role": "shipper", "shipper": "pg", "label": "pg-ops"})
    assert legacy["name"] == "pg-ops"
    me = await world.client.get("/v1/keys/me", headers={"Authorization": f"Bearer {made['key']}"})
    assert me.status_code == 200
    assert me.json() == {
        "key_id": made["key_id"],
        "name": "desk-77",
        "role": "desk",
        "shipper": None,
    }
    me = await world.client.get("/v1/keys/me", headers={"Authorization": f"Bearer {legacy['key']}"})
    assert me.json()["shipper"] == "pg" and me.json()["role"] == "shipper"

    r = await world.client.get("/v1/keys", headers=world.auth("admin"))
    assert r.status_code == 200
    listed = {k["key_id"]: k for k in r.json()}
    assert listed[made["key_id"]]["name"] == "desk-77"
    assert set(listed[made["key_id"]]) == {
        "key_id",
        "name",
        "role",
        "shipper",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert listed[made["key_id"]]["last_used_at"] is not None  # used by /keys/me above
    assert listed[made["key_id"]]["created_at"].endswith("Z")
    for secret in (made["key"], legacy["key"], ADMIN_KEY):
        assert secret not in r.text
    assert "key_hash" not in r.text
    names = {k["name"] for k in r.json()}
    assert {"admin", "desk-77", "pg-ops"} <= names


async def test_names_are_unique_among_live_keys(world: World) -> None:
    first = await _make(world, {"role": "desk", "name": "desk-11"})
    await _make(world, {"role": "fleet", "name": "desk-11"}, status=409)
    await _make(world, {"role": "desk", "name": "a" * 65}, status=422)
    await _make(world, {"role": "desk", "name": "x", "label": "y"}, status=422)
    r = await world.client.delete(f"/v1/keys/{first['key_id']}", headers=world.auth("admin"))
    assert r.status_code == 204
    await _make(world, {"role": "desk", "name": "desk-11"})  # free again once revoked


async def test_a_revoked_key_is_refused_at_once(world: World) -> None:
    made = await _make(world, {"role": "desk", "name": "desk-12"})
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert (await world.client.get("/v1/alarms", headers=headers)).status_code == 200
    r = await world.client.delete(f"/v1/keys/{made['key_id']}", headers=world.auth("admin"))
    assert r.status_code == 204 and r.content == b""
    r = await world.client.get("/v1/alarms", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert (await world.client.get("/v1/keys/me", headers=headers)).status_code == 401
    listed = (await world.client.get("/v1/keys", headers=world.auth("admin"))).json()
    (gone,) = [k for k in listed if k["key_id"] == made["key_id"]]
    assert gone["revoked_at"] is not None
    # revoking again is harmless; an unknown key is 404; an admin keeps its own key
    r = await world.client.delete(f"/v1/keys/{made['key_id']}", headers=world.auth("admin"))
    assert r.status_code == 204
    r = await world.client.delete("/v1/keys/key_nope", headers=world.auth("admin"))
    assert r.status_code == 404
    me = (await world.client.get("/v1/keys/me", headers=world.auth("admin"))).json()
    r = await world.client.delete(f"/v1/keys/{me['key_id']}", headers=world.auth("admin"))
    assert r.status_code == 409
    assert (await world.client.get("/v1/keys/me", headers=world.auth("admin"))).status_code == 200


async def test_a_key_revoked_by_another_process_is_refused(world: World) -> None:
    """Every process reads revocation from the store: a second runtime on the same file
    refuses the key as soon as the first has revoked it (no cache to wait for)."""
    from api import create_app
    from tests.api_world import api_client, make_runtime

    made = await _make(world, {"role": "desk", "name": "desk-13"})
    headers = {"Authorization": f"Bearer {made['key']}"}
    db_file = world.runtime.settings.db_url.removeprefix("sqlite:///")
    import pathlib

    other = make_runtime(pathlib.Path(db_file).parent, world.clock)
    client = api_client(create_app(other))
    try:
        assert (await client.get("/v1/keys/me", headers=headers)).status_code == 200
        r = await world.client.delete(f"/v1/keys/{made['key_id']}", headers=world.auth("admin"))
        assert r.status_code == 204
        assert (await client.get("/v1/keys/me", headers=headers)).status_code == 401
    finally:
        await client.aclose()
        other.close()


async def test_the_database_holds_no_secret(world: World) -> None:
    made = await _make(world, {"role": "desk", "name": "desk-14"})
    path = world.runtime.settings.db_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert made["key"] not in dump and ADMIN_KEY not in dump
    import hashlib

    assert hashlib.sha256(made["key"].encode()).hexdigest() in dump  # the hash is what is kept


async def test_only_an_admin_manages_keys(world: World) -> None:
    for role in ("desk", "fleet", "shipper"):
        h = world.auth(role)
        assert (await world.client.get("/v1/keys", headers=h)).status_code == 403
        r = await world.client.post("/v1/keys", json={"role": "admin"}, headers=h)
        assert r.status_code == 403
        assert (await world.client.delete("/v1/keys/key_x", headers=h)).status_code == 403
        assert (await world.client.get("/v1/keys/me", headers=h)).status_code == 200
