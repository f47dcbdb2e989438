"""Schema of the TimescaleDB store.

Time column of the hypertables: ``ts bigint`` (epoch milliseconds) with an integer time
dimension, not ``timestamptz``. Why: every caller speaks integer milliseconds (device ``ts``,
the API's ``from``/``to``, the dedup key), so nothing is converted on the hot paths (binary
COPY writes the int64 as is, reads hand it back as is), a stored key compares exactly equal
to the key a device resends, and both stores share one definition of a key. What the
integer dimension costs is that Timescale's interval-based helpers need an "integer now"
function, which ``cargowatch_now_ms()`` provides; ``drop_chunks`` takes a bigint.

Only the Apache-licensed part of TimescaleDB is used (hypertables, ``drop_chunks``):
no compression, retention policies or continuous aggregates, which the Apache build lacks.

Documents and the ``extra`` telemetry fields are ``json`` rather than ``jsonb``: the store
never queries inside them (the fields it filters on are copied into columns), and ``json``
keeps the text exactly as written, so both stores hand documents back identically (``jsonb``
would rewrite numbers such as ``1e300`` and refuse ``\\u0000``), at a lower cost per insert.
"""

from __future__ import annotations

from telemetry.store.migrations import Migration

# One day of fixes per chunk: ~90 M rows at 10,000 trucks reporting every 10 s, a size where
# a chunk's indexes stay in memory while it is written; lock events are ~100x rarer.
FIX_CHUNK_MS = 86_400_000
LOCK_EVENT_CHUNK_MS = 7 * 86_400_000

_APPEND_ONLY_TRIGGERS = """
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION cargowatch_append_only()
"""
_NO_TRUNCATE_TRIGGERS = """
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION cargowatch_append_only()
"""


def _append_only(table: str) -> tuple[str, ...]:
    return (
        _APPEND_ONLY_TRIGGERS.format(table=table),
        _NO_TRUNCATE_TRIGGERS.format(table=table),
    )


INITIAL = Migration(
    1,
    "initial schema",
    (
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        """
        CREATE FUNCTION cargowatch_now_ms() RETURNS bigint
        LANGUAGE sql STABLE AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$
        """,
        """
        CREATE FUNCTION cargowatch_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
        END
        $$
        """,
        # seq: NOT NULL with -2^63 meaning "the device sent none", so that the unique index
        # treats two seq-less messages of one device and ts as the same message.
        """
        CREATE TABLE fixes (
            device_id   text             NOT NULL,
            ts          bigint           NOT NULL,
            seq         bigint           NOT NULL,
            lat         double precision NOT NULL,
            lon         double precision NOT NULL,
            speed_kmh   double precision,
            heading_deg double precision,
            hdop        double precision,
            sats        bigint,
            battery_pct double precision,
            received_at bigint           NOT NULL,
            flag        text,
            extra       json
        )
        """,
        # No default ts index: every query names devices, which the unique index leads with.
        f"""
        SELECT create_hypertable('fixes', by_range('ts', {FIX_CHUNK_MS}::bigint),
                                 create_default_indexes => false)
        """,
        "CREATE UNIQUE INDEX fixes_key ON fixes (device_id, ts, seq)",
        "SELECT set_integer_now_func('fixes', 'cargowatch_now_ms')",
        """
        CREATE TABLE lock_events (
            device_id   text             NOT NULL,
            ts          bigint           NOT NULL,
            seq         bigint           NOT NULL,
            event       text             NOT NULL,
            method      text,
            lat         double precision,
            lon         double precision,
            battery_pct double precision,
            received_at bigint           NOT NULL,
            extra       json
        )
        """,
        f"""
        SELECT create_hypertable('lock_events', by_range('ts', {LOCK_EVENT_CHUNK_MS}::bigint),
                                 create_default_indexes => false)
        """,
        "CREATE UNIQUE INDEX lock_events_key ON lock_events (device_id, ts, seq)",
        "SELECT set_integer_now_func('lock_events', 'cargowatch_now_ms')",
        """
        CREATE TABLE dead_letters (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            topic       text   NOT NULL,
            device_id   text,
            received_at bigint NOT NULL,
            reason      text   NOT NULL,
            detail      text,
            payload     bytea  NOT NULL
        )
        """,
        "CREATE INDEX dead_letters_received ON dead_letters (received_at)",
        "CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at)",
        "CREATE INDEX dead_letters_device ON dead_letters (device_id, received_at)",
        "CREATE TABLE devices (device_id text PRIMARY KEY, shipper text, doc json NOT NULL)",
        "CREATE INDEX devices_shipper ON devices (shipper)",
        "CREATE TABLE shippers (shipper text PRIMARY KEY, doc json NOT NULL)",
        """
        CREATE TABLE geofences (
            geofence_id text PRIMARY KEY,
            kind        text,
            shipper     text,
            doc         json NOT NULL
        )
        """,
        "CREATE INDEX geofences_shipper ON geofences (shipper, kind)",
        """
        CREATE TABLE trips (
            trip_id       text PRIMARY KEY,
            shipper       text,
            status        text,
            planned_start bigint,
            doc           json NOT NULL
        )
        """,
        "CREATE INDEX trips_shipper ON trips (shipper, planned_start)",
        "CREATE INDEX trips_status ON trips (status, planned_start)",
        """
        CREATE TABLE trip_devices (
            trip_id   text NOT NULL REFERENCES trips (trip_id),
            device_id text NOT NULL,
            PRIMARY KEY (trip_id, device_id)
        )
        """,
        "CREATE INDEX trip_devices_device ON trip_devices (device_id)",
        """
        CREATE TABLE trip_events (
            id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            trip_id text NOT NULL REFERENCES trips (trip_id),
            kind    text,
            ts      bigint,
            event   json NOT NULL
        )
        """,
        "CREATE INDEX trip_events_trip ON trip_events (trip_id, id)",
        *_append_only("trip_events"),
        """
        CREATE TABLE alarms (
            alarm_id          text PRIMARY KEY,
            status            text,
            type              text,
            trip_id           text,
            shipper           text,
            ts                bigint,
            raised_at         bigint,
            ack_due           bigint,
            resolve_due       bigint,
            ack_escalated     boolean NOT NULL DEFAULT false,
            resolve_escalated boolean NOT NULL DEFAULT false,
            version           integer NOT NULL,
            doc               json    NOT NULL
        )
        """,
        "CREATE INDEX alarms_raised ON alarms (raised_at)",
        "CREATE INDEX alarms_trip ON alarms (trip_id, raised_at)",
        "CREATE INDEX alarms_shipper ON alarms (shipper, raised_at)",
        "CREATE INDEX alarms_status ON alarms (status, raised_at)",
        """
        CREATE INDEX alarms_ack_due ON alarms (ack_due)
        WHERE status = 'open' AND NOT ack_escalated
        """,
        """
        CREATE INDEX alarms_resolve_due ON alarms (resolve_due)
        WHERE status <> 'resolved' AND NOT resolve_escalated
        """,
        """
        CREATE TABLE alarm_history (
            id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            alarm_id text NOT NULL REFERENCES alarms (alarm_id),
            entry    json NOT NULL
        )
        """,
        "CREATE INDEX alarm_history_alarm ON alarm_history (alarm_id, id)",
        *_append_only("alarm_history"),
        """
        CREATE TABLE api_keys (
            key_hash text PRIMARY KEY,
            role     text,
            shipper  text,
            doc      json NOT NULL
        )
        """,
        "CREATE TABLE webhooks (webhook_id text PRIMARY KEY, shipper text, doc json NOT NULL)",
        "CREATE INDEX webhooks_shipper ON webhooks (shipper)",
        # seq orders the deliveries of one (webhook, order_key): the outbox's head-of-line.
        """
        CREATE TABLE deliveries (
            seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            delivery_id     text   NOT NULL UNIQUE,
            webhook_id      text   NOT NULL,
            order_key       text,
            shipper         text,
            status          text   NOT NULL,
            next_attempt_at bigint NOT NULL,
            doc             json   NOT NULL
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
        "CREATE INDEX deliveries_shipper ON deliveries (shipper, seq)",
        "CREATE INDEX deliveries_status ON deliveries (status, seq)",
    ),
)

# A delivery is claimed by one sender at a time: ``lease_owner`` holds it until
# ``lease_until`` (epoch ms; 0 = not claimed). A constant default: no table rewrite.
DELIVERY_LEASES = Migration(
    2,
    "delivery leases",
    (
        "ALTER TABLE deliveries ADD COLUMN lease_owner text, "
        "ADD COLUMN lease_until bigint NOT NULL DEFAULT 0",
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
            trip_id    text PRIMARY KEY,
            state      bytea NOT NULL,
            updated_at bigint NOT NULL
        )
        """,
    ),
)

# The desk's handling workflow (contract v2 §5): alarms and exceptions share the table
# (``kind``), the queue shows whose alarm it is (``assigned_to``); keys have an id to revoke
# by and their last use; carriers and their contacts. Constant defaults: no table rewrite.
DESK_WORKFLOW = Migration(
    4,
    "desk workflow",
    (
        "ALTER TABLE alarms ADD COLUMN kind text NOT NULL DEFAULT 'alarm', "
        "ADD COLUMN assigned_to text",
        "CREATE INDEX alarms_kind ON alarms (kind, raised_at)",
        "ALTER TABLE api_keys ADD COLUMN key_id text, ADD COLUMN last_used_at bigint, "
        "ADD COLUMN revoked_at bigint",
        "UPDATE api_keys SET key_id = doc->>'key_id'",
        "CREATE UNIQUE INDEX api_keys_key_id ON api_keys (key_id)",
        "CREATE TABLE carriers (carrier_id text PRIMARY KEY, doc json NOT NULL)",
    ),
)

POSTGRES: tuple[Migration, ...] = (INITIAL, DELIVERY_LEASES, ENGINE_STATE, DESK_WORKFLOW)
