"""The production store: PostgreSQL 15 + TimescaleDB through psycopg 3 and a connection pool.

``fixes`` and ``lock_events`` are hypertables on an integer (epoch ms) time dimension; the
schema and why lives in ``migrations/postgres.py``. Batches of telemetry go in with binary
COPY (``_pgcopy``). Every connection of the pool runs in autocommit mode; a method that needs
more than one statement opens a transaction for them, so a read costs one round trip.
"""

from __future__ import annotations

import logging
import operator
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from telemetry.errors import Conflict, NotFound, StoreError
from telemetry.models import DeadLetter, Fix, LockEvent
from telemetry.store import _pgcopy as C
from telemetry.store import _rows as R
from telemetry.store.base import Doc, Store
from telemetry.store.migrations import SCHEMA_MIGRATIONS_TABLE
from telemetry.store.migrations.postgres import POSTGRES

log = logging.getLogger(__name__)

# pg_advisory_lock key of schema migrations: the ASCII of "cargowat", a fixed constant.
MIGRATION_LOCK_KEY = 0x63_61_72_67_6F_77_61_74
DEADLOCK_RETRIES = 3

# COPY column order: the never-NULL fixed-width columns first, so that they are written to
# the block in one piece (see ``_pgcopy.copy_block``), the variable-width ones last.
FIX_COPY_COLUMNS = (
    "ts",
    "seq",
    "received_at",
    "lat",
    "lon",
    "speed_kmh",
    "heading_deg",
    "hdop",
    "battery_pct",
    "sats",
    "device_id",
    "extra",
)
LOCK_EVENT_COPY_COLUMNS = (
    "ts",
    "seq",
    "received_at",
    "lat",
    "lon",
    "battery_pct",
    "device_id",
    "event",
    "method",
    "extra",
)
_FIX_GET = tuple(operator.attrgetter(c) for c in FIX_COPY_COLUMNS)
_LOCK_EVENT_GET = tuple(operator.attrgetter(c) for c in LOCK_EVENT_COPY_COLUMNS)


def redact(url: str) -> str:
    """The URL without its password (for logs and error context)."""
    url = re.sub(r"(://[^:/@]*):[^/]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


class PostgresStore(Store):
    """``Store`` on TimescaleDB. ``url`` is a libpq URL (``postgresql://user@host:port/db``)."""

    def __init__(
        self, url: str, min_size: int = 1, max_size: int = 8, *, timeout_s: float = 10.0
    ) -> None:
        self.url = redact(url)
        self._unit = threading.local()  # .conn: the connection of this thread's unit of work
        try:
            # One direct attempt first: a wrong URL or a server that is down fails at once
            # with libpq's own message, instead of after the pool's retries time out.
            psycopg.connect(url, connect_timeout=max(1, round(timeout_s))).close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}", url=self.url) from exc
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=_configure,
            # A connection is checked (one empty query) as it leaves the pool, so that a
            # database restart costs reconnects, not a burst of failed batches and requests.
            check=ConnectionPool.check_connection,
            timeout=timeout_s,
            open=False,
            name="cargowatch-store",
        )
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {exc}", url=self.url) from exc

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _conn(self, what: str, **context: Any) -> Iterator[psycopg.Connection]:
        """A pooled connection (autocommit), or this thread's unit of work's; database
        errors become StoreErrors."""
        unit = getattr(self._unit, "conn", None)
        try:
            if unit is not None:
                # No savepoint per call (two more round trips each): expected conflicts are
                # ON CONFLICT DO NOTHING, not errors; a real error spoils the unit up to its
                # innermost nested unit (a savepoint), which is what callers guard with.
                yield unit
                return
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise _store_error(what, exc, context) from exc

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        unit = getattr(self._unit, "conn", None)
        if unit is not None:
            try:
                with unit.transaction():  # a savepoint of the outer unit
                    yield
            except psycopg.Error as exc:
                raise _store_error("nested unit of work", exc, {}) from exc
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                self._unit.conn = conn
                try:
                    yield
                finally:
                    self._unit.conn = None
        except psycopg.Error as exc:
            raise _store_error("unit of work", exc, {}) from exc

    @contextmanager
    def _tx(self, what: str, **context: Any) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction (in a unit of work: the unit's)."""
        if getattr(self._unit, "conn", None) is not None:
            with self._conn(what, **context) as conn:
                yield conn
            return
        with self._conn(what, **context) as conn, conn.transaction():
            yield conn

    # -- life cycle -------------------------------------------------------------------------
    def migrate(self) -> None:
        with self._conn("migration", url=self.url) as conn:
            # A session advisory lock: a second process starting at the same time waits
            # here, then finds every step recorded. Each step is its own transaction.
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                self._apply_migrations(conn)
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
                except psycopg.Error:
                    # A broken connection released the session lock with it.
                    log.warning("could not release the migration lock", exc_info=True)

    def _apply_migrations(self, conn: psycopg.Connection) -> None:
        applied = set()
        exists = conn.execute("SELECT to_regclass(%s)", (SCHEMA_MIGRATIONS_TABLE,)).fetchone()
        if exists is not None and exists[0] is not None:
            applied = {
                row[0] for row in conn.execute(f"SELECT version FROM {SCHEMA_MIGRATIONS_TABLE}")
            }
        else:
            conn.execute(
                f"CREATE TABLE {SCHEMA_MIGRATIONS_TABLE} (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for step in POSTGRES:
            if step.version in applied:
                continue
            try:
                with conn.transaction():
                    for statement in step.statements:
                        conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {SCHEMA_MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                        (step.version, step.name),
                    )
            except psycopg.Error as exc:
                hint = ""
                if "timescaledb" in str(exc).lower():
                    hint = (
                        " (the server needs the TimescaleDB extension installed and "
                        "shared_preload_libraries = 'timescaledb')"
                    )
                raise StoreError(
                    f"migration {step.version} ({step.name}) failed: {exc}{hint}", url=self.url
                ) from exc
            log.info("PostgreSQL schema: applied migration %d (%s)", step.version, step.name)
        newer = {v for v in applied if v > len(POSTGRES)}
        if newer:
            log.warning("PostgreSQL schema has migrations this version does not know: %s", newer)

    def close(self) -> None:
        self._pool.close()

    def ping(self) -> bool:
        try:
            with self._pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1").fetchone()
            return True
        except psycopg.Error:
            return False

    # -- devices ----------------------------------------------------------------------------
    def put_device(self, device: Doc) -> None:
        device_id = R.key_of(device, "device_id", "device")
        text = R.dumps(device, device_id=device_id)
        with self._conn("put_device", device_id=device_id) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, shipper, doc) VALUES (%s, %s, %s) "
                "ON CONFLICT (device_id) DO UPDATE SET shipper = excluded.shipper, "
                "doc = excluded.doc",
                (device_id, R.opt_str(device, "shipper"), text),
            )

    def get_device(self, device_id: str) -> Doc | None:
        return self._get_doc("devices", "device_id", device_id)

    def list_devices(self, shipper: str | None = None) -> list[Doc]:
        clauses, params = _equal(shipper=shipper)
        return self._docs(f"SELECT doc FROM devices{_where(clauses)} ORDER BY device_id", params)

    def device_ids(self) -> set[str]:
        with self._conn("device_ids") as conn:
            return {row[0] for row in conn.execute("SELECT device_id FROM devices")}

    # -- telemetry --------------------------------------------------------------------------
    def insert_fixes(self, fixes: Sequence[Fix]) -> npt.NDArray[np.bool_]:
        if not fixes:
            return np.zeros(0, dtype=np.bool_)
        keys = R.storage_keys(fixes)
        first = R.first_occurrences(keys, len(fixes))
        block = _block(_fix_columns, [fixes[i] for i in R.key_order(keys, first)])
        return self._copy_insert("fixes", FIX_COPY_COLUMNS, block, keys, first)

    def insert_lock_events(self, events: Sequence[LockEvent]) -> npt.NDArray[np.bool_]:
        if not events:
            return np.zeros(0, dtype=np.bool_)
        keys = R.storage_keys(events)
        first = R.first_occurrences(keys, len(events))
        block = _block(_lock_event_columns, [events[i] for i in R.key_order(keys, first)])
        return self._copy_insert("lock_events", LOCK_EVENT_COPY_COLUMNS, block, keys, first)

    def _copy_insert(
        self,
        table: str,
        columns: Sequence[str],
        block: npt.NDArray[np.uint8],
        keys: list[tuple[str, int, int]],
        first: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """COPY the batch's distinct rows; True in the mask for each row that was new.

        The usual batch holds no message stored before, so it is COPied straight into the
        hypertable (the fastest path PostgreSQL has). If a row was there already, the unique
        index stops the COPY; the batch is then rolled back to the savepoint, COPied into a
        temporary table and moved over with ``INSERT ... ON CONFLICT DO NOTHING RETURNING``,
        whose returned keys are the new rows (a temporary table is scanned in the order it
        was written, so that path keeps the block's key order too).

        The block's rows are in key order (``_rows.key_order``), so concurrent writers do
        not deadlock on each other's new keys; a deadlock that happens anyway (chunks
        flushed in another order) is retried.
        """
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                return self._copy_insert_once(table, columns, block, keys, first)
            except StoreError as exc:
                # Two writers inserting overlapping new keys in different orders wait on
                # each other's index entries; PostgreSQL aborts one. Its batch is simply
                # written again (the other's rows then count as already stored).
                if not isinstance(exc.__cause__, pg_errors.DeadlockDetected):
                    raise
                log.warning("deadlock writing %s (attempt %d), retrying", table, attempt)
        return self._copy_insert_once(table, columns, block, keys, first)

    def _copy_insert_once(
        self,
        table: str,
        columns: Sequence[str],
        block: npt.NDArray[np.uint8],
        keys: list[tuple[str, int, int]],
        first: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        column_list = ", ".join(columns)
        direct = f"COPY {table} ({column_list}) FROM STDIN (FORMAT BINARY)"
        staging = f"cw_incoming_{table}"
        with self._tx(f"insert into {table}", rows=len(keys)) as conn:
            try:
                with conn.transaction(), conn.cursor() as cur, cur.copy(direct) as copy:
                    copy.write(block.data)
                return first
            except pg_errors.UniqueViolation:
                pass
            conn.execute(
                f"CREATE TEMP TABLE {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            with conn.cursor() as cur:
                with cur.copy(f"COPY {staging} ({column_list}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(block.data)
                inserted = cur.execute(
                    f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {staging} "
                    "ON CONFLICT DO NOTHING RETURNING device_id, ts, seq"
                ).fetchall()
        new_keys = set(inserted)
        mask = np.zeros(len(keys), dtype=np.bool_)
        for i in np.flatnonzero(first):
            mask[i] = keys[i] in new_keys
        return mask

    def flag_fixes(self, keys: Sequence[tuple[str, int, int | None]], flag: str) -> None:
        if not keys:
            return
        devices = [k[0] for k in keys]
        ts = [int(k[1]) for k in keys]
        seqs = [R.seq_value(k[2]) for k in keys]
        with self._conn("flag_fixes", flag=flag, rows=len(keys)) as conn:
            conn.execute(
                "UPDATE fixes f SET flag = %s "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS k(device_id, ts, seq) "
                "WHERE f.device_id = k.device_id AND f.ts = k.ts AND f.seq = k.seq",
                (flag, devices, ts, seqs),
            )

    def fixes(
        self,
        device_ids: Sequence[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Fix]:
        if not device_ids:
            return []
        sql, params = _telemetry_query(
            "fixes", R.FIX_READ_COLUMNS, device_ids, since_ms, until_ms, limit
        )
        with self._conn("fixes", devices=len(device_ids)) as conn:
            rows = conn.execute(sql, params).fetchall()
        return [R.fix_from_row(row) for row in rows]

    def lock_events(
        self,
        device_ids: Sequence[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
    ) -> list[LockEvent]:
        if not device_ids:
            return []
        sql, params = _telemetry_query(
            "lock_events", R.LOCK_EVENT_COLUMNS, device_ids, since_ms, until_ms, limit
        )
        with self._conn("lock_events", devices=len(device_ids)) as conn:
            rows = conn.execute(sql, params).fetchall()
        return [R.lock_event_from_row(row) for row in rows]

    def last_fix(self, device_id: str) -> Fix | None:
        with self._conn("last_fix", device_id=device_id) as conn:
            row = conn.execute(
                f"SELECT {_read_columns(R.FIX_READ_COLUMNS)} FROM fixes WHERE device_id = %s "
                "ORDER BY ts DESC, seq DESC LIMIT 1",
                (device_id,),
            ).fetchone()
        return None if row is None else R.fix_from_row(row)

    def count_telemetry(self) -> dict[str, int]:
        with self._conn("count_telemetry") as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM fixes), (SELECT count(*) FROM lock_events), "
                "(SELECT count(*) FROM dead_letters)"
            ).fetchone()
        assert row is not None
        return {"fixes": int(row[0]), "lock_events": int(row[1]), "dead_letters": int(row[2])}

    def drop_telemetry_before(self, ts_ms: int) -> None:
        """Whole chunks older than ``ts_ms`` are dropped (cheap: files unlinked); the rows
        before ``ts_ms`` in the chunk that straddles it are deleted, so both stores keep
        exactly the rows with ``ts >= ts_ms``."""
        cutoff = int(ts_ms)
        with self._tx("drop_telemetry_before", ts_ms=cutoff) as conn:
            chunks = 0
            for table in ("fixes", "lock_events"):
                dropped = conn.execute(
                    "SELECT drop_chunks(%s, older_than => %s::bigint)", (table, cutoff)
                ).fetchall()
                chunks += len(dropped)
                conn.execute(f"DELETE FROM {table} WHERE ts < %s::bigint", (cutoff,))
        log.info("retention: dropped %d chunks of telemetry before %d", chunks, cutoff)

    # -- dead letters -----------------------------------------------------------------------
    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [R.dead_letter_row(d) for d in letters]
        with self._tx("insert_dead_letters", rows=len(rows)) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO dead_letters (topic, device_id, received_at, reason, detail, "
                "payload) VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )

    def dead_letters(
        self,
        reason: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        clauses, params = _equal(reason=reason, device_id=device_id)
        if since_ms is not None:
            clauses.append("received_at >= %s")
            params.append(int(since_ms))
        sql = (
            "SELECT id, topic, device_id, received_at, reason, detail, payload FROM dead_letters"
            f"{_where(clauses)} ORDER BY received_at DESC, id DESC LIMIT %s"
        )
        with self._conn("dead_letters") as conn:
            rows = conn.execute(sql, [*params, int(limit)]).fetchall()
        return [R.dead_letter_doc(row) for row in rows]

    # -- shippers ---------------------------------------------------------------------------
    def put_shipper(self, shipper: Doc) -> None:
        key = R.key_of(shipper, "shipper", "shipper")
        text = R.dumps(shipper, shipper=key)
        with self._conn("put_shipper", shipper=key) as conn:
            conn.execute(
                "INSERT INTO shippers (shipper, doc) VALUES (%s, %s) "
                "ON CONFLICT (shipper) DO UPDATE SET doc = excluded.doc",
                (key, text),
            )

    def get_shipper(self, shipper_id: str) -> Doc | None:
        return self._get_doc("shippers", "shipper", shipper_id)

    def list_shippers(self) -> list[Doc]:
        return self._docs("SELECT doc FROM shippers ORDER BY shipper", [])

    # -- geofences --------------------------------------------------------------------------
    def put_geofence(self, fence: Doc) -> None:
        key = R.key_of(fence, "geofence_id", "geofence")
        text = R.dumps(fence, geofence_id=key)
        with self._conn("put_geofence", geofence_id=key) as conn:
            conn.execute(
                "INSERT INTO geofences (geofence_id, kind, shipper, doc) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (geofence_id) DO UPDATE SET "
                "kind = excluded.kind, shipper = excluded.shipper, doc = excluded.doc",
                (key, R.fence_kind(fence), R.opt_str(fence, "shipper"), text),
            )

    def get_geofence(self, geofence_id: str) -> Doc | None:
        return self._get_doc("geofences", "geofence_id", geofence_id)

    def list_geofences(self, shipper: str | None = None, kind: str | None = None) -> list[Doc]:
        clauses: list[str] = []
        params: list[Any] = []
        if shipper is not None:
            clauses.append("(shipper = %s OR shipper IS NULL)")
            params.append(shipper)
        if kind is not None:
            clauses.append("kind = %s")
            params.append(kind)
        return self._docs(
            f"SELECT doc FROM geofences{_where(clauses)} ORDER BY geofence_id", params
        )

    # -- trips ------------------------------------------------------------------------------
    def put_trip(self, trip: Doc) -> None:
        trip_id = R.key_of(trip, "trip_id", "trip")
        text = R.dumps(trip, trip_id=trip_id)
        devices = R.trip_devices(trip)
        with self._tx("put_trip", trip_id=trip_id) as conn:
            conn.execute(
                "INSERT INTO trips (trip_id, shipper, status, planned_start, doc) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (trip_id) DO UPDATE SET "
                "shipper = excluded.shipper, status = excluded.status, "
                "planned_start = excluded.planned_start, doc = excluded.doc",
                (
                    trip_id,
                    R.opt_str(trip, "shipper"),
                    R.opt_str(trip, "status"),
                    R.opt_int(trip, "planned_start"),
                    text,
                ),
            )
            conn.execute("DELETE FROM trip_devices WHERE trip_id = %s", (trip_id,))
            conn.execute(
                "INSERT INTO trip_devices (trip_id, device_id) SELECT %s, unnest(%s::text[])",
                (trip_id, devices),
            )

    def get_trip(self, trip_id: str) -> Doc | None:
        return self._get_doc("trips", "trip_id", trip_id)

    def list_trips(
        self, shipper: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Doc]:
        clauses, params = _equal(shipper=shipper, status=status)
        return self._docs(
            f"SELECT doc FROM trips{_where(clauses)} "
            "ORDER BY planned_start DESC NULLS LAST, trip_id DESC LIMIT %s",
            [*params, int(limit)],
        )

    def trips_for_device(self, device_id: str, status: str | None = None) -> list[Doc]:
        """Trips that list ``device_id`` among their devices (newest ``planned_start`` first)."""
        params: list[Any] = [device_id]
        extra = ""
        if status is not None:
            extra = " AND t.status = %s"
            params.append(status)
        return self._docs(
            "SELECT t.doc FROM trips t JOIN trip_devices d ON d.trip_id = t.trip_id "
            f"WHERE d.device_id = %s{extra} "
            "ORDER BY t.planned_start DESC NULLS LAST, t.trip_id DESC",
            params,
        )

    def add_trip_event(self, trip_id: str, event: Doc) -> None:
        if not isinstance(event, dict):
            raise StoreError("a trip event must be a JSON object", trip_id=trip_id)
        text = R.dumps(event, trip_id=trip_id)
        with self._conn("add_trip_event", trip_id=trip_id) as conn:
            cur = conn.execute(
                "INSERT INTO trip_events (trip_id, kind, ts, event) "
                "SELECT trip_id, %s, %s, %s FROM trips WHERE trip_id = %s",
                (R.opt_str(event, "kind"), R.opt_int(event, "ts"), text, trip_id),
            )
            if cur.rowcount != 1:
                raise NotFound("no such trip", trip_id=trip_id)

    def trip_events(self, trip_id: str) -> list[Doc]:
        return self._docs("SELECT event FROM trip_events WHERE trip_id = %s ORDER BY id", [trip_id])

    # -- alarms -----------------------------------------------------------------------------
    def insert_alarm(self, alarm: Doc) -> None:
        alarm_id = R.key_of(alarm, "alarm_id", "alarm")
        doc = alarm if "version" in alarm else {**alarm, "version": 1}
        columns = R.alarm_columns(doc)
        text = R.dumps(doc, alarm_id=alarm_id)
        with self._conn("insert_alarm", alarm_id=alarm_id) as conn:
            cur = conn.execute(
                "INSERT INTO alarms (alarm_id, status, type, trip_id, shipper, ts, raised_at, "
                "ack_due, resolve_due, ack_escalated, resolve_escalated, version, doc) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (alarm_id) DO NOTHING",
                (alarm_id, *columns, text),
            )
            if cur.rowcount != 1:
                raise Conflict("an alarm with this id exists", alarm_id=alarm_id)

    def update_alarm(self, alarm: Doc, expected_version: int) -> bool:
        alarm_id = R.key_of(alarm, "alarm_id", "alarm")
        columns = R.alarm_columns(alarm)
        if columns[-1] != int(expected_version) + 1:
            raise StoreError(
                "the new alarm document must carry version = expected_version + 1",
                alarm_id=alarm_id,
                version=columns[-1],
                expected_version=expected_version,
            )
        text = R.dumps(alarm, alarm_id=alarm_id)
        with self._conn("update_alarm", alarm_id=alarm_id) as conn:
            cur = conn.execute(
                "UPDATE alarms SET status = %s, type = %s, trip_id = %s, shipper = %s, "
                "ts = %s, raised_at = %s, ack_due = %s, resolve_due = %s, ack_escalated = %s, "
                "resolve_escalated = %s, version = %s, doc = %s "
                "WHERE alarm_id = %s AND version = %s",
                (*columns, text, alarm_id, int(expected_version)),
            )
            if cur.rowcount == 1:
                return True
            if conn.execute("SELECT 1 FROM alarms WHERE alarm_id = %s", (alarm_id,)).fetchone():
                return False
        raise NotFound("no such alarm", alarm_id=alarm_id)

    def get_alarm(self, alarm_id: str) -> Doc | None:
        return self._get_doc("alarms", "alarm_id", alarm_id)

    def list_alarms(
        self,
        status: Sequence[str] | None = None,
        type: str | None = None,
        trip_id: str | None = None,
        shipper: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 1000,
    ) -> list[Doc]:
        clauses, params = _equal(type=type, trip_id=trip_id, shipper=shipper)
        wanted = R.statuses(status)
        if wanted is not None:
            clauses.append("status = ANY(%s::text[])")
            params.append(wanted)
        if since_ms is not None:
            clauses.append("raised_at >= %s::bigint")
            params.append(int(since_ms))
        if until_ms is not None:
            clauses.append("raised_at < %s::bigint")
            params.append(int(until_ms))
        return self._docs(
            f"SELECT doc FROM alarms{_where(clauses)} "
            "ORDER BY raised_at DESC, alarm_id DESC LIMIT %s",
            [*params, int(limit)],
        )

    def alarms_due(self, now_ms: int) -> list[Doc]:
        now = int(now_ms)
        return self._docs(
            "SELECT doc FROM alarms WHERE status <> 'resolved' AND ("
            "(status = 'open' AND NOT ack_escalated AND ack_due <= %s::bigint) "
            "OR (NOT resolve_escalated AND resolve_due <= %s::bigint)) "
            "ORDER BY raised_at, alarm_id",
            [now, now],
        )

    def add_alarm_history(self, alarm_id: str, entry: Doc) -> None:
        if not isinstance(entry, dict):
            raise StoreError("an alarm history entry must be a JSON object", alarm_id=alarm_id)
        text = R.dumps(entry, alarm_id=alarm_id)
        with self._conn("add_alarm_history", alarm_id=alarm_id) as conn:
            cur = conn.execute(
                "INSERT INTO alarm_history (alarm_id, entry) "
                "SELECT alarm_id, %s FROM alarms WHERE alarm_id = %s",
                (text, alarm_id),
            )
            if cur.rowcount != 1:
                raise NotFound("no such alarm", alarm_id=alarm_id)

    def alarm_history(self, alarm_id: str) -> list[Doc]:
        return self._docs(
            "SELECT entry FROM alarm_history WHERE alarm_id = %s ORDER BY id", [alarm_id]
        )

    # -- API keys ---------------------------------------------------------------------------
    def put_api_key(self, key: Doc) -> None:
        key_hash = R.key_of(key, "key_hash", "API key")
        text = R.dumps(key, key_id=key.get("key_id"))
        with self._conn("put_api_key", key_id=key.get("key_id")) as conn:
            conn.execute(
                "INSERT INTO api_keys (key_hash, role, shipper, doc) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key_hash) DO UPDATE SET role = excluded.role, "
                "shipper = excluded.shipper, doc = excluded.doc",
                (key_hash, R.opt_str(key, "role"), R.opt_str(key, "shipper"), text),
            )

    def get_api_key(self, key_hash: str) -> Doc | None:
        return self._get_doc("api_keys", "key_hash", key_hash)

    def count_api_keys(self) -> int:
        with self._conn("count_api_keys") as conn:
            row = conn.execute("SELECT count(*) FROM api_keys").fetchone()
        return 0 if row is None else int(row[0])

    # -- webhooks ---------------------------------------------------------------------------
    def put_webhook(self, hook: Doc) -> None:
        webhook_id = R.key_of(hook, "webhook_id", "webhook")
        text = R.dumps(hook, webhook_id=webhook_id)
        with self._conn("put_webhook", webhook_id=webhook_id) as conn:
            conn.execute(
                "INSERT INTO webhooks (webhook_id, shipper, doc) VALUES (%s, %s, %s) "
                "ON CONFLICT (webhook_id) DO UPDATE SET shipper = excluded.shipper, "
                "doc = excluded.doc",
                (webhook_id, R.opt_str(hook, "shipper"), text),
            )

    def list_webhooks(self, shipper: str | None = None) -> list[Doc]:
        clauses, params = _equal(shipper=shipper)
        return self._docs(f"SELECT doc FROM webhooks{_where(clauses)} ORDER BY webhook_id", params)

    def delete_webhook(self, webhook_id: str) -> bool:
        with self._conn("delete_webhook", webhook_id=webhook_id) as conn:
            cur = conn.execute("DELETE FROM webhooks WHERE webhook_id = %s", (webhook_id,))
            return cur.rowcount == 1

    def enqueue_deliveries(self, deliveries: Sequence[Doc]) -> None:
        """Outbox rows in the given order; a ``delivery_id`` already queued is skipped, so
        enqueueing the same event again is harmless (at-least-once callers)."""
        if not deliveries:
            return
        rows = [
            (*R.delivery_columns(d), R.dumps(d, delivery_id=d.get("delivery_id")))
            for d in deliveries
        ]
        with self._tx("enqueue_deliveries", rows=len(rows)) as conn, conn.cursor() as cur:
            # executemany keeps the rows' order, so seq follows the order given.
            cur.executemany(
                "INSERT INTO deliveries (delivery_id, webhook_id, order_key, shipper, status, "
                "next_attempt_at, doc) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (delivery_id) DO NOTHING",
                rows,
            )

    def due_deliveries(self, now_ms: int, limit: int = 100) -> list[Doc]:
        with self._conn("due_deliveries") as conn:
            rows = conn.execute(
                "SELECT d.seq, d.doc FROM deliveries d "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= %s::bigint "
                "AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.status = 'pending' "
                "  AND e.webhook_id = d.webhook_id AND e.order_key = d.order_key "
                "  AND e.seq < d.seq) "
                "ORDER BY d.seq LIMIT %s",
                (int(now_ms), int(limit)),
            ).fetchall()
        return [R.delivery_doc(seq, doc) for seq, doc in rows]

    def update_delivery(self, delivery: Doc) -> None:
        delivery_id = R.key_of(delivery, "delivery_id", "delivery")
        with self._tx("update_delivery", delivery_id=delivery_id) as conn:
            row = conn.execute(
                "SELECT doc FROM deliveries WHERE delivery_id = %s FOR UPDATE", (delivery_id,)
            ).fetchone()
            if row is None:
                raise NotFound("no such delivery", delivery_id=delivery_id)
            merged = R.merged_delivery(row[0], delivery)
            conn.execute(
                "UPDATE deliveries SET status = %s, next_attempt_at = %s, doc = %s "
                "WHERE delivery_id = %s",
                (
                    R.opt_str(merged, "status") or "pending",
                    R.opt_int(merged, "next_attempt_at") or 0,
                    R.dumps(merged, delivery_id=delivery_id),
                    delivery_id,
                ),
            )

    def list_deliveries(
        self, shipper: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Doc]:
        clauses, params = _equal(shipper=shipper, status=status)
        with self._conn("list_deliveries") as conn:
            rows = conn.execute(
                f"SELECT seq, doc FROM deliveries{_where(clauses)} ORDER BY seq DESC LIMIT %s",
                [*params, int(limit)],
            ).fetchall()
        return [R.delivery_doc(seq, doc) for seq, doc in rows]

    # -- document helpers -------------------------------------------------------------------
    def _get_doc(self, table: str, key_column: str, key: str) -> Doc | None:
        with self._conn(f"get from {table}", **{key_column: key}) as conn:
            row = conn.execute(
                f"SELECT doc FROM {table} WHERE {key_column} = %s", (key,)
            ).fetchone()
        return None if row is None else row[0]

    def _docs(self, sql: str, params: Sequence[Any]) -> list[Doc]:
        with self._conn("query") as conn:
            return [row[0] for row in conn.execute(sql, params).fetchall()]


def _configure(conn: psycopg.Connection) -> None:
    # json columns come back through the same parser as SQLite's text (orjson).
    set_json_loads(R.loads, conn)


def _store_error(what: str, exc: psycopg.Error, context: dict[str, Any]) -> StoreError:
    if isinstance(exc, pg_errors.UniqueViolation):
        return Conflict(f"{what}: already exists ({exc.diag.constraint_name})", **context)
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return NotFound(f"{what}: refers to a missing object: {exc}", **context)
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        context = {**context, "sqlstate": sqlstate}
    return StoreError(f"{what} failed: {exc}", **context)


def _equal(**equal: Any) -> tuple[list[str], list[Any]]:
    clauses = [f"{column} = %s" for column, value in equal.items() if value is not None]
    params = [value for value in equal.values() if value is not None]
    return clauses, params


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def _read_columns(columns: Sequence[str]) -> str:
    # json as text: the shared row readers parse it exactly as they parse SQLite's.
    return ", ".join(f"{c}::text" if c == "extra" else c for c in columns)


def _telemetry_query(
    table: str,
    columns: Sequence[str],
    device_ids: Sequence[str],
    since_ms: int | None,
    until_ms: int | None,
    limit: int | None,
) -> tuple[str, list[Any]]:
    sql = f"SELECT {_read_columns(columns)} FROM {table} WHERE device_id = ANY(%s::text[])"
    params: list[Any] = [list(device_ids)]
    if since_ms is not None:
        sql += " AND ts >= %s::bigint"
        params.append(int(since_ms))
    if until_ms is not None:
        sql += " AND ts <= %s::bigint"
        params.append(int(until_ms))
    sql += " ORDER BY ts, device_id, seq"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    return sql, params


# -- COPY blocks ---------------------------------------------------------------------------
def _block(
    columns_of: Callable[[list[tuple[Any, ...]]], list[C.Column]], items: Sequence[Any]
) -> npt.NDArray[np.uint8]:
    try:
        return C.copy_block(len(items), columns_of(items))
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"telemetry batch cannot be stored: {exc}", rows=len(items)) from exc


def _extra_parts(values: Sequence[Any], devices: Sequence[str]) -> C.BytesColumn:
    return C.BytesColumn(
        [
            None if extra is None else R.dumps(extra, device_id=device).encode()
            for extra, device in zip(values, devices, strict=True)
        ]
    )


def _fix_columns(fixes: Sequence[Fix]) -> list[C.Column]:
    """``FIX_COPY_COLUMNS`` of the fixes (one pass per column, nothing formatted per row)."""
    (ts, seq, received, lat, lon, speed, heading, hdop, battery, sats, device, extra) = (
        list(map(get, fixes)) for get in _FIX_GET
    )
    return [
        C.int64_column(ts),
        C.int64_column([R.NO_SEQ if s is None else s for s in seq]),
        C.int64_column(received),
        C.float64_column(lat),
        C.float64_column(lon),
        C.float64_column(speed),
        C.float64_column(heading),
        C.float64_column(hdop),
        C.float64_column(battery),
        C.optional_int64_column(sats),
        C.text_column(device),
        _extra_parts(extra, device),
    ]


def _lock_event_columns(events: Sequence[LockEvent]) -> list[C.Column]:
    """``LOCK_EVENT_COPY_COLUMNS`` of the lock events."""
    (ts, seq, received, lat, lon, battery, device, event, method, extra) = (
        list(map(get, events)) for get in _LOCK_EVENT_GET
    )
    return [
        C.int64_column(ts),
        C.int64_column([R.NO_SEQ if s is None else s for s in seq]),
        C.int64_column(received),
        C.float64_column(lat),
        C.float64_column(lon),
        C.float64_column(battery),
        C.text_column(device),
        C.text_column([R.enum_value(e) for e in event]),
        C.text_column([None if m is None else R.enum_value(m) for m in method]),
        _extra_parts(extra, device),
    ]
