"""Every statement both stores run, written once, and the dialect object for what differs.

Statements use named parameters (``:name``) and take a ``dict`` of values. SQLite's driver
reads that style as it is; the PostgreSQL session rewrites it to ``%(name)s`` for psycopg
(``to_pyformat``, cached). The places where the two databases genuinely differ are the few
members of ``Dialect``: how a list travels as one parameter (a JSON text read with
``json_each`` on SQLite, an array with ``ANY``/``unnest`` on PostgreSQL), row locks, and
the due-alarms query (each written for its own partial indexes). Telemetry writes (COPY,
``executemany``), retention by chunk and migrations live with their store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from telemetry.store import _rows as R

Params = dict[str, Any]

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``:name`` as ``%(name)s`` (and a literal ``%`` as ``%%``); ``::type`` casts stay."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one database spells differently; everything else in this module is shared."""

    name: str
    #: ``{column}`` / ``{param}``: the column is one of the values of the list parameter.
    in_list_sql: str
    #: ``{param}``: the list parameter as a table of one column ``value``.
    each_sql: str
    #: Lists travel as JSON text (``json_each``) rather than as arrays.
    list_as_json: bool
    #: Appended to a read that a transaction then writes back.
    for_update: str
    #: Appended to the read of a claim: rows another transaction is claiming are passed over
    #: instead of waited for.
    skip_locked: str
    #: Open alarms past their ack deadline and unresolved ones past their resolve deadline,
    #: not yet escalated for it; parameter ``now``.
    alarms_due_sql: str
    #: ``{key}`` / ``{value}``: the rows as one JSON object (text), key → value.
    json_object_sql: str

    def in_list(self, column: str, param: str) -> str:
        return self.in_list_sql.format(column=column, param=param)

    def each(self, param: str) -> str:
        return self.each_sql.format(param=param)

    def list_value(self, values: Sequence[str]) -> Any:
        return R.dumps(list(values)) if self.list_as_json else list(values)


SQLITE_DIALECT = Dialect(
    name="sqlite",
    # Device lists of any length as one JSON parameter (no limit on bound variables).
    in_list_sql="{column} IN (SELECT value FROM json_each(:{param}))",
    each_sql="json_each(:{param})",
    list_as_json=True,
    for_update="",  # BEGIN IMMEDIATE already holds the database's write lock
    skip_locked="",  # and lets one claim run at a time
    # A UNION of the two deadlines, each served by its partial index (SQLite scans the whole
    # table for the OR of them); UNION also drops an alarm due on both counts.
    alarms_due_sql=(
        "SELECT doc, raised_at, alarm_id FROM alarms "
        "WHERE status = 'open' AND ack_escalated = 0 AND ack_due <= :now "
        "UNION "
        "SELECT doc, raised_at, alarm_id FROM alarms "
        "WHERE status <> 'resolved' AND resolve_escalated = 0 AND resolve_due <= :now "
        "ORDER BY 2, 3"
    ),
    json_object_sql="json_group_object({key}, {value})",
)

POSTGRES_DIALECT = Dialect(
    name="postgresql",
    in_list_sql="{column} = ANY(CAST(:{param} AS text[]))",
    each_sql="unnest(CAST(:{param} AS text[])) AS t(value)",
    list_as_json=False,
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    alarms_due_sql=(
        "SELECT doc FROM alarms WHERE status <> 'resolved' AND ("
        "(status = 'open' AND NOT ack_escalated AND ack_due <= :now) "
        "OR (NOT resolve_escalated AND resolve_due <= :now)) "
        "ORDER BY raised_at, alarm_id"
    ),
    json_object_sql="CAST(json_object_agg({key}, {value}) AS text)",
)


# -- building blocks -----------------------------------------------------------------------
def upsert(table: str, key: str, columns: Sequence[str]) -> str:
    """Insert or replace a document row: ``key``, the indexed ``columns``, then ``doc``."""
    names = (key, *columns, "doc")
    updates = ", ".join(f"{c} = excluded.{c}" for c in names[1:])
    return (
        f"INSERT INTO {table} ({', '.join(names)}) "
        f"VALUES ({', '.join(':' + c for c in names)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


def insert(table: str, columns: Sequence[str], tail: str = "") -> str:
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}){tail}"
    )


def equal(**filters: Any) -> tuple[list[str], Params]:
    """``column = :column`` for each filter that is not None."""
    params = {column: value for column, value in filters.items() if value is not None}
    return [f"{column} = :{column}" for column in params], params


def where(clauses: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def select_docs(table: str, order: str, **filters: Any) -> tuple[str, Params]:
    """The documents of ``table`` that match the equality filters, in ``order``."""
    clauses, params = equal(**filters)
    return f"SELECT doc FROM {table}{where(clauses)} ORDER BY {order}", params


def get_doc(table: str, key: str) -> str:
    return f"SELECT doc FROM {table} WHERE {key} = :key"


# -- telemetry reads -----------------------------------------------------------------------
def _read_columns(columns: Sequence[str]) -> str:
    # json as text on PostgreSQL (a no-op on SQLite): the row readers parse both alike.
    return ", ".join(f"CAST({c} AS TEXT)" if c == "extra" else c for c in columns)


FIX_SELECT = f"SELECT {_read_columns(R.FIX_READ_COLUMNS)} FROM fixes"
LOCK_EVENT_SELECT = f"SELECT {_read_columns(R.LOCK_EVENT_COLUMNS)} FROM lock_events"
LAST_FIX = f"{FIX_SELECT} WHERE device_id = :device_id ORDER BY ts DESC, seq DESC LIMIT 1"
COUNT_TELEMETRY = (
    "SELECT (SELECT count(*) FROM fixes), (SELECT count(*) FROM lock_events), "
    "(SELECT count(*) FROM dead_letters)"
)
FLAG_FIX = "UPDATE fixes SET flag = :flag WHERE device_id = :device_id AND ts = :ts AND seq = :seq"
TELEMETRY_TABLES = ("fixes", "lock_events")


def delete_telemetry(table: str) -> str:
    return f"DELETE FROM {table} WHERE ts < :cutoff"


def telemetry_query(
    dialect: Dialect,
    select: str,
    device_ids: Sequence[str],
    since_ms: int | None,
    until_ms: int | None,
    limit: int | None,
    received_since: int | None = None,
) -> tuple[str, Params]:
    """Rows of these devices with ``since_ms <= ts <= until_ms`` (and received at or after
    ``received_since``), by ``(ts, device_id)``."""
    sql = f"{select} WHERE {dialect.in_list('device_id', 'devices')}"
    params: Params = {"devices": dialect.list_value(device_ids)}
    if received_since is not None:
        sql += " AND received_at >= :received_since"
        params["received_since"] = int(received_since)
    if since_ms is not None:
        sql += " AND ts >= :since"
        params["since"] = int(since_ms)
    if until_ms is not None:
        sql += " AND ts <= :until"
        params["until"] = int(until_ms)
    sql += " ORDER BY ts, device_id, seq"
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = int(limit)
    return sql, params


# -- dead letters --------------------------------------------------------------------------
DEAD_LETTER_COLUMNS = ("topic", "device_id", "received_at", "reason", "detail", "payload")
INSERT_DEAD_LETTER = insert("dead_letters", DEAD_LETTER_COLUMNS)
DEAD_LETTER_SELECT = f"SELECT id, {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters"
DEAD_LETTER_ORDER = " ORDER BY received_at DESC, id DESC LIMIT :limit"

# -- documents -----------------------------------------------------------------------------
PUT_DEVICE = upsert("devices", "device_id", ("shipper",))
PUT_SHIPPER = upsert("shippers", "shipper", ())
PUT_GEOFENCE = upsert("geofences", "geofence_id", ("kind", "shipper"))
PUT_TRIP = upsert("trips", "trip_id", ("shipper", "status", "planned_start"))
PUT_API_KEY = upsert("api_keys", "key_hash", ("role", "shipper", "key_id"))
PUT_CARRIER = upsert("carriers", "carrier_id", ())
PUT_WEBHOOK = upsert("webhooks", "webhook_id", ("shipper",))
PUT_ENGINE_STATE = (
    "INSERT INTO engine_state (trip_id, state, updated_at) VALUES (:trip_id, :state, :at) "
    "ON CONFLICT (trip_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
)
DELETE_ENGINE_STATE = "DELETE FROM engine_state WHERE trip_id = :trip_id"
ENGINE_STATES = "SELECT trip_id, state, updated_at FROM engine_state"
ENGINE_STATE = "SELECT trip_id, state, updated_at FROM engine_state WHERE trip_id = :trip_id"

DEVICE_IDS = "SELECT device_id FROM devices"
COUNT_API_KEYS = "SELECT count(*) FROM api_keys"
# Use and revocation are columns, not document fields: one small UPDATE each, no rewrite.
API_KEY_SELECT = "SELECT doc, last_used_at, revoked_at FROM api_keys"
GET_API_KEY = f"{API_KEY_SELECT} WHERE key_hash = :key_hash"
REVOKE_API_KEY = (
    "UPDATE api_keys SET revoked_at = :at WHERE key_id = :key_id AND revoked_at IS NULL"
)
API_KEY_EXISTS = "SELECT 1 FROM api_keys WHERE key_id = :key_id"
TOUCH_API_KEY = (
    "UPDATE api_keys SET last_used_at = :at "
    "WHERE key_hash = :key_hash AND (last_used_at IS NULL OR last_used_at < :at)"
)
DELETE_WEBHOOK = "DELETE FROM webhooks WHERE webhook_id = :webhook_id"

TRIP_ORDER = "planned_start DESC NULLS LAST, trip_id DESC"
DELETE_TRIP_DEVICES = "DELETE FROM trip_devices WHERE trip_id = :trip_id"
TRIPS_FOR_DEVICE = (
    "SELECT t.doc FROM trips t JOIN trip_devices d ON d.trip_id = t.trip_id "
    "WHERE d.device_id = :device_id{status} "
    "ORDER BY t.planned_start DESC NULLS LAST, t.trip_id DESC"
)
# The current trip of every device of an active or planned trip, as one JSON object: an
# active one (the newest, as TRIP_ORDER lists them), else the planned one that starts first
# (the last of TRIP_ORDER). Ranked in the database: reading the 22,400 rows of 1,400 trips
# and choosing in Python cost a worker three times the CPU, every few seconds.
CURRENT_DEVICE_TRIPS = (
    "SELECT {aggregate} FROM ("
    "SELECT d.device_id, t.trip_id, row_number() OVER (PARTITION BY d.device_id ORDER BY "
    "CASE WHEN t.status = 'active' THEN 0 ELSE 1 END, "
    "CASE WHEN t.status = 'active' THEN t.planned_start END DESC NULLS LAST, "
    "CASE WHEN t.status = 'active' THEN t.trip_id END DESC, "
    "t.planned_start ASC NULLS FIRST, t.trip_id ASC) AS choice "
    "FROM trips t JOIN trip_devices d ON d.trip_id = t.trip_id "
    "WHERE t.status IN ('active', 'planned')"
    ") ranked WHERE choice = 1"
)
# Appends that name a missing parent insert nothing, which the caller reports as NotFound.
ADD_TRIP_EVENT = (
    "INSERT INTO trip_events (trip_id, kind, ts, event) "
    "SELECT trip_id, :kind, :ts, :event FROM trips WHERE trip_id = :trip_id"
)
TRIP_EVENTS = "SELECT event FROM trip_events WHERE trip_id = :trip_id ORDER BY id"


def insert_trip_devices(dialect: Dialect) -> str:
    return (
        "INSERT INTO trip_devices (trip_id, device_id) "
        f"SELECT :trip_id, value FROM {dialect.each('devices')}"
    )


# -- alarms --------------------------------------------------------------------------------
#: The indexed columns of an alarm, in the order of ``_rows.alarm_columns``.
ALARM_COLUMNS = (
    "status",
    "type",
    "trip_id",
    "shipper",
    "ts",
    "raised_at",
    "ack_due",
    "resolve_due",
    "ack_escalated",
    "resolve_escalated",
    "version",
    "kind",
    "assigned_to",
)
INSERT_ALARM = insert(
    "alarms", ("alarm_id", *ALARM_COLUMNS, "doc"), " ON CONFLICT (alarm_id) DO NOTHING"
)
UPDATE_ALARM = (
    f"UPDATE alarms SET {', '.join(f'{c} = :{c}' for c in (*ALARM_COLUMNS, 'doc'))} "
    "WHERE alarm_id = :alarm_id AND version = :expected_version"
)
ALARM_EXISTS = "SELECT 1 FROM alarms WHERE alarm_id = :alarm_id"
ALARM_ORDER = "raised_at DESC, alarm_id DESC"
#: Alarms not yet resolved, counted by (type, status): one scan of the status index.
ALARM_COUNTS = (
    "SELECT COALESCE(type, ''), status, count(*) FROM alarms "
    "WHERE status IN ('open', 'acknowledged') AND kind = 'alarm' GROUP BY type, status"
)
ADD_ALARM_HISTORY = (
    "INSERT INTO alarm_history (alarm_id, entry) "
    "SELECT alarm_id, :entry FROM alarms WHERE alarm_id = :alarm_id"
)
ALARM_HISTORY = "SELECT entry FROM alarm_history WHERE alarm_id = :alarm_id ORDER BY id"


def alarm_params(alarm_id: str, doc: R.Doc, text: str) -> Params:
    return {
        "alarm_id": alarm_id,
        **dict(zip(ALARM_COLUMNS, R.alarm_columns(doc), strict=True)),
        "doc": text,
    }


# -- webhook deliveries (the outbox) -------------------------------------------------------
DELIVERY_COLUMNS = (
    "delivery_id",
    "webhook_id",
    "order_key",
    "shipper",
    "status",
    "next_attempt_at",
)
# Rows keep the order given: the store's seq orders the deliveries of one order_key.
ENQUEUE_DELIVERY = insert(
    "deliveries", (*DELIVERY_COLUMNS, "doc"), " ON CONFLICT (delivery_id) DO NOTHING"
)
#: Due and claimable: pending, its time has come, not under a live lease, and the oldest
#: pending row of its (webhook, order_key) (events of one alarm go out in order; a row in
#: flight is still pending, so it holds back its successors). Parameter ``now``.
_CLAIMABLE = (
    "d.status = 'pending' AND d.next_attempt_at <= :now AND d.lease_until <= :now "
    "AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.status = 'pending' "
    "AND e.webhook_id = d.webhook_id AND e.order_key = d.order_key AND e.seq < d.seq)"
)
_DUE_ORDER = " ORDER BY d.seq LIMIT :limit"
DUE_DELIVERIES = f"SELECT d.seq, d.doc FROM deliveries d WHERE {_CLAIMABLE}{_DUE_ORDER}"
DELIVERY_DOC = "SELECT doc FROM deliveries WHERE delivery_id = :delivery_id"
DELIVERY_LEASED_DOC = "SELECT doc, lease_owner FROM deliveries WHERE delivery_id = :delivery_id"
UPDATE_DELIVERY = (
    "UPDATE deliveries SET status = :status, next_attempt_at = :next_attempt_at, doc = :doc "
    "WHERE delivery_id = :delivery_id"
)
COMPLETE_DELIVERY = (
    "UPDATE deliveries SET status = :status, next_attempt_at = :next_attempt_at, doc = :doc, "
    "lease_owner = NULL, lease_until = 0 "
    "WHERE delivery_id = :delivery_id AND lease_owner = :owner"
)


def claim_deliveries(dialect: Dialect, skip_webhooks: bool) -> str:
    """Lease up to ``limit`` claimable rows to ``owner`` until ``until``, in one statement:
    rows another claim holds are skipped (PostgreSQL) or waited for (SQLite's single
    writer), and each row comes back to one claimer only."""
    where = _CLAIMABLE
    if skip_webhooks:
        where += f" AND NOT ({dialect.in_list('d.webhook_id', 'skip')})"
    return (
        "UPDATE deliveries SET lease_owner = :owner, lease_until = :until "
        f"WHERE seq IN (SELECT d.seq FROM deliveries d WHERE {where}"
        f"{_DUE_ORDER}{dialect.skip_locked}) "
        "RETURNING seq, doc"
    )


def release_deliveries(dialect: Dialect) -> str:
    """Give back the leases ``owner`` holds on the listed ``ids`` (claimed, not attempted)."""
    return (
        "UPDATE deliveries SET lease_owner = NULL, lease_until = 0 "
        f"WHERE {dialect.in_list('delivery_id', 'ids')} AND lease_owner = :owner"
    )
