"""Open a store from a database URL and bring its schema up to date.

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``
  (three slashes, then the path as written: the SQLAlchemy convention)
- ``postgresql://user@host:port/dbname`` or ``postgres://...`` (TimescaleDB), any libpq URL
"""

from __future__ import annotations

import logging

from telemetry.errors import InvalidAddress
from telemetry.store.base import Store

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_FORMS = "sqlite:///PATH, sqlite:///:memory:, postgresql://... or postgres://..."


def open_store(url: str) -> Store:
    """The store behind ``url``, migrated.

    ``InvalidAddress`` for a URL of no usable form, ``StoreUnavailable`` when the database
    cannot be opened or reached."""
    store = _connect(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _connect(url: str) -> Store:
    if not isinstance(url, str) or not url.strip():
        raise InvalidAddress(f"no database URL given (expected {_FORMS})")
    url = url.strip()
    if url.startswith(SQLITE_PREFIX):
        from telemetry.store.sqlite import SqliteStore

        path = url[len(SQLITE_PREFIX) :]
        if not path or "?" in path or "#" in path:
            raise InvalidAddress(
                "a SQLite URL needs a plain file path after 'sqlite:///' "
                "(sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:)",
                url=url,
            )
        log.info("opening SQLite store %s", path)
        return SqliteStore(path)
    if url.startswith(POSTGRES_SCHEMES):
        from telemetry.store.postgres import PostgresStore, redact

        log.info("opening PostgreSQL store %s", redact(url))
        return PostgresStore(url)
    if url.startswith("sqlite:"):
        raise InvalidAddress(
            "a SQLite URL has three slashes before the path: sqlite:///PATH", url=url
        )
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise InvalidAddress(f"unsupported database URL scheme {scheme!r} (expected {_FORMS})")
