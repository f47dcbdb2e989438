"""Storage behind one interface: SQLite (embedded default) and TimescaleDB (production)."""

from telemetry.store.base import Doc, Store
from telemetry.store.factory import open_store

__all__ = ["Doc", "Store", "open_store"]
