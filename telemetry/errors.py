"""Errors of the telemetry package (ingest, parsing, storage)."""

from cargowatch.errors import CargowatchError


class TelemetryError(CargowatchError):
    """Ingest or storage failed."""


class StoreError(TelemetryError):
    """The store could not complete an operation."""


class NotFound(StoreError):
    """The object does not exist."""


class Conflict(StoreError):
    """The object changed under us (optimistic concurrency) or already exists."""
