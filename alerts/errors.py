"""Errors of the alerts package.

AlertError                   (root of this package; each subclass is a kind of core.errors)
 ├── AlarmNotFound           the alarm does not exist                      (API: 404)
 ├── TransitionError         not allowed from the alarm's current status   (API: 409)
 ├── ConflictError           the alarm changed under us, even after a retry (API: 409)
 └── ValidationError         a bad cause, actor, time or SLA               (API: 422)

``ValidationError`` is also a ``ValueError`` so pydantic validators can reuse the checks.
Every error carries keyword context, e.g. ``alarm_id=``.
"""

from __future__ import annotations

from core import errors as kinds


class AlertError(kinds.CargowatchError):
    """Alarm handling or webhook delivery failed."""


class AlarmNotFound(AlertError, kinds.NotFound):
    """No alarm with this id."""


class TransitionError(AlertError, kinds.Conflict):
    """The requested transition is not allowed from the alarm's current status."""


class ConflictError(AlertError, kinds.Conflict):
    """The alarm was changed concurrently and the change could not be applied."""


class ValidationError(AlertError, kinds.InvalidInput, ValueError):
    """A value given to the alerts package is not acceptable."""
