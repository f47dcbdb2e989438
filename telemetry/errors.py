"""Errors of the telemetry package (ingest, parsing, storage), each a kind from ``core.errors``.

TelemetryError                                  root of this package
 ├── InvalidAddress    (InvalidInput)           a broker or database URL that cannot be used
 ├── StoreError                                 the store failed
 │    ├── NotFound          (core NotFound)     no such object
 │    ├── Conflict          (core Conflict)     exists already / changed under us
 │    └── StoreUnavailable  (core Unavailable)  the database cannot be reached now
 └── BrokerUnavailable (Unavailable)            the broker cannot be reached now
"""

from core import errors as kinds


class TelemetryError(kinds.CargowatchError):
    """Ingest or storage failed."""


class InvalidAddress(TelemetryError, kinds.InvalidInput):
    """A broker or database URL (or protocol option) that cannot be used."""


class StoreError(TelemetryError):
    """The store could not complete an operation."""


class NotFound(StoreError, kinds.NotFound):
    """The object does not exist."""


class Conflict(StoreError, kinds.Conflict):
    """The object changed under us (optimistic concurrency) or already exists."""


class StoreUnavailable(StoreError, kinds.Unavailable):
    """The database cannot be reached or refused the connection; retry later."""


class BrokerUnavailable(TelemetryError, kinds.Unavailable):
    """The MQTT broker cannot be reached."""
