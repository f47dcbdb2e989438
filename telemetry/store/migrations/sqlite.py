"""Schema of the embedded SQLite store (one file, WAL mode).

Telemetry tables are ordinary rowid tables, so rows are appended in arrival order, with a
unique index on the dedup key ``(device_id, ts, seq)`` that also serves every query (a
device's time window is one range of it). Clustering the rows themselves on that key
(``WITHOUT ROWID``) was measured 40 % slower at a million rows: a batch from 10,000 devices
then rewrites a full-width leaf page per device, where the index's pages are narrower.
``seq`` is NOT NULL with ``-2**63`` meaning "the device sent none" (a NULL would never be
equal to itself in a UNIQUE index).
Documents are JSON text with the columns the queries filter on copied out on write.
"""

from __future__ import annotations

from telemetry.store.migrations import Migration

_APPEND_ONLY = """
CREATE TRIGGER {table}_append_only_{op} BEFORE {op} ON {table}
BEGIN
    SELECT RAISE(ABORT, '{table} is append-only');
END
"""


def _append_only(table: str) -> tuple[str, ...]:
    return tuple(_APPEND_ONLY.format(table=table, op=op) for op in ("UPDATE", "DELETE"))


INITIAL = Migration(
    1,
    "initial schema",
    (
        """
        CREATE TABLE fixes (
            device_id   TEXT    NOT NULL,
            ts          INTEGER NOT NULL,
            seq         INTEGER NOT NULL,
            lat         REAL    NOT NULL,
            lon         REAL    NOT NULL,
            speed_kmh   REAL,
            heading_deg REAL,
            hdop        REAL,
            sats        INTEGER,
            battery_pct REAL,
            received_at INTEGER NOT NULL,
            flag        TEXT,
            extra       TEXT
        )
        """,
        "CREATE UNIQUE INDEX fixes_key ON fixes (device_id, ts, seq)",
        """
        CREATE TABLE lock_events (
            device_id   TEXT    NOT NULL,
            ts          INTEGER NOT NULL,
            seq         INTEGER NOT NULL,
            event       TEXT    NOT NULL,
            method      TEXT,
            lat         REAL,
            lon         REAL,
            battery_pct REAL,
            received_at INTEGER NOT NULL,
            extra       TEXT
        )
        """,
        "CREATE UNIQUE INDEX lock_events_key ON lock_events (device_id, ts, seq)",
        """
        CREATE TABLE dead_letters (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            topic       TEXT    NOT NULL,
            device_id   TEXT,
            received_at INTEGER NOT NULL,
            reason      TEXT    NOT NULL,
            detail      TEXT,
            payload     BLOB    NOT NULL
        )
        """,
        "CREATE INDEX dead_letters_received ON dead_letters (received_at)",
        "CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at)",
        "CREATE INDEX dead_letters_device ON dead_letters (device_id, received_at)",
        """
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            shipper   TEXT,
            doc       TEXT NOT NULL
        )
        """,
        "CREATE INDEX devices_shipper ON devices (shipper)",
        "CREATE TABLE shippers (shipper TEXT PRIMARY KEY, doc TEXT NOT NULL)",
        """
        CREATE TABLE geofences (
            geofence_id TEXT PRIMARY KEY,
            kind        TEXT,
            shipper     TEXT,
            doc         TEXT NOT NULL
        )
        """,
        "CREATE INDEX geofences_shipper ON geofences (shipper, kind)",
        """
        CREATE TABLE trips (
            trip_id       TEXT PRIMARY KEY,
            shipper       TEXT,
            status        TEXT,
            planned_start INTEGER,
            doc           TEXT NOT NULL
        )
        """,
        "CREATE INDEX trips_shipper ON trips (shipper, planned_start)",
        "CREATE INDEX trips_status ON trips (status, planned_start)",
        """
        CREATE TABLE trip_devices (
            trip_id   TEXT NOT NULL REFERENCES trips (trip_id),
            device_id TEXT NOT NULL,
            PRIMARY KEY (trip_id, device_id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX trip_devices_device ON trip_devices (device_id)",
        """
        CREATE TABLE trip_events (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            trip_id TEXT NOT NULL REFERENCES trips (trip_id),
            kind    TEXT,
            ts      INTEGER,
            event   TEXT NOT NULL
        )
        """,
        "CREATE INDEX trip_events_trip ON trip_events (trip_id, id)",
        *_append_only("trip_events"),
        """
        CREATE TABLE alarms (
            alarm_id          TEXT PRIMARY KEY,
            status            TEXT,
            type              TEXT,
            trip_id           TEXT,
            shipper           TEXT,
            ts                INTEGER,
            raised_at         INTEGER,
            ack_due           INTEGER,
            resolve_due       INTEGER,
            ack_escalated     INTEGER NOT NULL DEFAULT 0,
            resolve_escalated INTEGER NOT NULL DEFAULT 0,
            version           INTEGER NOT NULL,
            doc               TEXT NOT NULL
        )
        """,
        "CREATE INDEX alarms_raised ON alarms (raised_at)",
        "CREATE INDEX alarms_trip ON alarms (trip_id, raised_at)",
        "CREATE INDEX alarms_shipper ON alarms (shipper, raised_at)",
        "CREATE INDEX alarms_status ON alarms (status, raised_at)",
        """
        CREATE INDEX alarms_ack_due ON alarms (ack_due)
        WHERE status = 'open' AND ack_escalated = 0
        """,
        """
        CREATE INDEX alarms_resolve_due ON alarms (resolve_due)
        WHERE status <> 'resolved' AND resolve_escalated = 0
        """,
        """
        CREATE TABLE alarm_history (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id TEXT NOT NULL REFERENCES alarms (alarm_id),
            entry    TEXT NOT NULL
        )
        """,
        "CREATE INDEX alarm_history_alarm ON alarm_history (alarm_id, id)",
        *_append_only("alarm_history"),
        """
        CREATE TABLE api_keys (
            key_hash TEXT PRIMARY KEY,
            role     TEXT,
            shipper  TEXT,
            doc      TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE webhooks (
            webhook_id TEXT PRIMARY KEY,
            shipper    TEXT,
            doc        TEXT NOT NULL
        )
        """,
        "CREATE INDEX webhooks_shipper ON webhooks (shipper)",
        """
        CREATE TABLE deliveries (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id     TEXT NOT NULL UNIQUE,
            webhook_id      TEXT NOT NULL,
            order_key       TEXT,
            shipper         TEXT,
            status          TEXT NOT NULL,
            next_attempt_at INTEGER NOT NULL,
            doc             TEXT NOT NULL
        )
        """,
        """
        CREATE INDEX deliveries_head ON deliveries (webhook_id, order_key, seq)
        WHERE status = 'pending'
        """,
        """
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
        WHERE status = 'pending'
        """,
        # No (status, seq) index: without statistics SQLite's planner would pick it over
        # deliveries_head for the head-of-line subquery of due_deliveries.
        "CREATE INDEX deliveries_shipper ON deliveries (shipper, seq)",
    ),
)

# A delivery is claimed by one sender at a time: ``lease_owner`` holds it until
# ``lease_until`` (epoch ms; 0 = not claimed). Claims run in a BEGIN IMMEDIATE transaction,
# which every process writing the file takes in turn.
DELIVERY_LEASES = Migration(
    2,
    "delivery leases",
    (
        "ALTER TABLE deliveries ADD COLUMN lease_owner TEXT",
        "ALTER TABLE deliveries ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0",
    ),
)

# The rule engine's per-trip checkpoint (rules.Engine.export_trip_state), written in the
# same transaction as the telemetry and alarms it covers, read back on start.
ENGINE_STATE = Migration(
    3,
    "engine state",
    (
        """
        CREATE TABLE engine_state (
            trip_id    TEXT PRIMARY KEY,
            state      BLOB NOT NULL,
            updated_at INTEGER NOT NULL
        )
        """,
    ),
)

# The desk's handling workflow (contract v2 §5): alarms and exceptions share the table
# (``kind``), the queue shows whose alarm it is (``assigned_to``); keys have an id to revoke
# by and their last use; carriers and their contacts.
DESK_WORKFLOW = Migration(
    4,
    "desk workflow",
    (
        "ALTER TABLE alarms ADD COLUMN kind TEXT NOT NULL DEFAULT 'alarm'",
        "ALTER TABLE alarms ADD COLUMN assigned_to TEXT",
        "CREATE INDEX alarms_kind ON alarms (kind, raised_at)",
        "ALTER TABLE api_keys ADD COLUMN key_id TEXT",
        "ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER",
        "ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER",
        "UPDATE api_keys SET key_id = json_extract(doc, '$.key_id')",
        "CREATE UNIQUE INDEX api_keys_key_id ON api_keys (key_id)",
        "CREATE TABLE carriers (carrier_id TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    ),
)

SQLITE: tuple[Migration, ...] = (INITIAL, DELIVERY_LEASES, ENGINE_STATE, DESK_WORKFLOW)
