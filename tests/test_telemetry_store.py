"""The store contract: every test runs against SQLite and TimescaleDB, which must agree.

The PostgreSQL half needs the private TimescaleDB cluster of ``conftest.py`` (marker
``services``); ``pytest -m "not services"`` runs the SQLite half alone.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargowatch.busmode.devicestage import current_trip
from telemetry.errors import Conflict, InvalidAddress, NotFound, StoreError, StoreUnavailable
from telemetry.models import DeadLetter, DeadLetterReason, Fix, LockEvent, LockEventType
from telemetry.models import UnlockMethod as Method
from telemetry.store import Store, open_store
from telemetry.store import _pgcopy as pgcopy
from telemetry.store.documents import SqlStore
from telemetry.store.migrations import check_sequence
from telemetry.store.migrations.postgres import POSTGRES
from telemetry.store.migrations.sqlite import SQLITE
from telemetry.store.postgres import PostgresStore, redact
from telemetry.store.sql import to_pyformat

T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z
DAY = 86_400_000
_ids = itertools.count()


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A brand-new database. (Copying a migrated template database would be faster, but
    TimescaleDB's background scheduler keeps a session open on it, which CREATE DATABASE
    ... TEMPLATE refuses.)"""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    try:
        yield s
    finally:
        s.close()


def fix(device: str, ts: int, seq: int | None = None, **kw: object) -> Fix:
    values: dict = {"lat": 31.2304, "lon": 121.4737, "received_at": T0, **kw}
    return Fix(device, ts, seq=seq, **values)


def event(device: str, ts: int, kind: str = "locked", seq: int | None = None, **kw) -> LockEvent:
    return LockEvent(device, ts, LockEventType(kind), seq=seq, received_at=T0, **kw)


def keys(items: list[Fix] | list[LockEvent]) -> list[tuple[str, int, int | None]]:
    return [(x.device_id, x.ts, x.seq) for x in items]


def alarm(alarm_id: str, **kw: object) -> dict:
    doc = {
        "alarm_id": alarm_id,
        "type": "ROUTE_DEVIATION",
        "severity": "major",
        "trip_id": "T1",
        "shipper": "pg",
        "ts": T0,
        "raised_at": T0,
        "status": "open",
        "ack_due": T0 + 30 * 60_000,
        "resolve_due": T0 + 4 * 3_600_000,
        "ack_escalated": False,
        "resolve_escalated": False,
        "escalation_level": 0,
        "details": {"distance_m": 812.5},
        "version": 1,
    }
    doc.update(kw)
    return doc


def delivery(delivery_id: str, webhook_id: str, order_key: str | None, **kw: object) -> dict:
    doc = {
        "delivery_id": delivery_id,
        "webhook_id": webhook_id,
        "event_id": f"evt_{delivery_id}",
        "shipper": "pg",
        "order_key": order_key,
        "body": '{"id":"evt"}',
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": T0,
        "created_at": T0,
        "last_error": None,
    }
    doc.update(kw)
    return doc


# -- life cycle and URLs ---------------------------------------------------------------------
def test_migration_lists_are_numbered_in_order() -> None:
    check_sequence(SQLITE)
    check_sequence(POSTGRES)


def test_migrate_twice_is_a_noop_and_keeps_data(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.put_device({"device_id": "gps-1", "kind": "gps", "shipper": None})
        store.insert_fixes([fix("gps-1", T0, 1)])
        store.migrate()
        store.migrate()
        device = store.get_device("gps-1")
        assert device == {"device_id": "gps-1", "kind": "gps", "shipper": None}
        assert store.count_telemetry()["fixes"] == 1
    finally:
        store.close()
    open_store(db_url).close()
    assert _schema_versions(db_url) == [m.version for m in _migrations(db_url)]


def _migrations(db_url: str) -> tuple:
    return SQLITE if db_url.startswith("sqlite") else POSTGRES


def _schema_versions(db_url: str) -> list[int]:
    sql = "SELECT version FROM schema_migrations ORDER BY version"
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            return [row[0] for row in conn.execute(sql)]
    with psycopg.connect(db_url) as conn:
        return [row[0] for row in conn.execute(sql)]


def test_two_stores_migrating_together_apply_each_step_once(db_url: str) -> None:
    barrier = threading.Barrier(3)

    def open_one() -> Store:
        barrier.wait()
        return open_store(db_url)

    with ThreadPoolExecutor(3) as pool:
        stores = list(pool.map(lambda _: open_one(), range(3)))
    try:
        assert _schema_versions(db_url) == [m.version for m in _migrations(db_url)]
        stores[0].put_shipper({"shipper": "pg"})
        assert stores[2].get_shipper("pg") == {"shipper": "pg"}
    finally:
        for s in stores:
            s.close()


def test_ping_and_close(store: Store) -> None:
    assert store.ping() is True
    store.close()
    assert store.ping() is False
    with pytest.raises(StoreError):
        store.get_device("x")
    store.close()  # idempotent


def test_sqlite_in_memory() -> None:
    s = open_store("sqlite:///:memory:")
    try:
        assert s.insert_fixes([fix("a", T0), fix("a", T0)]).tolist() == [True, False]
        assert s.count_telemetry() == {"fixes": 1, "lock_events": 0, "dead_letters": 0}
    finally:
        s.close()


def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///data.db")
    s.close()
    assert (tmp_path / "data.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "no database URL"),
        ("   ", "no database URL"),
        ("mysql://root@localhost/db", "unsupported database URL scheme 'mysql'"),
        ("redis://localhost", "unsupported database URL scheme 'redis'"),
        ("cargowatch.db", "unsupported database URL scheme"),
        ("sqlite://relative.db", "three slashes"),
        ("sqlite:/x.db", "three slashes"),
        ("sqlite:///", "plain file path"),
        ("sqlite:///x.db?mode=ro", "plain file path"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidAddress, match=message):
        open_store(url)


def test_open_store_reports_unreachable_databases(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as err:
        open_store("postgresql://cw:s3cret@127.0.0.1:1/cargowatch")
    assert "s3cret" not in str(err.value)
    assert err.value.context["url"] == "postgresql://cw:***@127.0.0.1:1/cargowatch"


def test_unreachable_or_unusable_databases_raise_by_kind(tmp_path: Path) -> None:
    # nothing listens on port 1: the database cannot be reached (503), not a bug (500)
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL"):
        open_store("postgresql://cw@127.0.0.1:1/cargowatch")
    with pytest.raises(StoreUnavailable, match="cannot open SQLite database"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")
    # a URL that cannot name any database is the caller's input (422)
    for url in ("postgresql://cw@127.0.0.1:notaport/db", "postgresql://h/db?no_such_option=1"):
        with pytest.raises(InvalidAddress) as err:
            open_store(url)
        assert not isinstance(err.value, StoreError)


def test_a_closed_store_is_unavailable(store: Store) -> None:
    store.close()
    with pytest.raises(StoreUnavailable):
        store.get_device("x")
    with pytest.raises(StoreUnavailable):
        store.put_device({"device_id": "x"})


def test_database_errors_by_kind_and_bugs_as_they_are(store: Store) -> None:
    """Through the one session every method uses: a unique violation is a Conflict, a
    missing parent NotFound, while bad SQL is raised as the driver's own error."""
    assert isinstance(store, SqlStore)
    session = store._session
    shipper = "INSERT INTO shippers (shipper, doc) VALUES (:shipper, :doc)"
    with session("write", "raw insert") as s:
        s.execute(shipper, {"shipper": "pg", "doc": "{}"})
    with pytest.raises(Conflict), session("write", "raw insert") as s:
        s.execute(shipper, {"shipper": "pg", "doc": "{}"})
    with pytest.raises(NotFound), session("write", "raw history") as s:
        s.execute("INSERT INTO alarm_history (alarm_id, entry) VALUES ('nope', '{}')", {})
    with pytest.raises((sqlite3.Error, psycopg.Error)) as err, session("read", "bad SQL") as s:
        s.execute("SELEC 1", {})
    assert not isinstance(err.value, StoreError)
    with pytest.raises((sqlite3.Error, psycopg.Error)) as err, session("read", "no table") as s:
        s.execute("SELECT * FROM no_such_table", {})
    assert not isinstance(err.value, StoreError)
    assert store.get_shipper("pg") == {}  # the store goes on


def test_postgres_pool_exhausted_is_unavailable(pg_url: str) -> None:
    open_store(pg_url).close()  # migrated
    store = PostgresStore(pg_url, max_size=1, timeout_s=1.0)
    try:
        with store.unit_of_work():  # holds the only connection
            result: list[BaseException] = []

            def other() -> None:
                try:
                    store.get_device("x")
                except BaseException as exc:
                    result.append(exc)

            t = threading.Thread(target=other)
            t.start()
            t.join()
        assert len(result) == 1 and isinstance(result[0], StoreUnavailable)
        assert store.get_device("x") is None  # and serves again once it is free
    finally:
        store.close()


def test_named_parameters_for_psycopg() -> None:
    sql = "SELECT :a, CAST(:b_2 AS bigint), x::text, '10:30', 5 % 2 FROM t WHERE y = :a"
    assert to_pyformat(sql) == (
        "SELECT %(a)s, CAST(%(b_2)s AS bigint), x::text, '10:30', 5 %% 2 FROM t WHERE y = %(a)s"
    )


def test_redact() -> None:
    assert redact("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact("postgres://u:p@ss@h/d") == "postgres://u:***@h/d"
    assert redact("postgresql://h/d?user=u&password=p&x=1") == (
        "postgresql://h/d?user=u&password=***&x=1"
    )


# -- documents -------------------------------------------------------------------------------
def test_devices(store: Store) -> None:
    store.put_device({"device_id": "gps-2", "kind": "gps", "shipper": "pg", "name": "b"})
    store.put_device({"device_id": "gps-1", "kind": "gps", "shipper": "pg", "name": "a"})
    store.put_device({"device_id": "lock-1", "kind": "lock", "shipper": None})
    assert store.get_device("nope") is None
    assert [d["device_id"] for d in store.list_devices()] == ["gps-1", "gps-2", "lock-1"]
    assert [d["device_id"] for d in store.list_devices(shipper="pg")] == ["gps-1", "gps-2"]
    store.put_device({"device_id": "gps-2", "kind": "gps", "shipper": "acme", "name": "moved"})
    assert store.get_device("gps-2") == {
        "device_id": "gps-2",
        "kind": "gps",
        "shipper": "acme",
        "name": "moved",
    }
    assert [d["device_id"] for d in store.list_devices(shipper="pg")] == ["gps-1"]
    assert store.device_ids() == {"gps-1", "gps-2", "lock-1"}


def test_documents_come_back_as_given(store: Store) -> None:
    doc = {
        "device_id": "d-1",
        "name": '沪A12345 \x00 nul and "quotes" \\ and emoji 🚚',
        "nested": {"list": [1, 2.5, None, True, {"k": "v"}], "empty": {}},
        "big": 2**70,
        "small": -(2**63),
        "float": 0.1,
        "whole_float": 3.0,
        "tiny": 1e-300,
    }
    store.put_device(doc)
    got = store.get_device("d-1")
    assert got == doc
    assert isinstance(got["whole_float"], float)
    assert isinstance(got["small"], int)


@pytest.mark.parametrize(
    "bad",
    [{"kind": "gps"}, {"device_id": ""}, {"device_id": 7}, {"device_id": "x", "o": object()}],
)
def test_bad_documents_raise_store_errors(store: Store, bad: dict) -> None:
    with pytest.raises(StoreError):
        store.put_device(bad)
    assert store.list_devices() == []


def test_shippers(store: Store) -> None:
    pg = {"shipper": "pg", "sla": {"critical": {"ack_min": 5, "resolve_min": 120}}, "rules": {}}
    store.put_shipper(pg)
    store.put_shipper({"shipper": "acme", "sla": {}, "rules": {"stop_max_min": 45}})
    assert store.get_shipper("pg") == pg
    assert store.get_shipper("nope") is None
    assert [s["shipper"] for s in store.list_shippers()] == ["acme", "pg"]
    store.put_shipper({**pg, "rules": {"corridor_m": 800}})
    assert store.get_shipper("pg")["rules"] == {"corridor_m": 800}


def test_geofences(store: Store) -> None:
    point = {"type": "Point", "coordinates": [121.47, 31.23]}
    store.put_geofence({"geofence_id": "g1", "kind": "depot", "shipper": "pg", "geometry": point})
    store.put_geofence({"geofence_id": "g2", "kind": "rest_area", "shipper": None})
    store.put_geofence(
        {
            "geofence_id": "g3",
            "type": "Feature",
            "shipper": "acme",
            "properties": {"kind": "rest_area"},
            "geometry": point,
        }
    )
    assert store.get_geofence("g1")["geometry"] == point
    assert store.get_geofence("nope") is None
    assert [g["geofence_id"] for g in store.list_geofences()] == ["g1", "g2", "g3"]
    assert [g["geofence_id"] for g in store.list_geofences(shipper="pg")] == ["g1", "g2"]
    assert [g["geofence_id"] for g in store.list_geofences(kind="rest_area")] == ["g2", "g3"]
    assert [g["geofence_id"] for g in store.list_geofences("acme", "rest_area")] == ["g2", "g3"]
    assert store.list_geofences("pg", "risk_zone") == []


def trip(trip_id: str, **kw: object) -> dict:
    doc = {
        "trip_id": trip_id,
        "shipper": "pg",
        "status": "planned",
        "devices": ["gps-1", "lock-1"],
        "planned_start": T0,
        "stops": [{"stop_id": "S1", "radius_m": 200}],
    }
    doc.update(kw)
    return doc


def test_trips(store: Store) -> None:
    store.put_trip(trip("T1", planned_start=T0))
    store.put_trip(trip("T2", planned_start=T0 + 1000, status="active", devices=["gps-2"]))
    store.put_trip(trip("T3", planned_start=None, shipper="acme"))
    store.put_trip(trip("T4", planned_start=T0 + 1000))
    assert store.get_trip("T1") == trip("T1", planned_start=T0)
    assert store.get_trip("nope") is None
    # newest planned_start first, ties by id (newest id first), unknown start last
    assert [t["trip_id"] for t in store.list_trips()] == ["T4", "T2", "T1", "T3"]
    assert [t["trip_id"] for t in store.list_trips(limit=2)] == ["T4", "T2"]
    assert [t["trip_id"] for t in store.list_trips(shipper="pg")] == ["T4", "T2", "T1"]
    assert [t["trip_id"] for t in store.list_trips(status="active")] == ["T2"]
    assert [t["trip_id"] for t in store.list_trips("pg", "planned")] == ["T4", "T1"]
    assert store.list_trips(shipper="nobody") == []


def test_trips_for_device_follow_replacements(store: Store) -> None:
    store.put_trip(trip("T1", devices=["gps-1", "lock-1"]))
    store.put_trip(trip("T2", devices=["gps-1"], status="active", planned_start=T0 + 1))
    assert [t["trip_id"] for t in store.trips_for_device("gps-1")] == ["T2", "T1"]
    assert [t["trip_id"] for t in store.trips_for_device("gps-1", "active")] == ["T2"]
    store.put_trip(trip("T1", devices=["gps-9"]))
    assert [t["trip_id"] for t in store.trips_for_device("lock-1")] == []
    assert [t["trip_id"] for t in store.trips_for_device("gps-9")] == ["T1"]


def test_trips_for_device_order_and_edges(store: Store) -> None:
    assert store.trips_for_device("gps-1") == []
    store.put_trip(trip("T1", devices=["gps-1", "gps-1"], planned_start=None))
    store.put_trip(trip("T2", devices=["gps-1"], planned_start=T0))
    store.put_trip(trip("T3", devices=["gps-1"], planned_start=T0, status="active"))
    store.put_trip(trip("T4", devices=[]))
    store.put_trip(trip("T5", devices=["gps-2"]))
    # newest planned_start first, ties by id (newest first), unknown start last; each once
    assert [t["trip_id"] for t in store.trips_for_device("gps-1")] == ["T3", "T2", "T1"]
    assert store.trips_for_device("gps-1")[2] == trip(
        "T1", devices=["gps-1", "gps-1"], planned_start=None
    )
    assert [t["trip_id"] for t in store.trips_for_device("gps-1", "planned")] == ["T2", "T1"]
    assert store.trips_for_device("gps-1", "closed") == []
    assert store.trips_for_device("lock-1") == []


def test_current_device_trips_map_every_device(store: Store) -> None:
    assert store.current_device_trips() == {}
    store.put_trip(trip("T1", devices=["gps-1", "gps-1", "lock-1"], planned_start=None))
    store.put_trip(trip("T2", devices=["gps-1"], planned_start=T0))
    store.put_trip(trip("T3", devices=["gps-2"], planned_start=T0, status="active"))
    store.put_trip(trip("T4", devices=["gps-3"], status="completed"))
    store.put_trip(trip("T5", devices=["gps-2"], planned_start=T0 + 5, status="active"))
    # planned: the one that starts first (an unknown start first of all); active: the newest
    assert store.current_device_trips() == {"gps-1": "T1", "lock-1": "T1", "gps-2": "T5"}
    store.put_trip(trip("T1", devices=["gps-9"], status="cancelled"))  # replaced: gone
    assert store.current_device_trips() == {"gps-1": "T2", "gps-2": "T5"}


_RUNS = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.frozensets(st.integers(0, 2), min_size=1),
            st.sampled_from(["active", "planned", "completed", "cancelled"]),
            st.sampled_from([None, T0, T0 + 1000]),
        ),
        max_size=8,
    )
)
def test_current_device_trips_choose_as_the_per_device_look_up(
    store: Store, rows: list[tuple[frozenset[int], str, int | None]]
) -> None:
    """The whole map, ranked by the database, picks for each device what ``current_trip``
    picks from ``trips_for_device`` (ties in planned_start included)."""
    run = next(_RUNS)  # devices and trips of their own for each example
    devices = [f"h{run}-{i}" for i in range(3)]
    for i, (mine, status, start) in enumerate(rows):
        store.put_trip(
            trip(
                f"H{run}-{i}",
                devices=[devices[k] for k in sorted(mine)],
                status=status,
                planned_start=start,
            )
        )
    chosen = store.current_device_trips()
    for device in devices:
        assert chosen.get(device) == current_trip(store.trips_for_device(device))


def test_trip_events_are_kept_in_order(store: Store) -> None:
    store.put_trip(trip("T1"))
    events = [
        {"kind": "milestone", "milestone": "sealed", "ts": T0 + 5},
        {"kind": "status", "from": "planned", "to": "active", "ts": T0 + 1},
        {"kind": "milestone", "milestone": "departed", "ts": T0 + 3, "details": {"a": [1]}},
    ]
    for e in events:
        store.add_trip_event("T1", e)
    store.put_trip(trip("T1", status="active"))  # replacing the trip keeps its events
    assert store.trip_events("T1") == events
    assert store.trip_events("T2") == []
    with pytest.raises(NotFound):
        store.add_trip_event("T2", {"kind": "milestone"})


# -- alarms ----------------------------------------------------------------------------------
def test_insert_and_get_alarm(store: Store) -> None:
    doc = alarm("a1")
    store.insert_alarm(doc)
    assert store.get_alarm("a1") == doc
    assert store.get_alarm("nope") is None
    with pytest.raises(Conflict):
        store.insert_alarm(alarm("a1", status="resolved"))
    assert store.get_alarm("a1") == doc


def test_insert_alarm_without_version_starts_at_one(store: Store) -> None:
    doc = alarm("a1")
    del doc["version"]
    store.insert_alarm(doc)
    assert store.get_alarm("a1")["version"] == 1
    assert store.update_alarm({**doc, "version": 2, "status": "acknowledged"}, 1) is True


def test_update_alarm_is_optimistic(store: Store) -> None:
    store.insert_alarm(alarm("a1"))
    acked = alarm("a1", status="acknowledged", version=2, acknowledged_by="desk-07")
    assert store.update_alarm(acked, 1) is True
    assert store.get_alarm("a1") == acked
    # a second writer that read version 1 loses
    assert store.update_alarm(alarm("a1", status="resolved", version=2), 1) is False
    assert store.get_alarm("a1") == acked
    with pytest.raises(StoreError, match="expected_version"):
        store.update_alarm(alarm("a1", status="resolved", version=5), 2)
    with pytest.raises(NotFound):
        store.update_alarm(alarm("ghost", version=2), 1)
    # the indexed columns follow the document
    assert [a["alarm_id"] for a in store.list_alarms(status=["acknowledged"])] == ["a1"]
    assert store.list_alarms(status=["open"]) == []


def test_concurrent_updates_one_winner(store: Store) -> None:
    store.insert_alarm(alarm("a1"))
    barrier = threading.Barrier(8)

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.update_alarm(alarm("a1", version=2, note=f"writer {i}"), 1)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.get_alarm("a1")["note"] == f"writer {winner}"


def test_list_alarms_filters_and_order(store: Store) -> None:
    store.insert_alarm(alarm("a1", raised_at=T0, trip_id="T1", shipper="pg"))
    store.insert_alarm(alarm("a2", raised_at=T0 + 10, type="LONG_STOP", status="acknowledged"))
    store.insert_alarm(alarm("a3", raised_at=T0 + 20, trip_id="T2", shipper="acme"))
    store.insert_alarm(alarm("a4", raised_at=T0 + 20, status="resolved"))

    def ids(**kw: object) -> list[str]:
        return [a["alarm_id"] for a in store.list_alarms(**kw)]

    assert ids() == ["a4", "a3", "a2", "a1"]  # newest raised_at first, then id
    assert ids(limit=1) == ["a4"]
    assert ids(status=["open", "acknowledged"]) == ["a3", "a2", "a1"]
    assert ids(status="resolved") == ["a4"]
    assert ids(status=[]) == []
    assert ids(type="LONG_STOP") == ["a2"]
    assert ids(trip_id="T2") == ["a3"]
    assert ids(shipper="acme") == ["a3"]
    assert ids(since_ms=T0 + 10) == ["a4", "a3", "a2"]
    assert ids(until_ms=T0 + 20) == ["a2", "a1"]
    assert ids(since_ms=T0 + 10, until_ms=T0 + 20, status=["acknowledged"]) == ["a2"]


def test_alarms_due(store: Store) -> None:
    ack_due, resolve_due = T0 + 100, T0 + 1000
    base = {"ack_due": ack_due, "resolve_due": resolve_due}
    store.insert_alarm(alarm("open", **base))
    store.insert_alarm(alarm("acked", status="acknowledged", **base))
    store.insert_alarm(alarm("open-ack-escalated", ack_escalated=True, **base))
    store.insert_alarm(alarm("resolved", status="resolved", **base))
    store.insert_alarm(alarm("both-escalated", ack_escalated=True, resolve_escalated=True, **base))

    def due(now: int) -> set[str]:
        return {a["alarm_id"] for a in store.alarms_due(now)}

    assert due(ack_due - 1) == set()
    assert due(ack_due) == {"open"}
    assert due(resolve_due) == {"open", "acked", "open-ack-escalated"}
    # escalating the ack deadline takes the alarm off the list until the resolve deadline
    assert store.update_alarm(alarm("open", version=2, ack_escalated=True, **base), 1)
    assert due(ack_due) == set()
    assert due(resolve_due) == {"open", "acked", "open-ack-escalated"}


def test_alarm_counts_by_type_and_status(store: Store) -> None:
    assert store.alarm_counts() == {}
    store.insert_alarm(alarm("a1"))
    store.insert_alarm(alarm("a2"))
    store.insert_alarm(alarm("a3", status="acknowledged"))
    store.insert_alarm(alarm("a4", type="LOCK_TAMPER"))
    store.insert_alarm(alarm("a5", type="LOCK_TAMPER", status="resolved"))
    assert store.alarm_counts() == {
        ("ROUTE_DEVIATION", "open"): 2,
        ("ROUTE_DEVIATION", "acknowledged"): 1,
        ("LOCK_TAMPER", "open"): 1,
    }
    # counts follow updates: acknowledged, then resolved
    assert store.update_alarm(alarm("a4", type="LOCK_TAMPER", status="acknowledged", version=2), 1)
    assert store.update_alarm(alarm("a1", status="resolved", version=2), 1)
    assert store.alarm_counts() == {
        ("ROUTE_DEVIATION", "open"): 1,
        ("ROUTE_DEVIATION", "acknowledged"): 1,
        ("LOCK_TAMPER", "acknowledged"): 1,
    }


def test_alarm_history_is_append_only_in_order(store: Store, db_url: str) -> None:
    store.insert_alarm(alarm("a1"))
    store.put_trip(trip("T1"))
    store.add_trip_event("T1", {"kind": "milestone"})
    entries = [
        {"at": T0, "by": "engine", "action": "raised", "from": None, "to": "open", "note": None},
        {"at": T0 + 5, "by": "desk-07", "action": "acknowledged", "from": "open", "note": "x"},
    ]
    for e in entries:
        store.add_alarm_history("a1", e)
    assert store.alarm_history("a1") == entries
    assert store.alarm_history("a2") == []
    with pytest.raises(NotFound):
        store.add_alarm_history("a2", entries[0])
    # even a direct SQL delete is refused by the schema
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        _execute(db_url, "DELETE FROM alarm_history")
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        _execute(db_url, "UPDATE trip_events SET kind = 'x'")
    assert store.alarm_history("a1") == entries


def _execute(db_url: str, sql: str) -> None:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(db_url) as pg:
            pg.execute(sql)


# -- API keys and webhooks -------------------------------------------------------------------
def test_api_keys(store: Store) -> None:
    assert store.count_api_keys() == 0
    key = {"key_hash": "ab" * 32, "key_id": "k1", "role": "shipper", "shipper": "pg"}
    store.put_api_key(key)
    store.put_api_key({"key_hash": "cd" * 32, "key_id": "k2", "role": "admin", "shipper": None})
    assert store.get_api_key("ab" * 32) == {**key, "last_used_at": None, "revoked_at": None}
    assert store.get_api_key("ef" * 32) is None
    assert store.count_api_keys() == 2


def test_webhooks(store: Store) -> None:
    hook = {"webhook_id": "w1", "shipper": "pg", "url": "http://x", "secret": "s", "events": []}
    store.put_webhook(hook)
    store.put_webhook({**hook, "webhook_id": "w2", "shipper": "acme"})
    assert [h["webhook_id"] for h in store.list_webhooks()] == ["w1", "w2"]
    assert store.list_webhooks("pg") == [hook]
    assert store.delete_webhook("w1") is True
    assert store.delete_webhook("w1") is False
    assert [h["webhook_id"] for h in store.list_webhooks()] == ["w2"]


# -- deliveries (outbox) ---------------------------------------------------------------------
def test_due_deliveries_are_the_head_of_each_webhook_and_order_key(store: Store) -> None:
    store.enqueue_deliveries(
        [
            delivery("a1", "w1", "alarm-A"),
            delivery("b1", "w1", "alarm-B"),
            delivery("a2", "w1", "alarm-A"),
            delivery("c1", "w2", "alarm-A"),  # another receiver of the same alarm
            delivery("a3", "w1", "alarm-A"),
        ]
    )
    due = store.due_deliveries(T0)
    assert [d["delivery_id"] for d in due] == ["a1", "b1", "c1"]
    seqs = {d["delivery_id"]: d["seq"] for d in store.list_deliveries(limit=10)}
    assert seqs["a1"] < seqs["b1"] < seqs["a2"] < seqs["c1"] < seqs["a3"]
    assert due[0] == {**delivery("a1", "w1", "alarm-A"), "seq": seqs["a1"]}

    # a1 failed: retried later, and a2 waits behind it (events of one alarm in order)
    store.update_delivery({**due[0], "attempts": 1, "next_attempt_at": T0 + 60_000})
    assert [d["delivery_id"] for d in store.due_deliveries(T0)] == ["b1", "c1"]
    assert [d["delivery_id"] for d in store.due_deliveries(T0 + 60_000)] == ["a1", "b1", "c1"]
    store.update_delivery({**due[0], "status": "delivered", "delivered_at": T0 + 60_000})
    assert [d["delivery_id"] for d in store.due_deliveries(T0 + 60_000)] == ["b1", "a2", "c1"]
    # a dead delivery does not block the ones after it
    store.update_delivery({"delivery_id": "a2", "status": "dead", "last_error": "HTTP 500"})
    assert [d["delivery_id"] for d in store.due_deliveries(T0, limit=2)] == ["b1", "c1"]
    assert [d["delivery_id"] for d in store.due_deliveries(T0)] == ["b1", "c1", "a3"]


def test_deliveries_without_order_key_are_independent(store: Store) -> None:
    store.enqueue_deliveries([delivery("m1", "w1", None), delivery("m2", "w1", None)])
    assert [d["delivery_id"] for d in store.due_deliveries(T0)] == ["m1", "m2"]


def test_update_delivery_changes_state_not_identity(store: Store) -> None:
    store.enqueue_deliveries([delivery("d1", "w1", "k")])
    store.update_delivery(
        {
            "delivery_id": "d1",
            "webhook_id": "other",
            "body": "changed",
            "status": "pending",
            "attempts": 3,
            "last_error": "timeout after 10s",
            "last_attempt_at": T0 + 5,
            "next_attempt_at": T0 + 10,
        }
    )
    [got] = store.list_deliveries()
    assert got["webhook_id"] == "w1" and got["body"] == '{"id":"evt"}'
    assert got["attempts"] == 3 and got["last_error"] == "timeout after 10s"
    assert got["last_attempt_at"] == T0 + 5 and got["next_attempt_at"] == T0 + 10
    with pytest.raises(NotFound):
        store.update_delivery({"delivery_id": "ghost", "status": "dead"})


def test_enqueueing_a_delivery_again_is_harmless(store: Store) -> None:
    store.enqueue_deliveries([delivery("d1", "w1", "k")])
    store.update_delivery({"delivery_id": "d1", "status": "delivered"})
    store.enqueue_deliveries([delivery("d1", "w1", "k"), delivery("d2", "w1", "k")])
    assert [(d["delivery_id"], d["status"]) for d in store.list_deliveries()] == [
        ("d2", "pending"),
        ("d1", "delivered"),
    ]


# -- delivery leases (one sender per delivery, across processes) ------------------------------
LEASE = 60_000


def ids(docs: list[dict]) -> list[str]:
    return [d["delivery_id"] for d in docs]


def test_claim_deliveries_leases_the_due_heads_to_one_owner(store: Store) -> None:
    store.enqueue_deliveries(
        [
            delivery("a1", "w1", "alarm-A"),
            delivery("b1", "w1", "alarm-B"),
            delivery("a2", "w1", "alarm-A"),
            delivery("c1", "w2", "alarm-A"),
            delivery("late", "w2", "alarm-L", next_attempt_at=T0 + 1),
        ]
    )
    claimed = store.claim_deliveries(T0, "A", LEASE, 10)
    assert ids(claimed) == ["a1", "b1", "c1"]  # heads only, oldest first
    seqs = {d["delivery_id"]: d["seq"] for d in store.list_deliveries(limit=10)}
    assert claimed[0] == {
        **delivery("a1", "w1", "alarm-A"),
        "seq": seqs["a1"],
        "lease_owner": "A",
        "lease_until": T0 + LEASE,
    }
    # under lease: neither due nor claimable, by another owner or by the same one
    assert store.claim_deliveries(T0, "B", LEASE, 10) == []
    assert store.claim_deliveries(T0 + LEASE - 1, "A", LEASE, 10) == [
        {**delivery("late", "w2", "alarm-L", next_attempt_at=T0 + 1), "seq": seqs["late"],
         "lease_owner": "A", "lease_until": T0 + 2 * LEASE - 1}
    ]  # fmt: skip
    assert store.due_deliveries(T0 + LEASE - 1) == []
    # a2 waits behind a1 although a1 is claimed: order per alarm and receiver holds
    assert "a2" not in ids(store.due_deliveries(T0 + LEASE))
    # the lease is not part of the stored document
    assert all("lease_owner" not in d for d in store.list_deliveries(limit=10))


def test_an_expired_lease_can_be_claimed_again(store: Store) -> None:
    store.enqueue_deliveries([delivery("d1", "w1", "k"), delivery("d2", "w1", "k")])
    assert ids(store.claim_deliveries(T0, "dead-sender", LEASE, 10)) == ["d1"]
    assert store.claim_deliveries(T0 + LEASE - 1, "B", LEASE, 10) == []
    (again,) = store.claim_deliveries(T0 + LEASE, "B", LEASE, 10)
    assert again["delivery_id"] == "d1" and again["lease_owner"] == "B"
    assert again["lease_until"] == T0 + 2 * LEASE
    done = {**again, "status": "delivered", "attempts": 1, "delivered_at": T0 + LEASE}
    assert store.complete_delivery(done, "B") is True
    (nxt,) = store.claim_deliveries(T0 + LEASE, "C", LEASE, 10)
    assert nxt["delivery_id"] == "d2"  # its predecessor is delivered: now the head


def test_complete_delivery_is_compare_and_set_on_the_owner(store: Store) -> None:
    store.enqueue_deliveries([delivery("d1", "w1", "k")])
    (stale,) = store.claim_deliveries(T0, "A", LEASE, 10)
    (fresh,) = store.claim_deliveries(T0 + LEASE, "B", LEASE, 10)
    # A's lease expired and B holds the delivery: A's late outcome does not overwrite
    assert store.complete_delivery({**stale, "status": "dead", "attempts": 1}, "A") is False
    [row] = store.list_deliveries()
    assert row["status"] == "pending" and row["attempts"] == 0
    assert store.claim_deliveries(T0 + LEASE, "C", LEASE, 10) == []  # B still holds it
    retry = {**fresh, "attempts": 1, "last_error": "HTTP 500", "next_attempt_at": T0 + 2 * LEASE}
    assert store.complete_delivery(retry, "B") is True
    [row] = store.list_deliveries()
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "HTTP 500")
    assert "lease_owner" not in row and "lease_until" not in row
    # completing clears the lease: a second completion by B finds nothing to complete
    assert store.complete_delivery({**fresh, "status": "delivered"}, "B") is False
    # and the rescheduled delivery is anyone's at its next attempt time
    assert store.claim_deliveries(T0 + 2 * LEASE - 1, "C", LEASE, 10) == []
    assert ids(store.claim_deliveries(T0 + 2 * LEASE, "C", LEASE, 10)) == ["d1"]
    with pytest.raises(NotFound):
        store.complete_delivery({"delivery_id": "ghost", "status": "dead"}, "C")


def test_claim_limit_skip_and_release(store: Store) -> None:
    store.enqueue_deliveries([delivery(f"d{i}", f"w{i % 2}", f"k{i}") for i in range(6)])
    assert ids(store.claim_deliveries(T0, "A", LEASE, 2)) == ["d0", "d1"]
    assert ids(store.claim_deliveries(T0, "A", LEASE, 10, skip_webhooks=["w0"])) == [
        "d3",
        "d5",
    ]
    assert store.claim_deliveries(T0, "A", LEASE, 0) == []
    # only the owner's leases are given back, and they are claimable at once
    assert store.release_deliveries(["d0", "d1", "d3"], "B") == 0
    assert store.release_deliveries(["d0", "d3", "ghost"], "A") == 2
    assert store.release_deliveries([], "A") == 0
    assert ids(store.claim_deliveries(T0, "B", LEASE, 10)) == ["d0", "d2", "d3", "d4"]


def test_deliveries_queued_before_leases_existed_are_claimable_after_upgrade(
    db_url: str,
) -> None:
    """A database at schema 1 (no lease columns) with a pending delivery, then migrated."""
    (initial, *_) = _migrations(db_url)
    insert = (
        "INSERT INTO deliveries (delivery_id, webhook_id, order_key, shipper, status, "
        "next_attempt_at, doc) VALUES ('old', 'w1', 'k', 'pg', 'pending', 0, "
        """'{"delivery_id": "old", "webhook_id": "w1"}')"""
    )
    record = "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            for statement in initial.statements:
                conn.execute(statement)
            conn.execute(record + "applied_at TEXT NOT NULL)")
            conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 'then')")
            conn.execute(insert)
    else:
        with psycopg.connect(db_url) as conn:
            for statement in initial.statements:
                conn.execute(statement)
            conn.execute(record + "applied_at timestamptz NOT NULL DEFAULT now())")
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'initial')")
            conn.execute(insert)
    store = open_store(db_url)
    try:
        assert _schema_versions(db_url) == [m.version for m in _migrations(db_url)]
        assert ids(store.claim_deliveries(T0, "A", LEASE, 10)) == ["old"]
        assert store.claim_deliveries(T0, "B", LEASE, 10) == []
    finally:
        store.close()


def test_concurrent_claims_from_two_stores_hand_out_each_delivery_once(db_url: str) -> None:
    """Two stores on one database stand for two processes; two threads claim on each."""
    first, second = open_store(db_url), open_store(db_url)
    try:
        first.enqueue_deliveries(
            [delivery(f"d{i:03}", f"w{i % 3}", f"k{i % 40}") for i in range(240)]
        )
        claims: dict[str, list[str]] = {}

        def sender(owner: str, store: Store) -> None:
            got = claims.setdefault(owner, [])
            idle = 0
            while idle < 20:
                batch = store.claim_deliveries(T0, owner, LEASE, 7)
                idle = 0 if batch else idle + 1
                for d in batch:
                    got.append(d["delivery_id"])
                    assert store.complete_delivery({**d, "status": "delivered"}, owner)

        with ThreadPoolExecutor(4) as pool:
            done = [
                pool.submit(sender, f"{name}-{n}", store)
                for name, store in (("one", first), ("two", second))
                for n in range(2)
            ]
            for future in done:
                future.result()
        every = [i for got in claims.values() for i in got]
        assert sorted(every) == [f"d{i:03}" for i in range(240)]  # each exactly once
        assert sum(1 for got in claims.values() if got) >= 2  # really shared
        assert first.list_deliveries(status="pending") == []
    finally:
        first.close()
        second.close()


def test_list_deliveries_filters(store: Store) -> None:
    store.enqueue_deliveries(
        [
            delivery("d1", "w1", "k", shipper="pg"),
            delivery("d2", "w2", "k", shipper="acme"),
            delivery("d3", "w1", "k", shipper="pg", status="dead"),
        ]
    )
    assert [d["delivery_id"] for d in store.list_deliveries()] == ["d3", "d2", "d1"]
    assert [d["delivery_id"] for d in store.list_deliveries(limit=1)] == ["d3"]
    assert [d["delivery_id"] for d in store.list_deliveries(shipper="pg")] == ["d3", "d1"]
    assert [d["delivery_id"] for d in store.list_deliveries(status="pending")] == ["d2", "d1"]
    assert [d["delivery_id"] for d in store.list_deliveries("pg", "dead")] == ["d3"]


# -- dead letters ----------------------------------------------------------------------------
def test_dead_letters_keep_binary_payloads(store: Store) -> None:
    every_byte = bytes(range(256)) * 3
    letters = [
        DeadLetter("devices/gps-1/position", b"{not json", T0, DeadLetterReason.BAD_JSON, "x"),
        DeadLetter(
            "devices/gps-1/position",
            every_byte,
            T0 + 1,
            DeadLetterReason.SCHEMA,
            "nul \x00 and \udcff in detail",
            "gps-1",
        ),
        DeadLetter("devices/ghost/lock", b"", T0 + 2, DeadLetterReason.UNKNOWN_DEVICE, "", "ghost"),
    ]
    store.insert_dead_letters(letters)
    got = store.dead_letters()
    assert [d["received_at"] for d in got] == [T0 + 2, T0 + 1, T0]  # newest first
    assert got[1]["payload"] == every_byte and isinstance(got[1]["payload"], bytes)
    assert got[1]["detail"] == "nul \ufffd and \ufffd in detail"
    assert got[1]["reason"] == "schema" and got[1]["device_id"] == "gps-1"
    assert got[1]["topic"] == "devices/gps-1/position"
    assert got[2]["payload"] == b"{not json" and got[2]["device_id"] is None
    assert got[0]["payload"] == b""
    assert len({d["id"] for d in got}) == 3
    assert [d["received_at"] for d in store.dead_letters(reason="schema")] == [T0 + 1]
    assert [d["received_at"] for d in store.dead_letters(device_id="ghost")] == [T0 + 2]
    assert [d["received_at"] for d in store.dead_letters(since_ms=T0 + 1)] == [T0 + 2, T0 + 1]
    assert len(store.dead_letters(limit=2)) == 2
    assert store.count_telemetry()["dead_letters"] == 3


# -- telemetry -------------------------------------------------------------------------------
def test_fixes_round_trip(store: Store) -> None:
    full = Fix(
        "gps-1",
        T0,
        31.2304,
        121.4737,
        speed_kmh=62.5,
        heading_deg=270.0,
        hdop=0.9,
        sats=11,
        battery_pct=88.0,
        seq=1042,
        received_at=T0 + 7,
        extra={"odometer_km": 1234.5, "driver": "张三", "tags": ["a", None]},
    )
    bare = Fix("gps-1", T0 + 1000, -33.9, 151.2, received_at=T0 + 8)
    nan = Fix("gps-1", T0 + 2000, 0.0, 0.0, speed_kmh=math.nan, hdop=math.nan, seq=0)
    assert store.insert_fixes([full, bare, nan]).tolist() == [True, True, True]
    got = store.fixes(["gps-1"])
    assert got == [full, bare, Fix("gps-1", T0 + 2000, 0.0, 0.0, seq=0)]
    assert got[0].extra == full.extra and got[1].extra is None and got[2].speed_kmh is None
    assert isinstance(got[0].sats, int) and isinstance(got[0].ts, int)


def test_duplicate_fixes_are_stored_once(store: Store) -> None:
    a = fix("gps-1", T0, 1)
    b = fix("gps-1", T0, None)
    c = fix("gps-1", T0, 2)
    d = fix("gps-2", T0, 1)
    assert store.insert_fixes([a, b, c, d]).tolist() == [True, True, True, True]
    # across batches: the same (device, ts, seq) and the same (device, ts) without seq
    again = [fix("gps-1", T0, 1, lat=1.0), fix("gps-1", T0, None, lat=1.0)]
    new = fix("gps-1", T0 + 1, None)
    assert store.insert_fixes([*again, new]).tolist() == [False, False, True]
    # within a batch: first wins
    first = fix("gps-3", T0, None, lat=10.0)
    second = fix("gps-3", T0, None, lat=20.0)
    third = fix("gps-3", T0, 5, lat=30.0)
    fourth = fix("gps-3", T0, 5, lat=40.0)
    assert store.insert_fixes([first, second, third, fourth, a]).tolist() == [
        True,
        False,
        True,
        False,
        False,
    ]
    assert store.count_telemetry()["fixes"] == 7
    assert [(f.seq, f.lat) for f in store.fixes(["gps-3"])] == [(None, 10.0), (5, 30.0)]
    assert [f.lat for f in store.fixes(["gps-1"], T0, T0)] == [31.2304, 31.2304, 31.2304]


def test_a_batch_of_only_known_fixes(store: Store) -> None:
    batch = [fix(f"d{i % 7}", T0 + i, i % 3 or None) for i in range(500)]
    assert store.insert_fixes(batch).all()
    assert not store.insert_fixes(batch).any()
    assert not store.insert_fixes(batch[::-1]).any()
    assert store.count_telemetry()["fixes"] == 500


def test_empty_batches(store: Store) -> None:
    assert store.insert_fixes([]).shape == (0,)
    assert store.insert_lock_events([]).dtype == np.bool_
    store.insert_dead_letters([])
    store.enqueue_deliveries([])
    store.flag_fixes([], "gps_jump")
    assert store.fixes([]) == [] and store.lock_events([]) == []


def test_unstorable_fix_raises_store_error_and_stores_nothing(store: Store) -> None:
    good = fix("gps-1", T0, 1)
    for bad in (
        fix("gps-1", T0 + 1, 2**64),
        fix("gps-1", T0 + 1, extra={"x": object()}),
        fix("gps-1", T0 + 1, lat=math.nan),
    ):
        with pytest.raises(StoreError):
            store.insert_fixes([good, bad])
    assert store.count_telemetry()["fixes"] == 0


def test_flag_fixes(store: Store) -> None:
    jump = fix("gps-1", T0 + 1000, 2, extra={"src": "gnss"})
    batch = [fix("gps-1", T0, 1), jump, fix("gps-1", T0 + 2000, None)]
    store.insert_fixes(batch)
    store.flag_fixes([("gps-1", T0 + 1000, 2), ("gps-1", T0 + 2000, None)], "gps_jump")
    store.flag_fixes([("gps-1", T0 + 9999, None), ("nope", T0, 1)], "gps_jump")  # unknown: ignored
    got = store.fixes(["gps-1"])
    assert got[0].extra is None
    assert got[1].extra == {"src": "gnss", "_flag": "gps_jump"}
    assert got[2].extra == {"_flag": "gps_jump"}
    assert got == batch  # extra is not part of equality; the data is unchanged
    store.flag_fixes([("gps-1", T0, 1)], "null_island")
    assert store.last_fix("gps-1").extra == {"_flag": "gps_jump"}
    assert store.fixes(["gps-1"], until_ms=T0)[0].extra == {"_flag": "null_island"}


def test_fixes_time_window_order_and_limit(store: Store) -> None:
    batch = [
        fix("b", T0 + 20),
        fix("a", T0 + 20),
        fix("a", T0 + 10, 7),
        fix("c", T0 + 5),
        fix("a", T0 + 30),
        fix("b", T0),
        fix("a", T0 + 20, 3),
    ]
    store.insert_fixes(batch)
    got = store.fixes(["a", "b"])
    assert [(f.ts - T0, f.device_id, f.seq) for f in got] == [
        (0, "b", None),
        (10, "a", 7),
        (20, "a", None),
        (20, "a", 3),
        (20, "b", None),
        (30, "a", None),
    ]
    window = store.fixes(["a", "b", "c"], since_ms=T0 + 5, until_ms=T0 + 20)  # inclusive
    assert [(f.ts - T0, f.device_id) for f in window] == [
        (5, "c"),
        (10, "a"),
        (20, "a"),
        (20, "a"),
        (20, "b"),
    ]
    assert [f.ts - T0 for f in store.fixes(["a"], since_ms=T0 + 20)] == [20, 20, 30]
    assert [f.ts - T0 for f in store.fixes(["a", "b"], limit=2)] == [0, 10]
    assert store.fixes(["zzz"]) == []
    many = [f"dev-{i}" for i in range(2000)] + ["c"]  # long device lists are fine
    assert [f.device_id for f in store.fixes(many)] == ["c"]


def test_last_fix(store: Store) -> None:
    assert store.last_fix("gps-1") is None
    store.insert_fixes([fix("gps-1", T0 + 50, 1), fix("gps-1", T0 + 90), fix("gps-2", T0 + 99)])
    store.insert_fixes([fix("gps-1", T0 + 10, 9), fix("gps-1", T0 + 90, 4)])
    last = store.last_fix("gps-1")
    assert (last.ts, last.seq) == (T0 + 90, 4)


def test_lock_events_round_trip_and_duplicates(store: Store) -> None:
    full = LockEvent(
        "lock-1",
        T0,
        LockEventType.UNLOCKED,
        method=Method.RFID,
        lat=31.23,
        lon=121.47,
        battery_pct=87.0,
        seq=1043,
        received_at=T0 + 3,
        extra={"card": "0xBEEF"},
    )
    bare = event("lock-1", T0 + 5, "heartbeat")
    tamper = event("lock-2", T0 + 1, "tamper", seq=1)
    assert store.insert_lock_events([full, bare, tamper]).tolist() == [True, True, True]
    again = [
        event("lock-1", T0 + 5, "tamper"),  # same device and ts without seq: a duplicate
        event("lock-1", T0, "unlocked", seq=1043),
        event("lock-1", T0, "locked", seq=1044),
        event("lock-1", T0, "locked", seq=1044),
    ]
    assert store.insert_lock_events(again).tolist() == [False, False, True, False]
    assert store.count_telemetry()["lock_events"] == 4
    got = store.lock_events(["lock-1", "lock-2"])
    assert got == [full, again[2], tamper, bare]
    assert got[0].extra == {"card": "0xBEEF"} and got[0].method is Method.RFID
    assert got[3].event is LockEventType.HEARTBEAT and got[3].method is None
    assert got[3].lat is None and got[3].seq is None
    assert store.lock_events(["lock-1"], since_ms=T0 + 1) == [bare]
    assert store.lock_events(["lock-1"], until_ms=T0) == [full, again[2]]
    assert store.lock_events(["lock-1", "lock-2"], limit=1) == [full]


def test_drop_telemetry_before(store: Store) -> None:
    # spread over several days so that whole chunks and a straddling one are involved
    fixes = [fix("gps-1", T0 + k * DAY // 2, k) for k in range(10)]
    events = [event("lock-1", T0 + k * DAY // 2, seq=k) for k in range(10)]
    store.insert_fixes(fixes)
    store.insert_lock_events(events)
    store.insert_dead_letters(
        [DeadLetter("t", b"x", T0 - DAY, DeadLetterReason.BAD_JSON, "old", None)]
    )
    cutoff = T0 + 3 * DAY + 1
    store.drop_telemetry_before(cutoff)
    assert [f.seq for f in store.fixes(["gps-1"])] == [7, 8, 9]
    assert [e.seq for e in store.lock_events(["lock-1"])] == [7, 8, 9]
    assert store.count_telemetry() == {"fixes": 3, "lock_events": 3, "dead_letters": 1}
    store.drop_telemetry_before(T0 + 4 * DAY)  # a cutoff on a row keeps it
    assert [f.seq for f in store.fixes(["gps-1"])] == [8, 9]
    assert store.insert_fixes(fixes[:2]).tolist() == [True, True]  # gone means new again


def test_threads_writing_overlapping_batches(store: Store) -> None:
    def batch(t: int) -> list[Fix]:
        # neighbouring threads overlap by half their keys
        return [fix(f"dev-{i % 13}", T0 + i, i % 4 or None) for i in range(t * 150, t * 150 + 300)]

    barrier = threading.Barrier(6)

    def write(t: int) -> int:
        barrier.wait()
        new = 0
        for _ in range(2):
            new += int(store.insert_fixes(batch(t)).sum())
            store.fixes([f"dev-{t}"], limit=5)
        store.insert_dead_letters([DeadLetter("t", b"p", T0, DeadLetterReason.SCHEMA, str(t))])
        return new

    with ThreadPoolExecutor(6) as pool:
        news = list(pool.map(write, range(6)))
    distinct = {k for t in range(6) for k in keys(batch(t))}
    assert sum(news) == len(distinct) == store.count_telemetry()["fixes"]
    assert store.count_telemetry()["dead_letters"] == 6


def test_writers_in_opposite_orders_both_succeed(store: Store) -> None:
    # On PostgreSQL the two COPYs can deadlock on each other's new keys; the store retries.
    batch = [fix(f"dev-{i % 50}", T0 + i, i) for i in range(20_000)]
    store.insert_fixes([fix("warm-up", T0)])  # the chunk exists: the writers do not queue
    barrier = threading.Barrier(2)

    def write(order: int) -> int:
        barrier.wait()
        return int(store.insert_fixes(batch[::order]).sum())

    with ThreadPoolExecutor(2) as pool:
        news = list(pool.map(write, (1, -1)))
    assert sum(news) == len(batch) == store.count_telemetry()["fixes"] - 1


key_strategy = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(-2, 2)),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batches=st.lists(st.lists(key_strategy, max_size=25), min_size=1, max_size=4))
def test_random_batches_store_each_key_once(store: Store, batches: list) -> None:
    ns = f"h{next(_ids)}-"  # examples share the store: each uses its own devices
    seen: set[tuple] = set()
    for k, batch in enumerate(batches):
        fixes = [
            fix(ns + d, T0 + ts, seq, lat=float(k), lon=float(i))
            for i, (d, ts, seq) in enumerate(batch)
        ]
        mask = store.insert_fixes(fixes)
        expected = []
        for key in keys(fixes):
            expected.append(key not in seen)
            seen.add(key)
        assert mask.tolist() == expected
    devices = [ns + d for d in ("a", "b", "c")]
    stored = store.fixes(devices)
    assert sorted(keys(stored), key=repr) == sorted(seen, key=repr)
    assert len(stored) == len(seen)


# -- PostgreSQL specifics ----------------------------------------------------------------------
@pytest.mark.services
def test_postgres_telemetry_tables_are_hypertables(pg_url: str) -> None:
    open_store(pg_url.replace("postgresql://", "postgres://", 1)).close()  # both schemes
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT hypertable_name, column_type::text, integer_interval "
            "FROM timescaledb_information.dimensions ORDER BY hypertable_name"
        ).fetchall()
        license_ = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]
    assert rows == [("fixes", "bigint", 86_400_000), ("lock_events", "bigint", 7 * 86_400_000)]
    assert license_ in {"apache", "timescale"}


def test_copy_block_matches_psycopg_rows() -> None:
    cols = [
        pgcopy.int64_column([1, -2]),
        pgcopy.float64_column([1.5, None]),
        pgcopy.text_column(["é", None]),
        pgcopy.optional_int64_column([None, 7]),
        pgcopy.BytesColumn([b"", b"{}"]),
    ]
    block = pgcopy.copy_block(2, cols).tobytes()
    assert block.startswith(pgcopy.SIGNATURE) and block.endswith(pgcopy.TRAILER)
    body = block[len(pgcopy.SIGNATURE) : -len(pgcopy.TRAILER)]
    be = "big"
    row1 = (
        (5).to_bytes(2, be)
        + (8).to_bytes(4, be)
        + (1).to_bytes(8, be, signed=True)
        + (8).to_bytes(4, be)
        + np.array([1.5], ">f8").tobytes()
        + (2).to_bytes(4, be)
        + "é".encode()
        + (-1).to_bytes(4, be, signed=True)
        + (0).to_bytes(4, be)
    )
    row2 = (
        (5).to_bytes(2, be)
        + (8).to_bytes(4, be)
        + (-2).to_bytes(8, be, signed=True)
        + (-1).to_bytes(4, be, signed=True)
        + (-1).to_bytes(4, be, signed=True)
        + (8).to_bytes(4, be)
        + (7).to_bytes(8, be, signed=True)
        + (2).to_bytes(4, be)
        + b"{}"
    )
    assert body == row1 + row2


# -- units of work ---------------------------------------------------------------------------
def test_unit_of_work_commits_once_at_the_end(db_url: str) -> None:
    writer, reader = open_store(db_url), open_store(db_url)
    try:
        with writer.unit_of_work():
            writer.put_shipper({"shipper": "pg"})
            writer.insert_alarm(alarm("a1"))
            assert writer.get_shipper("pg") == {"shipper": "pg"}  # its own writes: seen
            if isinstance(writer, PostgresStore):
                # another connection sees nothing before the commit (SQLite's single
                # connection per store makes a second reader wait instead)
                assert reader.get_shipper("pg") is None
        assert reader.get_shipper("pg") == {"shipper": "pg"}
        assert reader.get_alarm("a1")["alarm_id"] == "a1"
    finally:
        writer.close()
        reader.close()


def test_unit_of_work_rolls_back_when_it_raises(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work():
        store.put_shipper({"shipper": "pg"})
        raise RuntimeError("boom")
    assert store.get_shipper("pg") is None
    store.put_shipper({"shipper": "acme"})  # the store is usable afterwards
    assert store.get_shipper("acme") == {"shipper": "acme"}


def test_a_failed_call_or_nested_unit_leaves_the_rest_of_the_unit(store: Store) -> None:
    store.insert_alarm(alarm("a1"))
    with store.unit_of_work():
        store.put_shipper({"shipper": "pg"})
        with pytest.raises(Conflict):
            store.insert_alarm(alarm("a1"))  # a conflict the caller expects and skips
        with pytest.raises(RuntimeError), store.unit_of_work():
            store.put_shipper({"shipper": "acme"})
            raise RuntimeError("one bad event")
        with store.unit_of_work():
            store.insert_alarm(alarm("a2"))
    assert store.get_shipper("pg") == {"shipper": "pg"}
    assert store.get_shipper("acme") is None
    assert store.get_alarm("a2") is not None


def test_engine_states_are_upserted_deleted_and_kept_with_their_unit_of_work(
    store: Store,
) -> None:
    store.save_engine_states({"T1": b'{"v": 1}', "T2": b"\x00\xffbinary"}, at_ms=5)
    assert store.engine_states() == {"T1": (b'{"v": 1}', 5), "T2": (b"\x00\xffbinary", 5)}
    assert store.engine_state("T2") == (b"\x00\xffbinary", 5)
    store.save_engine_states({"T1": b'{"v": 2}'}, ["T2"], at_ms=6)
    assert store.engine_states() == {"T1": (b'{"v": 2}', 6)}
    assert store.engine_state("T1") == (b'{"v": 2}', 6)
    assert store.engine_state("T2") is None
    # A checkpoint is written with the batch it covers: a rolled-back unit keeps nothing.
    with pytest.raises(RuntimeError), store.unit_of_work():
        store.save_engine_states({"T1": b'{"v": 3}', "T3": b"{}"})
        raise RuntimeError("the batch failed")
    assert store.engine_states() == {"T1": (b'{"v": 2}', 6)}
    store.save_engine_states({}, ["T1", "unknown"])
    assert store.engine_states() == {}


# -- reads on behalf of a trip (tenancy through shared devices) -------------------------------
def _trip(trip_id: str, shipper: str, devices: list[str], **kw: object) -> dict:
    return {"trip_id": trip_id, "shipper": shipper, "devices": devices, "status": "planned", **kw}


def test_trip_reads_keep_a_shared_devices_other_trips_out(store: Store) -> None:
    """acme's trip used ``gps-shared`` first, then pg's: each trip reads only its own span,
    whatever window is asked for, and the device's later trip takes its data over."""
    hour = 3_600_000
    acme = _trip(
        "ACME-1",
        "acme",
        ["gps-shared"],
        planned_start=T0,
        status="completed",
        activated_at=T0,
        completed_at=T0 + 2 * hour,
    )
    # planned before acme's trip ended, activated after: its span starts at activation
    pg = _trip(
        "PG-1",
        "pg",
        ["gps-shared", "pg-lock"],
        planned_start=T0 + hour,
        status="active",
        activated_at=T0 + 3 * hour,
    )
    store.put_trip(acme)
    store.put_trip(pg)
    store.insert_fixes([fix("gps-shared", T0 + i * 600_000, i) for i in range(0, 31)])
    store.insert_lock_events(
        [event("gps-shared", T0 + hour, "forced_open"), event("pg-lock", T0 + 4 * hour)]
    )
    pg_fixes = store.trip_fixes(pg)
    assert pg_fixes and min(f.ts for f in pg_fixes) == T0 + 3 * hour
    assert [e.ts for e in store.trip_lock_events(pg)] == [T0 + 4 * hour]
    # an explicit window only narrows
    assert store.trip_fixes(pg, since_ms=0) == pg_fixes
    assert [f.ts for f in store.trip_fixes(pg, T0 + 4 * hour, T0 + 4 * hour)] == [T0 + 4 * hour]
    acme_fixes = store.trip_fixes(acme, since_ms=0, until_ms=T0 + 100 * hour)
    assert [f.ts for f in acme_fixes] == [T0 + i * 600_000 for i in range(13)]
    assert [e.event.value for e in store.trip_lock_events(acme)] == ["forced_open"]
    assert store.trip_fixes(acme, limit=3) == acme_fixes[:3]


def test_trip_reads_of_overlapping_trips_follow_the_later_activation(store: Store) -> None:
    """An earlier trip still running loses a shared device's data to the later one from the
    later one's activation (the engine's choice) until that trip ends."""
    hour = 3_600_000
    store.put_trip(_trip("A", "acme", ["d1"], status="active", activated_at=T0))
    store.put_trip(
        _trip(
            "B",
            "pg",
            ["d1"],
            status="completed",
            activated_at=T0 + hour,
            completed_at=T0 + 2 * hour,
        )
    )
    store.insert_fixes([fix("d1", T0 + i * hour // 2) for i in range(7)])
    a = store.get_trip("A")
    b = store.get_trip("B")
    assert a is not None and b is not None
    assert [f.ts for f in store.trip_fixes(a)] == [
        T0,
        T0 + hour // 2,
        T0 + 5 * hour // 2,
        T0 + 3 * hour,
    ]
    assert [f.ts for f in store.trip_fixes(b)] == [T0 + hour, T0 + 3 * hour // 2, T0 + 2 * hour]
    # a trip never activated and without a planned start has no telemetry
    store.put_trip(_trip("C", "pg", ["d1"]))
    c = store.get_trip("C")
    assert c is not None and store.trip_fixes(c) == []
