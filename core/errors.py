"""The one exception tree of cargowatch, grouped by kind.

CargowatchError                     root; a message and keyword context (``device_id=`` …)
 ├── InvalidInput                   the caller's input is unacceptable          (API: 422)
 │    ├── rules.TripPlanError, rules.RuleValueError
 │    ├── geofence.GeometryError
 │    ├── alerts.ValidationError    (also a ``ValueError``, for pydantic validators)
 │    └── telemetry.InvalidAddress  (a broker or database URL that cannot be used)
 ├── NotFound                       no such object                              (API: 404)
 │    ├── telemetry.errors.NotFound
 │    └── alerts.AlarmNotFound
 ├── Conflict                       exists already / wrong state / changed     (API: 409)
 │    ├── telemetry.errors.Conflict
 │    └── alerts.TransitionError, alerts.ConflictError
 ├── Unavailable                    a service we depend on is down; retry later (API: 503)
 │    ├── telemetry.errors.StoreUnavailable
 │    └── telemetry.errors.BrokerUnavailable
 └── simulators.SimulatorError      the simulation could not be built or published

Packages subclass these kinds; callers (the API, the CLI) catch by kind. Anything that is not
a ``CargowatchError`` is a programming error: the API answers 500 with an error id that is
also logged, never 503.
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
    """A request, document or setting is invalid (the API answers 422)."""


class NotFound(CargowatchError):
    """The object does not exist (the API answers 404)."""


class Conflict(CargowatchError):
    """The object exists already, is in a state that forbids this, or changed under us
    (the API answers 409)."""


class Unavailable(CargowatchError):
    """A service we depend on (database, broker) cannot be reached now (the API answers 503)."""


# Older names, kept so call sites read naturally.
NotFoundError = NotFound
StateConflict = Conflict

__all__ = [
    "CargowatchError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "NotFoundError",
    "StateConflict",
    "Unavailable",
]
