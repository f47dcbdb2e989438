"""The embedded store: one SQLite file (or ``:memory:``), standard library only.

One connection, shared by every thread and guarded by a lock: SQLite has one writer at a
time anyway, and a single connection keeps ``:memory:`` databases whole. WAL mode lets other
processes (a second ``cargowatch`` reading the same file) read while this one writes;
``synchronous=FULL`` because ingest acknowledges messages to the broker once a batch is
committed, so a commit must survive a power cut.

What is here: the connection, transactions and units of work, migrations, the telemetry
inserts and how SQLite's errors map onto kinds. The statements of every other method are
shared with PostgreSQL (``documents.py``, ``sql.py``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from telemetry.errors import Conflict, NotFound, StoreError, StoreUnavailable
from telemetry.models import Fix, LockEvent
from telemetry.store import _rows as R
from telemetry.store.documents import Mode, Session, SqlStore
from telemetry.store.migrations import SCHEMA_MIGRATIONS_TABLE
from telemetry.store.migrations.sqlite import SQLITE
from telemetry.store.sql import SQLITE_DIALECT

log = logging.getLogger(__name__)

_Item = TypeVar("_Item", Fix, LockEvent)

# ON CONFLICT of the key, not INSERT OR IGNORE: OR IGNORE would also drop rows that break
# NOT NULL, and report them as duplicates. Positional: the rows are tuples (hot path).
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

_TRANSACTION = ("BEGIN IMMEDIATE", "COMMIT")

# Primary result codes that say the database cannot serve now (busy, locked, disk full,
# unreadable file...), as opposed to bad data or a bug.
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_AUTH,
    }
)
# SQLITE_ERROR is a syntax error or a missing table; SQLITE_RANGE a parameter miscount.
_PROGRAMMING = frozenset({sqlite3.SQLITE_ERROR, sqlite3.SQLITE_RANGE, sqlite3.SQLITE_MISUSE})
_UNIQUE = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})


def error_kind(exc: BaseException) -> type[StoreError] | None:
    """The store error an exception of the driver stands for; None for a programming error
    (bad SQL, a value of a type SQLite cannot bind), which is raised as it is."""
    if isinstance(exc, OverflowError):
        return StoreError  # an integer beyond SQLite's 64 bits, refused at binding
    if not isinstance(exc, sqlite3.Error):
        return None
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.IntegrityError):
        if code in _UNIQUE:
            return Conflict
        return NotFound if code == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY else StoreError
    if code is None:
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailable
        return (
            None
            if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError)
            else StoreError
        )
    if code & 0xFF in _UNAVAILABLE:
        return StoreUnavailable
    if code & 0xFF in _PROGRAMMING or isinstance(exc, sqlite3.ProgrammingError):
        return None
    return StoreError


@contextmanager
def _errors(
    what: str,
    message: str = "{what} failed: {exc}",
    catch: type[Exception] | tuple[type[Exception], ...] = (sqlite3.Error, OverflowError),
    **context: Any,
) -> Iterator[None]:
    """Driver errors as the store's kinds (``error_kind``); programming errors as they are."""
    try:
        yield
    except catch as exc:
        kind = error_kind(exc)
        if kind is None:
            raise
        raise kind(message.format(what=what, exc=exc), **context) from exc


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


class SqliteStore(SqlStore):
    """``Store`` on SQLite; ``path`` is a file path or ``":memory:"``."""

    dialect = SQLITE_DIALECT

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()  # re-entered by calls inside unit_of_work
        self._unit_owner: int | None = None  # thread running a unit of work
        opening = "cannot open SQLite database: {exc}"
        with _errors("open", opening, path=path):
            conn = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        try:
            with _errors("open", opening, path=path):
                conn.execute("PRAGMA busy_timeout=30000")
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                # A batch of fixes from thousands of devices touches one leaf page of the
                # key index per device: a 64 MB page cache keeps those pages in memory, and
                # checkpointing every ~40 MB of WAL instead of every 4 MB writes a page
                # that consecutive batches changed once, not once per batch.
                conn.execute("PRAGMA cache_size=-65536")
                conn.execute("PRAGMA wal_autocheckpoint=10000")
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- plumbing ---------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the store is closed", path=self.path)
        return self._conn

    def _session(self, mode: Mode, what: str, **context: Any) -> AbstractContextManager[Session]:
        # The sqlite3 connection takes named parameters as they are: it is the session.
        return self._read(what, **context) if mode == "read" else self._write(what, **context)

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        with self._lock:
            if self._unit_owner == threading.get_ident():
                with self._write("nested unit of work"):  # a savepoint of the outer unit
                    yield
                return
            conn = self._connection()
            try:
                with _errors("unit of work", catch=sqlite3.Error):
                    conn.execute("BEGIN IMMEDIATE")
                self._unit_owner = threading.get_ident()
                yield
                with _errors("unit of work", catch=sqlite3.Error):
                    conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                self._unit_owner = None

    @contextmanager
    def _write(self, what: str, **context: Any) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock (a savepoint inside a unit of work)."""
        with self._lock:
            conn = self._connection()
            nested = self._unit_owner == threading.get_ident()
            # IMMEDIATE takes the file's write lock now, not at the first write, so two
            # processes cannot both read-then-write and deadlock on the upgrade.
            begin, end = ("SAVEPOINT call", "RELEASE call") if nested else _TRANSACTION
            try:
                with _errors(what, **context):
                    conn.execute(begin)
                    yield conn
                    conn.execute(end)
            except BaseException:
                if not nested:
                    self._rollback(conn)
                elif conn.in_transaction:
                    conn.execute("ROLLBACK TO call")
                    conn.execute("RELEASE call")
                raise

    @contextmanager
    def _read(self, what: str, **context: Any) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            with _errors(what, **context):
                yield conn

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

    # -- telemetry writes -------------------------------------------------------------------
    def insert_fixes(self, fixes: Sequence[Fix]) -> npt.NDArray[np.bool_]:
        return self._insert_telemetry("insert_fixes", _INSERT_FIX, R.fix_row, fixes)

    def insert_lock_events(self, events: Sequence[LockEvent]) -> npt.NDArray[np.bool_]:
        return self._insert_telemetry(
            "insert_lock_events", _INSERT_LOCK_EVENT, R.lock_event_row, events
        )

    def _insert_telemetry(
        self,
        what: str,
        sql: str,
        to_row: Callable[[_Item], tuple[Any, ...]],
        items: Sequence[_Item],
    ) -> npt.NDArray[np.bool_]:
        """Insert the batch's distinct rows; True in the mask for each row that was new.

        The usual batch holds no message stored before, so it goes in with one
        ``executemany``; only when its change count says some rows were already there is it
        rolled back to the savepoint and redone row by row to learn which.
        """
        if not items:
            return np.zeros(0, dtype=np.bool_)
        first = R.first_occurrences(R.item_keys(items), len(items))
        rows = _telemetry_rows(to_row, items, first)
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


def _telemetry_rows(
    convert: Callable[[_Item], tuple[Any, ...]],
    items: Sequence[_Item],
    first: npt.NDArray[np.bool_],
) -> list[tuple[Any, ...]]:
    try:
        if first.all():
            return [convert(item) for item in items]
        return [convert(items[int(i)]) for i in np.flatnonzero(first)]
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"telemetry row cannot be stored: {exc}", rows=len(items)) from exc
