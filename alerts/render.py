"""The JSON view of alarms (API responses, webhook bodies, live feed) and its time format.

Documents in the store keep integer epoch milliseconds; everything shown to people or sent
to shippers carries RFC 3339 UTC strings with milliseconds and ``Z``.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime
from typing import Any

from alerts.errors import ValidationError

_ALARM_TIMES = (
    "ts",
    "raised_at",
    "ack_due",
    "resolve_due",
    "acknowledged_at",
    "resolved_at",
    "assigned_at",
)
# Keys of ``details`` that the alerts package itself writes (rule details are left as given).
_DETAIL_TIMES = ("episode_ended_at",)


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ``2026-11-22T08:00:05.123Z``; None stays None."""
    if ms is None:
        return None
    secs, rem = divmod(int(ms), 1000)
    return f"{_iso_seconds(secs)}.{rem:03d}Z"


@functools.lru_cache(maxsize=4096)  # per live position; a batch's fixes share their seconds
def _iso_seconds(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def parse_time(value: str | int) -> int:
    """RFC 3339 (with ``Z`` or an offset) or integer epoch milliseconds -> epoch ms.

    Raises ``ValidationError`` (also a ``ValueError``) for anything else, including a time
    without an offset: a desk spread over time zones must never guess one.
    """
    if isinstance(value, bool):
        raise ValidationError("a time must be RFC 3339 or epoch milliseconds", value=value)
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValidationError("a time must be RFC 3339 or epoch milliseconds", value=value)
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        # RFC 3339 allows lower-case "t" and "z"; fromisoformat does not.
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValidationError("not an RFC 3339 time", value=value) from None
    if parsed.tzinfo is None:
        raise ValidationError("an RFC 3339 time needs an offset or Z", value=value)
    return round(parsed.timestamp() * 1000)


_HISTORY_TIMES = ("at", "ts", "due")


def render_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History entries with their times (``at``, and ``ts`` / ``due`` when present) as RFC 3339."""
    out = []
    for entry in history:
        view = dict(entry)
        for key in _HISTORY_TIMES:
            if isinstance(view.get(key), int):
                view[key] = iso(view[key])
        out.append(view)
    return out


def render_alarm(
    doc: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The contract §4 view of a stored alarm document.

    ``history`` is the list from ``Store.alarm_history``; without it the view carries an
    empty ``history`` (list views that do not read it keep the same shape).
    """
    view: dict[str, Any] = {
        "alarm_id": doc["alarm_id"],
        "type": doc["type"],
        "severity": doc["severity"],
        "trip_id": doc.get("trip_id"),
        "device_id": doc.get("device_id"),
        "shipper": doc.get("shipper"),
        "lat": doc.get("lat"),
        "lon": doc.get("lon"),
        "details": _render_details(doc.get("details") or {}),
        "status": doc["status"],
        "escalation_level": doc.get("escalation_level", 0),
        "ack_escalated": bool(doc.get("ack_escalated", False)),
        "resolve_escalated": bool(doc.get("resolve_escalated", False)),
        "acknowledged_by": doc.get("acknowledged_by"),
        "resolved_by": doc.get("resolved_by"),
        "resolution": _render_resolution(doc.get("resolution")),
        "kind": "exception" if doc.get("kind") == "exception" else "alarm",
        "assigned_to": doc.get("assigned_to"),
        "feedback": _render_feedback(doc.get("feedback")),
        "history": render_history(history or []),
    }
    for key in _ALARM_TIMES:
        view[key] = iso(doc.get(key))
    if view["kind"] == "exception":
        view["exception_id"] = doc["alarm_id"]
        for key in ("description", "stop_id", "reported_by"):
            view[key] = doc.get(key)
    return view


def _render_feedback(feedback: dict[str, Any] | None) -> dict[str, Any] | None:
    if not feedback:
        return None
    return {
        "verdict": feedback.get("verdict"),
        "comment": feedback.get("comment"),
        "by": feedback.get("by"),
        "at": iso(feedback.get("at")),
    }


def _render_details(details: dict[str, Any]) -> dict[str, Any]:
    if not any(key in details for key in _DETAIL_TIMES):
        return details
    out = dict(details)
    for key in _DETAIL_TIMES:
        if isinstance(out.get(key), int):
            out[key] = iso(out[key])
    return out


def _render_resolution(resolution: dict[str, Any] | None) -> dict[str, Any] | None:
    if not resolution:
        return None
    return {
        "cause": resolution.get("cause"),
        "action": resolution.get("action"),
        "feedback": resolution.get("feedback"),
    }
