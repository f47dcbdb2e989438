"""The production store: PostgreSQL 15 + TimescaleDB through psycopg 3 and a connection pool.

``fixes`` and ``lock_events`` are hypertables on an integer (epoch ms) time dimension; the
schema and why lives in ``migrations/postgres.py``. Batches of telemetry go in with binary
COPY (``_pgcopy``). Every connection of the pool runs in autocommit mode; a method that needs
more than one statement opens a transaction for them, so a read costs one round trip.

What is here: the pool, transactions and units of work, migrations, the telemetry writes
(COPY, flags, ``drop_chunks``) and how PostgreSQL's errors map onto kinds. The statements of
every other method are shared with SQLite (``documents.py``, ``sql.py``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from telemetry.errors import Conflict, InvalidAddress, NotFound, StoreError, StoreUnavailable
from telemetry.models import Fix, LockEvent
from telemetry.store import _pgcopy as C
from telemetry.store import _rows as R
from telemetry.store.documents import Mode, Session, SqlStore
from telemetry.store.migrations import SCHEMA_MIGRATIONS_TABLE
from telemetry.store.migrations.postgres import POSTGRES
from telemetry.store.sql import POSTGRES_DIALECT, to_pyformat

log = logging.getLogger(__name__)

# pg_advisory_lock key of schema migrations: the ASCII of "cargowat", a fixed constant.
MIGRATION_LOCK_KEY = 0x63_61_72_67_6F_77_61_74
DEADLOCK_RETRIES = 3

Connection = psycopg.Connection[tuple[Any, ...]]
_Item = TypeVar("_Item", Fix, LockEvent)

_FLAG_FIXES = (
    "UPDATE fixes f SET flag = :flag FROM unnest(CAST(:devices AS text[]), "
    "CAST(:ts AS bigint[]), CAST(:seqs AS bigint[])) AS k(device_id, ts, seq) "
    "WHERE f.device_id = k.device_id AND f.ts = k.ts AND f.seq = k.seq"
)
_DROP_CHUNKS = "SELECT drop_chunks(:table, older_than => CAST(:cutoff AS bigint))"


def redact(url: str) -> str:
    """The URL without its password (for logs and error context)."""
    url = re.sub(r"(://[^:/@]*):[^/]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def error_kind(exc: psycopg.Error) -> type[StoreError] | None:
    """The store error a driver error stands for; None for a programming error (bad SQL, a
    value psycopg cannot adapt, missing privileges), which is raised as it is."""
    if isinstance(exc, pg_errors.UniqueViolation):
        return Conflict
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return NotFound
    if isinstance(exc, psycopg.OperationalError):
        # Connection refused or lost, server shutting down, pool timeout or closed, a
        # deadlock or cancelled query: the database cannot serve now.
        return StoreUnavailable
    if isinstance(exc, pg_errors.RaiseException):
        return StoreError  # a trigger refused the change (append-only tables)
    if isinstance(
        exc, psycopg.ProgrammingError | psycopg.InterfaceError | psycopg.NotSupportedError
    ):
        return None
    return StoreError  # bad data (DataError, IntegrityError) or an aborted transaction


def _store_error(what: str, exc: psycopg.Error, context: dict[str, Any]) -> StoreError | None:
    kind = error_kind(exc)
    if kind is Conflict:
        constraint = exc.diag.constraint_name
        return Conflict(f"{what}: already exists ({constraint})", **context)
    if kind is NotFound:
        return NotFound(f"{what}: refers to a missing object: {exc}", **context)
    if kind is None:
        return None
    if exc.sqlstate:
        context = {**context, "sqlstate": exc.sqlstate}
    return kind(f"{what} failed: {exc}", **context)


def _check_url(url: str) -> None:
    """``InvalidAddress`` for a URL libpq cannot parse or with a port that is no number."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise InvalidAddress(
            f"not a usable PostgreSQL URL: {redact(str(exc))}", url=redact(url)
        ) from exc
    for port in str(info.get("port") or "5432").split(","):
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidAddress(f"not a usable PostgreSQL port: {port!r}", url=redact(url))


class _Session:
    """A connection that runs the shared statements (``:name`` parameters) with psycopg."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any], /) -> psycopg.Cursor[tuple[Any, ...]]:
        return self.conn.execute(to_pyformat(sql), params)

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]], /) -> None:
        # executemany keeps the rows' order (an outbox's seq follows the order given).
        with self.conn.cursor() as cur:
            cur.executemany(to_pyformat(sql), rows)


class PostgresStore(SqlStore):
    """``Store`` on TimescaleDB. ``url`` is a libpq URL (``postgresql://user@host:port/db``)."""

    dialect = POSTGRES_DIALECT

    def __init__(
        self, url: str, min_size: int = 1, max_size: int = 8, *, timeout_s: float = 10.0
    ) -> None:
        self.url = redact(url)
        _check_url(url)
        self._unit = threading.local()  # .conn: the connection of this thread's unit of work
        self._idle = _IdleCheck()
        try:
            # One direct attempt first: a wrong URL or a server that is down fails at once
            # with libpq's own message, instead of after the pool's retries time out.
            psycopg.connect(url, connect_timeout=max(1, round(timeout_s))).close()
        except psycopg.Error as exc:
            kind = StoreUnavailable if isinstance(exc, psycopg.OperationalError) else InvalidAddress
            raise kind(f"cannot connect to PostgreSQL: {exc}", url=self.url) from exc
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=_configure,
            # A connection idle for a while is checked (one empty query) as it leaves the
            # pool, so that a database restart costs reconnects, not a burst of failed
            # batches and requests (``_IdleCheck``).
            check=self._idle.check,
            reset=self._idle.returned,
            timeout=timeout_s,
            open=False,
            name="cargowatch-store",
        )
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}", url=self.url) from exc

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _conn(self, what: str, **context: Any) -> Iterator[Connection]:
        """A pooled connection (autocommit), or this thread's unit of work's; database
        errors become the store's kinds (``error_kind``)."""
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
            error = _store_error(what, exc, context)
            if error is None:
                raise
            raise error from exc

    @contextmanager
    def _tx(self, what: str, **context: Any) -> Iterator[Connection]:
        """A pooled connection inside one transaction (in a unit of work: the unit's)."""
        if getattr(self._unit, "conn", None) is not None:
            with self._conn(what, **context) as conn:
                yield conn
            return
        with self._conn(what, **context) as conn, conn.transaction():
            yield conn

    @contextmanager
    def _session(self, mode: Mode, what: str, **context: Any) -> Iterator[Session]:
        scope = self._tx if mode == "atomic" else self._conn
        with scope(what, **context) as conn:
            yield _Session(conn)

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        unit = getattr(self._unit, "conn", None)
        if unit is not None:
            with self._conn("nested unit of work"), unit.transaction():  # a savepoint
                yield
            return
        with self._conn("unit of work") as conn, conn.transaction():
            self._unit.conn = conn
            try:
                yield
            finally:
                self._unit.conn = None

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

    def _apply_migrations(self, conn: Connection) -> None:
        applied: set[int] = set()
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
                # Any failure here (a missing extension too) is the deployment's, not a bug.
                kind = error_kind(exc) or StoreError
                raise kind(
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

    # -- telemetry --------------------------------------------------------------------------
    def insert_fixes(self, fixes: Sequence[Fix]) -> npt.NDArray[np.bool_]:
        return self._copy_insert("fixes", C.FIX_COPY_COLUMNS, C.fix_block, fixes)

    def insert_lock_events(self, events: Sequence[LockEvent]) -> npt.NDArray[np.bool_]:
        return self._copy_insert(
            "lock_events", C.LOCK_EVENT_COPY_COLUMNS, C.lock_event_block, events
        )

    def _copy_insert(
        self,
        table: str,
        columns: Sequence[str],
        build: Callable[[Sequence[_Item]], npt.NDArray[np.uint8]],
        items: Sequence[_Item],
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
        if not items:
            return np.zeros(0, dtype=np.bool_)
        keys = R.storage_keys(items)
        first = R.first_occurrences(keys, len(items))
        block = build([items[i] for i in R.key_order(keys, first)])
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                return self._copy_once(table, columns, block, keys, first)
            except StoreError as exc:
                # Two writers inserting overlapping new keys in different orders wait on
                # each other's index entries; PostgreSQL aborts one. Its batch is simply
                # written again (the other's rows then count as already stored).
                if not isinstance(exc.__cause__, pg_errors.DeadlockDetected):
                    raise
                log.warning("deadlock writing %s (attempt %d), retrying", table, attempt)
        return self._copy_once(table, columns, block, keys, first)

    def _copy_once(
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
        """One statement over arrays, not one per key."""
        if not keys:
            return
        params = {
            "flag": flag,
            "devices": [k[0] for k in keys],
            "ts": [int(k[1]) for k in keys],
            "seqs": [R.seq_value(k[2]) for k in keys],
        }
        with self._session("write", "flag_fixes", flag=flag, rows=len(keys)) as s:
            s.execute(_FLAG_FIXES, params)

    def _drop_chunks(self, session: Session, table: str, cutoff: int) -> int:
        """Whole chunks older than the cutoff are dropped (cheap: files unlinked); the rows
        before it in the chunk that straddles it are then deleted like SQLite's."""
        params = {"table": table, "cutoff": cutoff}
        return len(session.execute(_DROP_CHUNKS, params).fetchall())


IDLE_CHECK_S = 1.0


class _IdleCheck:
    """Checks a connection as it leaves the pool only if it came back more than
    ``IDLE_CHECK_S`` ago. Checking every checkout cost a round trip per store call (~14 % of
    a bus worker's time at 80 batches a second); a connection used a moment ago is alive, or
    its one failed call is retried like any store error (a batch is redelivered)."""

    def __init__(self) -> None:
        self._at: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def returned(self, conn: Connection) -> None:
        with self._lock:
            self._at[conn] = time.monotonic()

    def check(self, conn: Connection) -> None:
        with self._lock:
            at = self._at.get(conn)
        if at is None or time.monotonic() - at > IDLE_CHECK_S:
            ConnectionPool.check_connection(conn)


def _configure(conn: Connection) -> None:
    # json columns come back through the same parser as SQLite's text (orjson).
    set_json_loads(R.loads, conn)
