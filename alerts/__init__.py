"""Alarms with deadlines, the live feed and signed webhooks (contract §4–§6).

``AlarmService`` turns engine events into stored alarms, trip events, live events and
outbox rows; ``WebhookSender`` delivers the outbox; ``LiveHub`` feeds ``GET /v1/live``.
The first two count through the ``AlertMetrics`` the caller passes in (``alerts.metrics``).
"""

from alerts.deadlines import DEFAULT_SLA, Deadline, merge_sla, validate_sla
from alerts.errors import (
    AlarmNotFound,
    AlertError,
    ConflictError,
    TransitionError,
    ValidationError,
)
from alerts.lifecycle import AlarmStatus, Cause, Contact, ExceptionType, Verdict, alarm_id_for
from alerts.live import LiveHub, Subscription
from alerts.metrics import AlertMetrics, CountingAlertMetrics, NullAlertMetrics
from alerts.outbox import WEBHOOK_EVENTS, enqueue_event
from alerts.render import iso, parse_time, render_alarm
from alerts.service import AlarmService
from alerts.signing import HEADER as SIGNATURE_HEADER
from alerts.signing import sign, verify
from alerts.webhooks import WebhookSender, backoff_s

__all__ = [
    "DEFAULT_SLA",
    "SIGNATURE_HEADER",
    "WEBHOOK_EVENTS",
    "AlarmNotFound",
    "AlarmService",
    "AlarmStatus",
    "AlertError",
    "AlertMetrics",
    "Cause",
    "ConflictError",
    "Contact",
    "CountingAlertMetrics",
    "Deadline",
    "ExceptionType",
    "LiveHub",
    "NullAlertMetrics",
    "Subscription",
    "TransitionError",
    "ValidationError",
    "Verdict",
    "WebhookSender",
    "alarm_id_for",
    "backoff_s",
    "enqueue_event",
    "iso",
    "merge_sla",
    "parse_time",
    "render_alarm",
    "sign",
    "validate_sla",
    "verify",
]
