"""The store contract of the desk's handling workflow (contract v2 §5), on SQLite and
TimescaleDB: API keys listed, revoked and touched by id; carriers; alarms and exceptions in
one table told apart by ``kind``, filtered by ``assigned_to``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from telemetry.store import Store, open_store
from tests.test_telemetry_store import T0, alarm, db_url  # noqa: F401 (the db_url fixture)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:  # noqa: F811 (db_url: the imported fixture)
    s = open_store(db_url)
    try:
        yield s
    finally:
        s.close()


def _key(key_id: str, created: int, **kw: object) -> dict:
    return {
        "key_hash": key_id.encode().hex().ljust(64, "0"),
        "key_id": key_id,
        "role": "desk",
        "shipper": None,
        "name": f"name-{key_id}",
        "created_at": created,
        **kw,
    }


def test_api_keys_are_listed_oldest_first_with_use_and_revocation(store: Store) -> None:
    store.put_api_key(_key("k2", T0 + 5))
    store.put_api_key(_key("k1", T0))
    assert [k["key_id"] for k in store.list_api_keys()] == ["k1", "k2"]
    assert all(k["last_used_at"] is None and k["revoked_at"] is None for k in store.list_api_keys())
    h1 = _key("k1", T0)["key_hash"]
    store.touch_api_key(h1, T0 + 100)
    store.touch_api_key(h1, T0 + 50)  # never backwards
    assert store.get_api_key(h1)["last_used_at"] == T0 + 100  # type: ignore[index]
    assert store.revoke_api_key("k1", T0 + 200) is True
    assert store.revoke_api_key("k1", T0 + 300) is True  # again: exists, keeps its time
    assert store.revoke_api_key("nope", T0) is False
    got = store.get_api_key(h1)
    assert got is not None and got["revoked_at"] == T0 + 200 and got["name"] == "name-k1"
    # the use and the revocation survive a re-put of the document (only the doc changes)
    store.put_api_key(_key("k1", T0, name="renamed"))
    again = store.get_api_key(h1)
    assert again is not None and again["revoked_at"] == T0 + 200 and again["name"] == "renamed"
    assert store.list_api_keys()[1]["revoked_at"] is None


def test_carriers(store: Store) -> None:
    assert store.list_carriers() == [] and store.get_carrier("c1") is None
    doc = {
        "carrier_id": "c2",
        "name": "Yangtze Haulage",
        "contacts": [{"name": "Li", "phone": "+86"}],
    }
    store.put_carrier(doc)
    store.put_carrier({"carrier_id": "c1", "name": "Old", "contacts": []})
    store.put_carrier({"carrier_id": "c1", "name": "New", "contacts": []})
    assert store.get_carrier("c2") == doc
    assert [(c["carrier_id"], c["name"]) for c in store.list_carriers()] == [
        ("c1", "New"),
        ("c2", "Yangtze Haulage"),
    ]


def test_alarms_and_exceptions_by_kind_and_assignee(store: Store) -> None:
    store.insert_alarm(alarm("a1"))  # no kind: an alarm
    store.insert_alarm(alarm("a2", raised_at=T0 + 1, assigned_to="desk-07"))
    store.insert_alarm(alarm("x1", raised_at=T0 + 2, kind="exception", type="damage"))

    def ids(**kw: object) -> list[str]:
        return [a["alarm_id"] for a in store.list_alarms(**kw)]  # type: ignore[arg-type]

    assert ids() == ["x1", "a2", "a1"]
    assert ids(kind="alarm") == ["a2", "a1"]
    assert ids(kind="exception") == ["x1"]
    assert ids(assigned_to="desk-07") == ["a2"]
    # assignment is an indexed column kept in step with the document
    doc = store.get_alarm("a1")
    assert doc is not None
    assert store.update_alarm({**doc, "assigned_to": "desk-09", "version": 2}, 1)
    assert ids(assigned_to="desk-09") == ["a1"]
    # open exceptions are escalated like alarms, but the alarm gauges count alarms only
    assert {a["alarm_id"] for a in store.alarms_due(T0 + 10 * 3_600_000)} == {"a1", "a2", "x1"}
    assert store.alarm_counts() == {("ROUTE_DEVIATION", "open"): 2}
