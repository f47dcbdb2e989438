"""The one exception root of cargowatch.

CargowatchError
 ├── telemetry.errors.TelemetryError      (ingest, parsing, storage)
 │    └── StoreError
 ├── geofence.errors.GeometryError        (bad geometry, projection)
 ├── rules.errors.RulesError              (bad trip plans, rule parameters)
 ├── alerts.errors.AlertError             (invalid alarm transitions, webhooks)
 │    ├── TransitionError
 │    └── ConflictError
 └── api errors are HTTP responses, never exceptions leaking to clients.

Every error carries a message and keyword context (``device_id=``, ``alarm_id=``, ...).
"""

from __future__ import annotations

from typing import Any


class CargowatchError(Exception):
    """Root of every error raised by cargowatch code."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        ctx = ", ".join(f"{k}={v!r}" for k, v in self.context.items())
        return f"{self.message} ({ctx})"


class InvalidInput(CargowatchError):
    """A request or document is invalid (the API answers 422)."""


class NotFoundError(CargowatchError):
    """The object does not exist (the API answers 404)."""


class StateConflict(CargowatchError):
    """The object is not in a state that allows this (the API answers 409)."""
