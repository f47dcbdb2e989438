"""The alarm document and its life cycle: ``open`` -> ``acknowledged`` -> ``resolved``.

Pure functions: each takes the stored document and returns the next document (``version``
bumped) plus the history entries to append. The service does the storing, so the rules of
the life cycle can be tested without a store and read in one place.

Resolving an ``open`` alarm is allowed: a 24-hour desk that resolves straight away has
implicitly acknowledged it, and the history records both transitions.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from enum import StrEnum
from typing import Any

from alerts.deadlines import Deadline
from alerts.errors import TransitionError, ValidationError
from rules.events import AlarmSignal, EpisodeEnded

Doc = dict[str, Any]

ENGINE = "engine"
MAX_ACTOR_LEN = 128
MAX_TEXT_LEN = 4000


class AlarmStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Cause(StrEnum):
    """Why an alarm happened, as recorded by the desk on resolve."""

    TRAFFIC_DETOUR = "traffic_detour"
    REST_STOP = "rest_stop"
    BREAKDOWN = "breakdown"
    POLICE_CHECK = "police_check"
    CUSTOMER_INSTRUCTION = "customer_instruction"
    THEFT_SUSPECTED = "theft_suspected"
    DEVICE_FAULT = "device_fault"
    FALSE_ALARM = "false_alarm"
    OTHER = "other"


def alarm_id_for(trip_id: str, alarm_type: str, episode: str) -> str:
    """Deterministic alarm id of an episode: a re-emitted episode maps to the same alarm."""
    key = f"{trip_id}\x1f{alarm_type}\x1f{episode}".encode()
    return "alm_" + hashlib.sha256(key).hexdigest()[:20]


def new_alarm(signal: AlarmSignal, *, raised_at: int, deadline: Deadline, details: Doc) -> Doc:
    """The stored document of a freshly raised alarm (``details`` already JSON-safe)."""
    ack_due, resolve_due = deadline.due(raised_at)
    return {
        "alarm_id": alarm_id_for(signal.trip_id, signal.type.value, signal.episode),
        "type": signal.type.value,
        "severity": signal.severity.value,
        "trip_id": signal.trip_id,
        "device_id": signal.device_id,
        "shipper": signal.shipper,
        "episode": signal.episode,
        "ts": int(signal.ts),
        "raised_at": raised_at,
        "lat": _coordinate(signal.lat),
        "lon": _coordinate(signal.lon),
        "details": details,
        "status": AlarmStatus.OPEN.value,
        "ack_due": ack_due,
        "resolve_due": resolve_due,
        "escalation_level": 0,
        "ack_escalated": False,
        "resolve_escalated": False,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "resolution": None,
        "version": 1,
    }


class ExceptionType(StrEnum):
    """What people report: the ledger's other half (contract v2 §5)."""

    TIME = "time"
    DAMAGE = "damage"
    QUANTITY = "quantity"
    INFORMATION = "information"
    OTHER = "other"


ALARM = "alarm"
EXCEPTION = "exception"
SEVERITIES = ("critical", "major", "minor")


def kind_of(doc: Doc) -> str:
    """``alarm`` (raised by the engine) or ``exception`` (reported by people)."""
    return EXCEPTION if doc.get("kind") == EXCEPTION else ALARM


def new_exception(
    trip: Doc,
    *,
    type: str,
    description: str,
    stop_id: str | None,
    severity: str,
    by: str,
    key_id: str | None,
    now: int,
    deadline: Deadline,
) -> tuple[Doc, Doc]:
    """The stored document of a reported exception and its first history entry: an alarm
    document of ``kind`` ``exception``, so deadlines, escalation, handling and history are
    the alarms' own."""
    try:
        type = ExceptionType(type).value
    except ValueError:
        raise ValidationError(
            "unknown exception type", type=type, allowed=[t.value for t in ExceptionType]
        ) from None
    if severity not in SEVERITIES:
        raise ValidationError("unknown severity", severity=severity, allowed=list(SEVERITIES))
    if not isinstance(description, str) or not description.strip():
        raise ValidationError("'description' must be a non-empty string")
    check_text("description", description)
    check_actor(by)
    ack_due, resolve_due = deadline.due(now)
    exception_id = "exc_" + secrets.token_hex(10)
    doc: Doc = {
        "alarm_id": exception_id,
        "kind": EXCEPTION,
        "type": type,
        "severity": severity,
        "trip_id": trip["trip_id"],
        "device_id": None,
        "shipper": trip.get("shipper"),
        "stop_id": stop_id,
        "description": description,
        "reported_by": by,
        "reported_key_id": key_id,
        "ts": now,
        "raised_at": now,
        "lat": None,
        "lon": None,
        "details": {},
        "status": AlarmStatus.OPEN.value,
        "ack_due": ack_due,
        "resolve_due": resolve_due,
        "escalation_level": 0,
        "ack_escalated": False,
        "resolve_escalated": False,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "resolution": None,
        "version": 1,
    }
    entry = {
        "at": now,
        "by": by,
        "key_id": key_id,
        "action": "raised",
        "from": None,
        "to": AlarmStatus.OPEN.value,
        "note": description,
    }
    return doc, entry


def raised_entry(doc: Doc) -> Doc:
    return {
        "at": doc["raised_at"],
        "by": ENGINE,
        "key_id": None,
        "action": "raised",
        "from": None,
        "to": AlarmStatus.OPEN.value,
        "note": None,
    }


def acknowledge(
    doc: Doc, *, by: str, note: str | None, now: int, key_id: str | None = None
) -> tuple[Doc, list[Doc]]:
    """Acknowledge an open alarm; ``TransitionError`` from any other status."""
    check_actor(by)
    note = check_text("note", note)
    if doc["status"] != AlarmStatus.OPEN:
        raise TransitionError(
            f"cannot acknowledge an alarm that is {doc['status']}",
            alarm_id=doc["alarm_id"],
            status=doc["status"],
        )
    new = _bumped(doc, status=AlarmStatus.OPEN.value)
    _apply_ack(new, by=by, now=now)
    entry = _entry(now, by, "acknowledged", AlarmStatus.OPEN, AlarmStatus.ACKNOWLEDGED, note)
    return new, [{**entry, "key_id": key_id}]


def resolve(
    doc: Doc,
    *,
    by: str,
    cause: str,
    action: str | None,
    feedback: str | None,
    now: int,
    key_id: str | None = None,
) -> tuple[Doc, list[Doc]]:
    """Resolve an open or acknowledged alarm, recording the handling (cause/action/feedback)."""
    check_actor(by)
    resolution = {
        "cause": check_cause(cause),
        "action": check_text("action", action),
        "feedback": check_text("feedback", feedback),
    }
    if doc["status"] == AlarmStatus.RESOLVED:
        raise TransitionError(
            "the alarm is already resolved", alarm_id=doc["alarm_id"], status=doc["status"]
        )
    new = _bumped(doc, status=doc["status"])
    entries: list[Doc] = []
    if doc["status"] == AlarmStatus.OPEN:
        _apply_ack(new, by=by, now=now)
        entries.append(
            _entry(
                now,
                by,
                "acknowledged",
                AlarmStatus.OPEN,
                AlarmStatus.ACKNOWLEDGED,
                "implied by resolve",
            )
        )
    new["status"] = AlarmStatus.RESOLVED.value
    new["resolved_at"] = now
    new["resolved_by"] = by
    new["resolution"] = resolution
    entry = _entry(now, by, "resolved", AlarmStatus.ACKNOWLEDGED, AlarmStatus.RESOLVED, None)
    entry["resolution"] = resolution
    entries.append(entry)
    return new, [{**e, "key_id": key_id} for e in entries]


def assign(
    doc: Doc, *, to: str | None, by: str, now: int, key_id: str | None = None
) -> tuple[Doc, list[Doc]]:
    """Say whose alarm it is (``to`` None: nobody's); the status does not change. The
    entry's ``from``/``to`` are the previous and the new assignee. A resolved alarm is
    nobody's work any more (``TransitionError``)."""
    check_actor(by)
    if to is not None:
        check_actor(to)
    if doc["status"] == AlarmStatus.RESOLVED:
        raise TransitionError(
            "a resolved alarm cannot be assigned", alarm_id=doc["alarm_id"], status=doc["status"]
        )
    new = _bumped(doc, status=doc["status"])
    new["assigned_to"] = to
    new["assigned_at"] = now
    entry = {
        "at": now,
        "by": by,
        "key_id": key_id,
        "action": "assigned",
        "from": doc.get("assigned_to"),
        "to": to,
        "assigned_to": to,
        "status": doc["status"],
        "note": None,
    }
    return new, [entry]


class Contact(StrEnum):
    """Whom the desk spoke to (the call log)."""

    CARRIER = "carrier"
    DRIVER = "driver"
    SHIPPER = "shipper"
    CONSIGNEE = "consignee"
    POLICE = "police"
    OTHER = "other"


def note_entry(
    doc: Doc,
    *,
    text: str,
    contact: str | None,
    outcome: str | None,
    by: str,
    now: int,
    key_id: str | None = None,
) -> Doc:
    """A call-log entry (history only: neither the document nor its status changes; allowed
    in every status, a resolved alarm's follow-up calls included)."""
    check_actor(by)
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("'text' must be a non-empty string")
    check_text("text", text)
    if contact is not None:
        try:
            contact = Contact(contact).value
        except ValueError:
            raise ValidationError(
                "unknown contact", contact=contact, allowed=[c.value for c in Contact]
            ) from None
    return {
        "at": now,
        "by": by,
        "key_id": key_id,
        "action": "note",
        "from": doc["status"],
        "to": doc["status"],
        "note": text,
        "text": text,
        "contact": contact,
        "outcome": check_text("outcome", outcome),
    }


class Verdict(StrEnum):
    """The shipper's word on how an alarm was handled."""

    ACCEPTED = "accepted"
    DISPUTED = "disputed"


def give_feedback(
    doc: Doc,
    *,
    verdict: str,
    comment: str | None,
    by: str,
    now: int,
    key_id: str | None = None,
) -> tuple[Doc, list[Doc]]:
    """The shipper's verdict on a resolved alarm (``TransitionError`` before it is
    resolved). Given again, the latest stands on the alarm; the history keeps each."""
    check_actor(by)
    try:
        verdict = Verdict(verdict).value
    except ValueError:
        raise ValidationError(
            "unknown verdict", verdict=verdict, allowed=[v.value for v in Verdict]
        ) from None
    comment = check_text("comment", comment)
    if doc["status"] != AlarmStatus.RESOLVED:
        raise TransitionError(
            "feedback is given once the alarm is resolved",
            alarm_id=doc["alarm_id"],
            status=doc["status"],
        )
    new = _bumped(doc, status=doc["status"])
    new["feedback"] = {"verdict": verdict, "comment": comment, "by": by, "at": now}
    entry = {
        "at": now,
        "by": by,
        "key_id": key_id,
        "action": "feedback",
        "from": doc["status"],
        "to": doc["status"],
        "note": comment,
        "verdict": verdict,
        "comment": comment,
    }
    return new, [entry]


def end_episode(doc: Doc, event: EpisodeEnded, *, details: Doc, now: int) -> tuple[Doc, Doc]:
    """Record that the condition behind the alarm cleared; the status does not change (the
    desk still resolves it)."""
    new = _bumped(doc, status=doc["status"])
    new_details = dict(doc.get("details") or {})
    new_details["episode_ended_at"] = int(event.ts)
    if details:
        new_details["episode_end"] = details
    new["details"] = new_details
    entry = {
        **_entry(now, ENGINE, "episode_ended", doc["status"], doc["status"], None),
        "key_id": None,
    }
    entry["ts"] = int(event.ts)
    return new, entry


def check_actor(by: Any) -> str:
    """Who acts (desk operator id): a non-empty string of at most 128 characters."""
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_ACTOR_LEN:
        raise ValidationError(f"'by' must be a non-empty string of at most {MAX_ACTOR_LEN} chars")
    return by


def check_cause(cause: Any) -> str:
    try:
        return Cause(cause).value
    except ValueError:
        raise ValidationError(
            "unknown cause", cause=cause, allowed=[c.value for c in Cause]
        ) from None


def check_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_LEN:
        raise ValidationError(f"{name!r} must be a string of at most {MAX_TEXT_LEN} chars")
    return value


def _coordinate(value: float | None) -> float | None:
    # A NaN from the engine means "unknown" and must not reach JSON.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _bumped(doc: Doc, *, status: str) -> Doc:
    new = dict(doc)
    new["status"] = status
    new["version"] = int(doc["version"]) + 1
    return new


def _apply_ack(doc: Doc, *, by: str, now: int) -> None:
    doc["status"] = AlarmStatus.ACKNOWLEDGED.value
    doc["acknowledged_at"] = now
    doc["acknowledged_by"] = by


def _entry(at: int, by: str, action: str, frm: str, to: str, note: str | None) -> Doc:
    return {"at": at, "by": by, "action": action, "from": str(frm), "to": str(to), "note": note}
