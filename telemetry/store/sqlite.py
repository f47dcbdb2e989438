"""The embedded store: one SQLite file (or ``:memory:``), standard library only.

One connection, shared by every thread and guarded by a lock: SQLite has one writer at a
time anyway, and a single connection keeps ``:memory:`` databases whole. WAL mode lets other
processes (a second ``cargowatch`` reading the same file) read while this one writes;
``synchronous=FULL`` because ingest acknowledges messages to the broker once a batch is
committed, so a commit must survive a power cut.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from telemetry.errors import Conflict, NotFound, StoreError
from telemetry.models import DeadLetter, Fix, LockEvent
from telemetry.store import _rows as R
from telemetry.store.base import Doc, Store
from telemetry.store.migrations import SCHEMA_MIGRATIONS_TABLE
from telemetry.store.migrations.sqlite import SQLITE

log = logging.getLogger(__name__)

# ON CONFLICT of the key, not INSERT OR IGNORE: OR IGNORE would also drop rows that break
# NOT NULL, and report them as duplicates.
_INSERT_FIX = (
    f"INSERT INTO fixes ({', '.join(R.FIX_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(R.FIX_COLUMNS))}) "
    "ON CONFLICT (device_id, ts, seq) DO NOTHING"
)
_INSERT_LOCK_EVENT = (
    f"INSERT INTO lock_events ({', '.join(R.LOCK_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(R.LOCK_EVENT_COLUMNS))}) "
    "ON CONFLICT (device_id, ts, seq) DO NOTHING"
)
# Device lists of any length travel as one JSON parameter (no limit on bound variables).
_IN_DEVICES = "device_id IN (SELECT value FROM json_each(?))"


def _enable_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Switch to WAL. Two processes opening a new file at once can get "database is locked"
    here without the busy handler being asked, so wait for the other one explicitly."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteStore(Store):
    """``Store`` on SQLite; ``path`` is a file path or ``":memory:"``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()  # re-entered by calls inside unit_of_work
        self._unit_owner: int | None = None  # thread running a unit of work
        try:
            conn = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database: {exc}", path=path) from exc
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # A batch of fixes from thousands of devices touches one leaf page of the key
            # index per device: a 64 MB page cache keeps those pages in memory, and
            # checkpointing every ~40 MB of WAL instead of every 4 MB writes a page that
            # consecutive batches changed once, not once per batch.
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA wal_autocheckpoint=10000")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open SQLite database: {exc}", path=path) from exc
        self._conn: sqlite3.Connection | None = conn

    # -- plumbing ---------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed", path=self.path)
        return self._conn

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        with self._lock:
            if self._unit_owner == threading.get_ident():
                with self._write("nested unit of work"):  # a savepoint of the outer unit
                    yield
                return
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._unit_owner = threading.get_ident()
                yield
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"unit of work failed: {exc}") from exc
                raise
            finally:
                self._unit_owner = None

    @contextmanager
    def _write(self, what: str, **context: Any) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock (a savepoint inside a unit of work); any
        database error becomes a StoreError."""
        with self._lock:
            conn = self._connection()
            if self._unit_owner == threading.get_ident():
                try:
                    conn.execute("SAVEPOINT call")
                    yield conn
                    conn.execute("RELEASE call")
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO call")
                        conn.execute("RELEASE call")
                    if isinstance(exc, sqlite3.Error | OverflowError):
                        raise StoreError(f"{what} failed: {exc}", **context) from exc
                    raise
                return
            try:
                # IMMEDIATE takes the file's write lock now, not at the first write, so two
                # processes cannot both read-then-write and deadlock on the upgrade.
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback(conn)
                # OverflowError: an integer beyond SQLite's 64 bits, refused at binding.
                if isinstance(exc, sqlite3.Error | OverflowError):
                    raise StoreError(f"{what} failed: {exc}", **context) from exc
                raise

    @contextmanager
    def _read(self, what: str, **context: Any) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"{what} failed: {exc}", **context) from exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")

    # -- life cycle -------------------------------------------------------------------------
    def migrate(self) -> None:
        with self._write("migration", path=self.path) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_MIGRATIONS_TABLE} ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = {
                row[0] for row in conn.execute(f"SELECT version FROM {SCHEMA_MIGRATIONS_TABLE}")
            }
            # All pending steps in the one IMMEDIATE transaction: a second process waits on
            # the file lock and then finds them recorded.
            for step in SQLITE:
                if step.version in applied:
                    continue
                for statement in step.statements:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {SCHEMA_MIGRATIONS_TABLE} (version, name, applied_at) "
                    "VALUES (?, ?, datetime('now'))",
                    (step.version, step.name),
                )
                log.info("SQLite schema: applied migration %d (%s)", step.version, step.name)
            newer = {v for v in applied if v > len(SQLITE)}
            if newer:
                log.warning("SQLite schema has migrations this version does not know: %s", newer)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    def ping(self) -> bool:
        try:
            with self._read("ping") as conn:
                conn.execute("SELECT 1").fetchone()
            return True
        except StoreError:
            return False

    # -- devices ----------------------------------------------------------------------------
    def put_device(self, device: Doc) -> None:
        device_id = R.key_of(device, "device_id", "device")
        text = R.dumps(device, device_id=device_id)
        with self._write("put_device", device_id=device_id) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, shipper, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET shipper = excluded.shipper, "
                "doc = excluded.doc",
                (device_id, R.opt_str(device, "shipper"), text),
            )

    def get_device(self, device_id: str) -> Doc | None:
        return self._get_doc("devices", "device_id", device_id)

    def list_devices(self, shipper: str | None = None) -> list[Doc]:
        where, params = _filters(shipper=shipper)
        return self._docs(f"SELECT doc FROM devices{where} ORDER BY device_id", params)

    def device_ids(self) -> set[str]:
        with self._read("device_ids") as conn:
            return {row[0] for row in conn.execute("SELECT device_id FROM devices")}

    # -- telemetry --------------------------------------------------------------------------
    def insert_fixes(self, fixes: Sequence[Fix]) -> npt.NDArray[np.bool_]:
        if not fixes:
            return np.zeros(0, dtype=np.bool_)
        first = R.first_occurrences(R.fix_keys(fixes), len(fixes))
        rows = _rows(R.fix_row, fixes, first)
        return self._insert_telemetry("insert_fixes", _INSERT_FIX, rows, first)

    def insert_lock_events(self, events: Sequence[LockEvent]) -> npt.NDArray[np.bool_]:
        if not events:
            return np.zeros(0, dtype=np.bool_)
        first = R.first_occurrences(R.event_keys(events), len(events))
        rows = _rows(R.lock_event_row, events, first)
        return self._insert_telemetry("insert_lock_events", _INSERT_LOCK_EVENT, rows, first)

    def _insert_telemetry(
        self,
        what: str,
        sql: str,
        rows: list[tuple[Any, ...]],
        first: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """Insert the batch's distinct rows; True in the mask for each row that was new.

        The usual batch holds no message stored before, so it goes in with one
        ``executemany``; only when its change count says some rows were already there is it
        rolled back to the savepoint and redone row by row to learn which.
        """
        with self._write(what, rows=len(first)) as conn:
            conn.execute("SAVEPOINT batch")
            if conn.executemany(sql, rows).rowcount == len(rows):
                conn.execute("RELEASE batch")
                return first
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            cur = conn.cursor()
            new = np.zeros(len(rows), dtype=np.bool_)
            for i, row in enumerate(rows):
                new[i] = cur.execute(sql, row).rowcount == 1
            mask = np.zeros(len(first), dtype=np.bool_)
            mask[np.flatnonzero(first)] = new
            return mask

    def flag_fixes(self, keys: Sequence[tuple[str, int, int | None]], flag: str) -> None:
        if not keys:
            return
        params = [(flag, device_id, int(ts), R.seq_value(seq)) for device_id, ts, seq in keys]
        with self._write("flag_fixes", flag=flag, rows=len(params)) as conn:
            conn.executemany(
                "UPDATE fixes SET flag = ? WHERE device_id = ? AND ts = ? AND seq = ?", params
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
        with self._read("fixes", devices=len(device_ids)) as conn:
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
        with self._read("lock_events", devices=len(device_ids)) as conn:
            rows = conn.execute(sql, params).fetchall()
        return [R.lock_event_from_row(row) for row in rows]

    def last_fix(self, device_id: str) -> Fix | None:
        with self._read("last_fix", device_id=device_id) as conn:
            row = conn.execute(
                f"SELECT {', '.join(R.FIX_READ_COLUMNS)} FROM fixes WHERE device_id = ? "
                "ORDER BY ts DESC, seq DESC LIMIT 1",
                (device_id,),
            ).fetchone()
        return None if row is None else R.fix_from_row(row)

    def count_telemetry(self) -> dict[str, int]:
        with self._read("count_telemetry") as conn:
            fixes, events, letters = conn.execute(
                "SELECT (SELECT count(*) FROM fixes), (SELECT count(*) FROM lock_events), "
                "(SELECT count(*) FROM dead_letters)"
            ).fetchone()
        return {"fixes": fixes, "lock_events": events, "dead_letters": letters}

    def drop_telemetry_before(self, ts_ms: int) -> None:
        with self._write("drop_telemetry_before", ts_ms=ts_ms) as conn:
            dropped_fixes = conn.execute("DELETE FROM fixes WHERE ts < ?", (int(ts_ms),)).rowcount
            dropped_events = conn.execute(
                "DELETE FROM lock_events WHERE ts < ?", (int(ts_ms),)
            ).rowcount
        log.info(
            "retention: dropped %d fixes and %d lock events before %d",
            dropped_fixes,
            dropped_events,
            ts_ms,
        )

    # -- dead letters -----------------------------------------------------------------------
    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [R.dead_letter_row(d) for d in letters]
        with self._write("insert_dead_letters", rows=len(rows)) as conn:
            conn.executemany(
                "INSERT INTO dead_letters (topic, device_id, received_at, reason, detail, "
                "payload) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def dead_letters(
        self,
        reason: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        where, params = _filters(reason=reason, device_id=device_id)
        if since_ms is not None:
            where += (" AND" if where else " WHERE") + " received_at >= ?"
            params.append(int(since_ms))
        sql = (
            "SELECT id, topic, device_id, received_at, reason, detail, payload FROM dead_letters"
            f"{where} ORDER BY received_at DESC, id DESC LIMIT ?"
        )
        with self._read("dead_letters") as conn:
            rows = conn.execute(sql, [*params, int(limit)]).fetchall()
        return [R.dead_letter_doc(row) for row in rows]

    # -- shippers ---------------------------------------------------------------------------
    def put_shipper(self, shipper: Doc) -> None:
        key = R.key_of(shipper, "shipper", "shipper")
        text = R.dumps(shipper, shipper=key)
        with self._write("put_shipper", shipper=key) as conn:
            conn.execute(
                "INSERT INTO shippers (shipper, doc) VALUES (?, ?) "
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
        with self._write("put_geofence", geofence_id=key) as conn:
            conn.execute(
                "INSERT INTO geofences (geofence_id, kind, shipper, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (geofence_id) DO UPDATE SET kind = excluded.kind, "
                "shipper = excluded.shipper, doc = excluded.doc",
                (key, R.fence_kind(fence), R.opt_str(fence, "shipper"), text),
            )

    def get_geofence(self, geofence_id: str) -> Doc | None:
        return self._get_doc("geofences", "geofence_id", geofence_id)

    def list_geofences(self, shipper: str | None = None, kind: str | None = None) -> list[Doc]:
        clauses: list[str] = []
        params: list[Any] = []
        if shipper is not None:
            clauses.append("(shipper = ? OR shipper IS NULL)")
            params.append(shipper)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._docs(f"SELECT doc FROM geofences{where} ORDER BY geofence_id", params)

    # -- trips ------------------------------------------------------------------------------
    def put_trip(self, trip: Doc) -> None:
        trip_id = R.key_of(trip, "trip_id", "trip")
        text = R.dumps(trip, trip_id=trip_id)
        devices = R.trip_devices(trip)
        with self._write("put_trip", trip_id=trip_id) as conn:
            conn.execute(
                "INSERT INTO trips (trip_id, shipper, status, planned_start, doc) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (trip_id) DO UPDATE SET "
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
            conn.execute("DELETE FROM trip_devices WHERE trip_id = ?", (trip_id,))
            conn.executemany(
                "INSERT INTO trip_devices (trip_id, device_id) VALUES (?, ?)",
                [(trip_id, d) for d in devices],
            )

    def get_trip(self, trip_id: str) -> Doc | None:
        return self._get_doc("trips", "trip_id", trip_id)

    def list_trips(
        self, shipper: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Doc]:
        where, params = _filters(shipper=shipper, status=status)
        return self._docs(
            f"SELECT doc FROM trips{where} "
            "ORDER BY planned_start DESC NULLS LAST, trip_id DESC LIMIT ?",
            [*params, int(limit)],
        )

    def trips_for_device(self, device_id: str, status: str | None = None) -> list[Doc]:
        """Trips that list ``device_id`` among their devices (newest ``planned_start`` first)."""
        params: list[Any] = [device_id]
        extra = ""
        if status is not None:
            extra = " AND t.status = ?"
            params.append(status)
        return self._docs(
            "SELECT t.doc FROM trips t JOIN trip_devices d ON d.trip_id = t.trip_id "
            f"WHERE d.device_id = ?{extra} "
            "ORDER BY t.planned_start DESC NULLS LAST, t.trip_id DESC",
            params,
        )

    def add_trip_event(self, trip_id: str, event: Doc) -> None:
        if not isinstance(event, dict):
            raise StoreError("a trip event must be a JSON object", trip_id=trip_id)
        text = R.dumps(event, trip_id=trip_id)
        with self._write("add_trip_event", trip_id=trip_id) as conn:
            if not conn.execute("SELECT 1 FROM trips WHERE trip_id = ?", (trip_id,)).fetchone():
                raise NotFound("no such trip", trip_id=trip_id)
            conn.execute(
                "INSERT INTO trip_events (trip_id, kind, ts, event) VALUES (?, ?, ?, ?)",
                (trip_id, R.opt_str(event, "kind"), R.opt_int(event, "ts"), text),
            )

    def trip_events(self, trip_id: str) -> list[Doc]:
        return self._docs("SELECT event FROM trip_events WHERE trip_id = ? ORDER BY id", [trip_id])

    # -- alarms -----------------------------------------------------------------------------
    def insert_alarm(self, alarm: Doc) -> None:
        alarm_id = R.key_of(alarm, "alarm_id", "alarm")
        doc = alarm if "version" in alarm else {**alarm, "version": 1}
        columns = R.alarm_columns(doc)
        text = R.dumps(doc, alarm_id=alarm_id)
        with self._write("insert_alarm", alarm_id=alarm_id) as conn:
            cur = conn.execute(
                "INSERT INTO alarms (alarm_id, status, type, trip_id, shipper, ts, raised_at, "
                "ack_due, resolve_due, ack_escalated, resolve_escalated, version, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alarm_id) DO NOTHING",
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
        with self._write("update_alarm", alarm_id=alarm_id) as conn:
            cur = conn.execute(
                "UPDATE alarms SET status = ?, type = ?, trip_id = ?, shipper = ?, ts = ?, "
                "raised_at = ?, ack_due = ?, resolve_due = ?, ack_escalated = ?, "
                "resolve_escalated = ?, version = ?, doc = ? "
                "WHERE alarm_id = ? AND version = ?",
                (*columns, text, alarm_id, int(expected_version)),
            )
            if cur.rowcount == 1:
                return True
            if conn.execute("SELECT 1 FROM alarms WHERE alarm_id = ?", (alarm_id,)).fetchone():
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
            clauses.append(f"status IN ({', '.join('?' * len(wanted))})" if wanted else "0")
            params.extend(wanted)
        if since_ms is not None:
            clauses.append("raised_at >= ?")
            params.append(int(since_ms))
        if until_ms is not None:
            clauses.append("raised_at < ?")
            params.append(int(until_ms))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._docs(
            f"SELECT doc FROM alarms{where} ORDER BY raised_at DESC, alarm_id DESC LIMIT ?",
            [*params, int(limit)],
        )

    def alarms_due(self, now_ms: int) -> list[Doc]:
        now = int(now_ms)
        # A UNION of the two deadlines, each served by its partial index (SQLite scans the
        # whole table for the OR of them); UNION also drops an alarm due on both counts.
        with self._read("alarms_due") as conn:
            rows = conn.execute(
                "SELECT doc, raised_at, alarm_id FROM alarms "
                "WHERE status = 'open' AND ack_escalated = 0 AND ack_due <= ? "
                "UNION "
                "SELECT doc, raised_at, alarm_id FROM alarms "
                "WHERE status <> 'resolved' AND resolve_escalated = 0 AND resolve_due <= ? "
                "ORDER BY 2, 3",
                (now, now),
            ).fetchall()
        return [R.loads(row[0]) for row in rows]

    def add_alarm_history(self, alarm_id: str, entry: Doc) -> None:
        if not isinstance(entry, dict):
            raise StoreError("an alarm history entry must be a JSON object", alarm_id=alarm_id)
        text = R.dumps(entry, alarm_id=alarm_id)
        with self._write("add_alarm_history", alarm_id=alarm_id) as conn:
            if (
                conn.execute("SELECT 1 FROM alarms WHERE alarm_id = ?", (alarm_id,)).fetchone()
                is None
            ):
                raise NotFound("no such alarm", alarm_id=alarm_id)
            conn.execute(
                "INSERT INTO alarm_history (alarm_id, entry) VALUES (?, ?)", (alarm_id, text)
            )

    def alarm_history(self, alarm_id: str) -> list[Doc]:
        return self._docs(
            "SELECT entry FROM alarm_history WHERE alarm_id = ? ORDER BY id", [alarm_id]
        )

    # -- API keys ---------------------------------------------------------------------------
    def put_api_key(self, key: Doc) -> None:
        key_hash = R.key_of(key, "key_hash", "API key")
        text = R.dumps(key, key_id=key.get("key_id"))
        with self._write("put_api_key", key_id=key.get("key_id")) as conn:
            conn.execute(
                "INSERT INTO api_keys (key_hash, role, shipper, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key_hash) DO UPDATE SET role = excluded.role, "
                "shipper = excluded.shipper, doc = excluded.doc",
                (key_hash, R.opt_str(key, "role"), R.opt_str(key, "shipper"), text),
            )

    def get_api_key(self, key_hash: str) -> Doc | None:
        return self._get_doc("api_keys", "key_hash", key_hash)

    def count_api_keys(self) -> int:
        with self._read("count_api_keys") as conn:
            return int(conn.execute("SELECT count(*) FROM api_keys").fetchone()[0])

    # -- webhooks ---------------------------------------------------------------------------
    def put_webhook(self, hook: Doc) -> None:
        webhook_id = R.key_of(hook, "webhook_id", "webhook")
        text = R.dumps(hook, webhook_id=webhook_id)
        with self._write("put_webhook", webhook_id=webhook_id) as conn:
            conn.execute(
                "INSERT INTO webhooks (webhook_id, shipper, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (webhook_id) DO UPDATE SET shipper = excluded.shipper, "
                "doc = excluded.doc",
                (webhook_id, R.opt_str(hook, "shipper"), text),
            )

    def list_webhooks(self, shipper: str | None = None) -> list[Doc]:
        where, params = _filters(shipper=shipper)
        return self._docs(f"SELECT doc FROM webhooks{where} ORDER BY webhook_id", params)

    def delete_webhook(self, webhook_id: str) -> bool:
        with self._write("delete_webhook", webhook_id=webhook_id) as conn:
            cur = conn.execute("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,))
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
        with self._write("enqueue_deliveries", rows=len(rows)) as conn:
            conn.executemany(
                "INSERT INTO deliveries (delivery_id, webhook_id, order_key, shipper, status, "
                "next_attempt_at, doc) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (delivery_id) DO NOTHING",
                rows,
            )

    def due_deliveries(self, now_ms: int, limit: int = 100) -> list[Doc]:
        with self._read("due_deliveries") as conn:
            rows = conn.execute(
                "SELECT d.seq, d.doc FROM deliveries d "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND NOT EXISTS ("
                "  SELECT 1 FROM deliveries e WHERE e.status = 'pending' "
                "  AND e.webhook_id = d.webhook_id AND e.order_key = d.order_key "
                "  AND e.seq < d.seq) "
                "ORDER BY d.seq LIMIT ?",
                (int(now_ms), int(limit)),
            ).fetchall()
        return [R.delivery_doc(seq, doc) for seq, doc in rows]

    def update_delivery(self, delivery: Doc) -> None:
        delivery_id = R.key_of(delivery, "delivery_id", "delivery")
        with self._write("update_delivery", delivery_id=delivery_id) as conn:
            row = conn.execute(
                "SELECT doc FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                raise NotFound("no such delivery", delivery_id=delivery_id)
            merged = R.merged_delivery(R.loads(row[0]), delivery)
            conn.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, doc = ? "
                "WHERE delivery_id = ?",
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
        where, params = _filters(shipper=shipper, status=status)
        with self._read("list_deliveries") as conn:
            rows = conn.execute(
                f"SELECT seq, doc FROM deliveries{where} ORDER BY seq DESC LIMIT ?",
                [*params, int(limit)],
            ).fetchall()
        return [R.delivery_doc(seq, doc) for seq, doc in rows]

    # -- document helpers -------------------------------------------------------------------
    def _get_doc(self, table: str, key_column: str, key: str) -> Doc | None:
        with self._read(f"get from {table}", **{key_column: key}) as conn:
            row = conn.execute(f"SELECT doc FROM {table} WHERE {key_column} = ?", (key,)).fetchone()
        return None if row is None else R.loads(row[0])

    def _docs(self, sql: str, params: Sequence[Any]) -> list[Doc]:
        with self._read("query") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [R.loads(row[0]) for row in rows]


def _filters(**equal: Any) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND b = ?`` for the filters that are not None."""
    clauses, params = _equal(**equal)
    return _where(clauses), params


def _equal(**equal: Any) -> tuple[list[str], list[Any]]:
    clauses = [f"{column} = ?" for column, value in equal.items() if value is not None]
    params = [value for value in equal.values() if value is not None]
    return clauses, params


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def _rows(
    convert: Callable[[Any], tuple[Any, ...]],
    items: Sequence[Any],
    first: npt.NDArray[np.bool_],
) -> list[tuple[Any, ...]]:
    try:
        if first.all():
            return [convert(item) for item in items]
        return [convert(items[i]) for i in np.flatnonzero(first)]
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"telemetry row cannot be stored: {exc}", rows=len(items)) from exc


def _telemetry_query(
    table: str,
    columns: Sequence[str],
    device_ids: Sequence[str],
    since_ms: int | None,
    until_ms: int | None,
    limit: int | None,
) -> tuple[str, list[Any]]:
    sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {_IN_DEVICES}"
    params: list[Any] = [R.dumps(list(device_ids))]
    if since_ms is not None:
        sql += " AND ts >= ?"
        params.append(int(since_ms))
    if until_ms is not None:
        sql += " AND ts <= ?"
        params.append(int(until_ms))
    sql += " ORDER BY ts, device_id, seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params
